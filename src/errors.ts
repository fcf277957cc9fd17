import { httpErrors, type HttpError } from '@fastify/sensible'

/**
 * Every `code` an error answer carries, the contract's and the API's own (README "Error codes"):
 * the OpenAPI document lists them, so a generated client gets them as a union, and apiError takes
 * no other.
 */
export const ERROR_CODES = [
  'validation_error', 'invalid_body', 'invalid_request', 'invalid_cursor', 'weak_password',
  'missing_token', 'invalid_token', 'token_expired', 'invalid_credentials', 'invalid_refresh_token',
  'forbidden', 'user_disabled', 'not_found', 'method_not_allowed', 'email_taken', 'last_admin',
  'request_timeout', 'payload_too_large', 'unsupported_media_type', 'expectation_failed',
  'rate_limited', 'headers_too_large', 'internal_error', 'not_implemented', 'database_unavailable',
  // Swagger UI's files (@fastify/static) answer a failed If-Match or an unsatisfiable Range.
  'precondition_failed', 'range_not_satisfiable'
] as const
export type ErrorCode = typeof ERROR_CODES[number]

/**
 * Codes that never reach a client in the common shape: the token endpoint's RFC 6749 errors
 * (routes/token.ts), and the 499 of a client that left (only the request log sees it).
 */
type UnsentCode = 'invalid_grant' | 'unsupported_grant_type' | 'client_closed_request'

/**
 * An error the client is meant to see: status, the contract's stable `code`, a human message and
 * optional response headers (a `WWW-Authenticate` challenge, `Retry-After`). plugins/errors.ts
 * turns it into the wire shape.
 */
export function apiError (
  statusCode: number,
  code: ErrorCode | UnsentCode,
  message: string,
  headers?: Record<string, string>
): HttpError {
  return httpErrors.createError(statusCode, message, { code, ...(headers ? { headers } : {}) })
}

/**
 * A failed query's message (Drizzle's "Failed query: …\nparams: …") lists its parameters: a
 * password hash, a token hash, an email. They run to the end of the message and may hold any
 * text, newlines included (a name), so everything from "\nparams:" on is replaced.
 */
export function withoutQueryParameters (text: string, replacement = ''): string {
  const start = text.indexOf('\nparams:')
  return start === -1 ? text : text.slice(0, start) + replacement
}

/** How Drizzle words a failed statement (its SQL follows); the driver's reason is the cause. */
const DRIZZLE_FAILED_QUERY = /^Failed (query:|to run the query )/

/**
 * Why start-up failed, in one line for the operator: the error's message without query
 * parameters (an AggregateError's, such as a refused connection to each address of a host, joined).
 * A failed query (a migration's) says why the database refused it, not which statement it was.
 */
export function startupProblem (error: unknown): string {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return [...new Set(error.errors.map(startupProblem))].join('; ')
  }
  if (!(error instanceof Error)) return String(error)
  if (DRIZZLE_FAILED_QUERY.test(error.message) && error.cause !== undefined) return startupProblem(error.cause)
  return withoutQueryParameters(error.message)
}
