// What Gatehouse writes to its log, and what it keeps out of it.
import type { FastifyServerOptions } from 'fastify'
import type { Config } from './config.ts'
import { withoutQueryParameters } from './errors.ts'
import { boundedIp, maskPath, maskTokenLike, queryStart } from './request-client.ts'

/**
 * Secrets never reach the logs (ASVS 7.1.1): requests are logged without headers, secret-looking
 * fields are censored wherever they sit in a log object, query-string values are masked, and
 * failed queries lose their parameters.
 */
const SECRET_FIELDS = new Set([
  'password', 'currentpassword', 'newpassword', 'passwordhash', 'accesstoken', 'refreshtoken',
  'token', 'tokenhash', 'secret', 'clientsecret', 'authorization', 'cookie'
])
/** A field's name as SECRET_FIELDS spells it: `refresh_token`, `refreshToken` and `Refresh-Token` alike. */
const isSecretField = (key: string) => SECRET_FIELDS.has(key.toLowerCase().replace(/[_-]/g, ''))
const CENSORED = '[redacted]'
const MAX_CENSOR_DEPTH = 8

/**
 * A log object with every secret field censored, at any depth of its plain objects and arrays
 * (requests, replies and errors have serializers of their own). Copies only what it changes, so
 * the caller's objects stay as they were. It runs when a line is written, not for each request:
 * pino's own redaction with `*.password` paths ran over every per-request logger's bindings.
 */
function censorSecrets (value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== 'object') return value
  // Deeper than any log object we write: censored whole rather than written unread.
  if (depth > MAX_CENSOR_DEPTH) return CENSORED
  if (Array.isArray(value)) {
    const items = value.map((item: unknown) => censorSecrets(item, depth + 1))
    return items.some((item, index) => item !== value[index]) ? items : value
  }
  const prototype = Object.getPrototypeOf(value)
  if (prototype !== Object.prototype && prototype !== null) return value
  let copy: Record<string, unknown> | undefined
  for (const [key, item] of Object.entries(value)) {
    const censored = isSecretField(key) ? CENSORED : censorSecrets(item, depth + 1)
    if (censored !== item) (copy ??= { ...value })[key] = censored
  }
  return copy ?? value
}
/**
 * The URL as logged: the path as 404s show it (maskPath), and every query value masked, not only
 * those named like a secret: a client that puts its token under any name (`?authorization=`,
 * `?jwt=`) or under none (`?eyJ…`) must not get it logged, and the email filter is personal data.
 * Names are kept; a part without `=` is all value.
 */
const QUERY_PART = /([?#&])([^=&]*=)?[^&]*/g
function maskUrl (url: string): string {
  const start = queryStart(url)
  return start === -1
    ? maskPath(url)
    : maskPath(url.slice(0, start)) + maskTokenLike(url.slice(start)).replace(QUERY_PART,
      (part: string, separator: string, name = '') => part.length > 1 ? `${separator}${name}${CENSORED}` : part)
}

/**
 * An error for the log, with the error that caused it: Drizzle's "Failed query" alone cannot tell
 * an outage (ECONNRESET, a timeout) from a constraint or a bug; its cause can.
 */
export type LoggedError = { type: string, message: string, stack: string, code: unknown, cause?: LoggedError }

export function serializeError (error: Error & { code?: unknown }, depth = 0): LoggedError {
  const message = withoutQueryParameters(error.message, `\nparams: ${CENSORED}`)
  // V8's stack starts with "name: message"; the frames after it are kept. A stack of another shape
  // (its message changed after it was formed) is cut like a message, frames and all.
  const stack = error.stack ?? ''
  const header = `${error.name}: ${error.message}`
  const frames = stack.slice(header.length)
  return {
    type: error.name,
    message,
    stack: stack.startsWith(header) && !frames.includes('\nparams:')
      ? `${error.name}: ${message}${frames}`
      : withoutQueryParameters(stack, `\nparams: ${CENSORED}`),
    code: error.code,
    ...(error.cause instanceof Error && depth < 3 ? { cause: serializeError(error.cause, depth + 1) } : {})
  }
}

/** Fastify's logger: JSON lines at LOG_LEVEL (pretty on a terminal), secrets kept out (see above). */
export function loggerOptions (config: Config, logStream?: NodeJS.WritableStream): FastifyServerOptions['logger'] {
  if (config.logLevel === 'silent') return false
  return {
    level: config.logLevel,
    formatters: { log: (object: Record<string, unknown>) => censorSecrets(object) as Record<string, unknown> },
    serializers: {
      err: (error: Error) => serializeError(error),
      req: (request: { method: string, url: string, host?: string, ip?: string }) => ({
        method: request.method,
        url: maskUrl(request.url),
        host: request.host,
        remoteAddress: request.ip === undefined ? undefined : boundedIp(request.ip)
      })
    },
    ...(logStream ? { stream: logStream } : process.stdout.isTTY ? { transport: { target: 'pino-pretty' } } : {})
  }
}
