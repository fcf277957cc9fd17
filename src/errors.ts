import { httpErrors, type HttpError } from '@fastify/sensible'

/**
 * An error the client is meant to see: status, the contract's stable `code`, a human message and
 * optional response headers (a `WWW-Authenticate` challenge, `Retry-After`). plugins/errors.ts
 * turns it into the wire shape.
 */
export function apiError (
  statusCode: number,
  code: string,
  message: string,
  headers?: Record<string, string>
): HttpError {
  return httpErrors.createError(statusCode, message, { code, ...(headers ? { headers } : {}) })
}
