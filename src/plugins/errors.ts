import { HttpError } from '@fastify/sensible'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import FindMyWay, { type HTTPMethod } from 'find-my-way'
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { bearerChallenge } from './auth.ts'
import { API_RESPONSE_HEADERS, NO_STORE_HEADERS } from './security.ts'
import { hasEmptyParameter } from './validation.ts'
import { maskPath, pathOf } from '../request-client.ts'
import type { ErrorCode } from '../errors.ts'

/** The contract's code for errors Fastify raises itself; anything else falls back by status. */
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_JSON_BODY: 'invalid_body',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'invalid_body'
}
/** Codes of ours for statuses raised without one (a body that stopped arriving: 400). */
const STATUS_FALLBACK_CODES: Record<number, ErrorCode> = { 400: 'invalid_request', 429: 'rate_limited' }
/**
 * An error without a contract code gets its status's name: @fastify/static's 412
 * `precondition_failed` and 416 `range_not_satisfiable` (listed in ERROR_CODES), a fork's 409
 * `conflict` or 422 `unprocessable_entity` (its to list).
 */
const fallbackCode = (statusCode: number) => STATUS_FALLBACK_CODES[statusCode] ??
  (STATUS_CODES[statusCode] ?? 'error').toLowerCase().replace(/[^a-z]+/g, '_')
/** Contract codes are snake_case; library codes (FST_..., SQLITE_...) are not. */
const CONTRACT_CODE = /^[a-z][a-z0-9_]*$/

interface ErrorBody {
  statusCode: number
  error: string
  message: string
  code: string
}

function errorBody (statusCode: number, code: string, message: string): ErrorBody {
  return { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, code }
}

/**
 * "body/email must match format "email"", with the offending property named for extra keys too.
 * An unknown property is named before anything else: `{"refreshToken": …}` is a misspelling of
 * the property that is then missing, and naming the missing one would not say so.
 */
export function validationMessage (error: FastifyError): string {
  const shown = error.validation?.find((found) => found.keyword === 'additionalProperties') ?? error.validation?.[0]
  if (!shown) return error.message
  const where = `${error.validationContext ?? 'request'}${shown.instancePath}`
  if (shown.keyword === 'additionalProperties') {
    return `${where}/${String(shown.params.additionalProperty)} is not allowed`
  }
  if (shown.keyword === 'required') {
    return `${where}/${String(shown.params.missingProperty)} is required`
  }
  // The schema's own list (roles, a sort order): telling it costs nothing and saves a trip to the docs.
  if (shown.keyword === 'enum' && Array.isArray(shown.params.allowedValues)) {
    return `${where} must be one of ${shown.params.allowedValues.map((value) => JSON.stringify(value)).join(', ')}`
  }
  return `${where} ${shown.message ?? 'is invalid'}`
}

/** Ours (errors.ts apiError): status, code and message were written for the client. */
const isApiError = (error: FastifyError): error is FastifyError & HttpError =>
  error instanceof HttpError && CONTRACT_CODE.test(error.code ?? '')

/** Maps any thrown error to the contract's shape; 5xx answers never carry internals. */
function toErrorBody (error: FastifyError): ErrorBody {
  if (error.validation) return errorBody(400, 'validation_error', validationMessage(error))
  // @fastify/static's refusal of a path that leads out of its folder (`/docs/static/%2e%2e/…`):
  // no such file is served there, as for any other it lacks; a 403 would read as a lack of rights.
  if (error.code === 'FST_STATIC_FORBIDDEN_PATH') return errorBody(404, 'not_found', 'No such file.')
  if (isApiError(error)) return errorBody(error.statusCode, error.code, error.message)
  const statusCode = error.statusCode && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500
  if (statusCode >= 500) return errorBody(500, 'internal_error', 'Something went wrong on our side.')
  const code = FASTIFY_CODES[error.code] ?? fallbackCode(statusCode)
  return errorBody(statusCode, code, error.message)
}

/** What a request that met an unavailable database answers, besides its shape: retry in 5 s. */
export const DATABASE_UNAVAILABLE = { message: 'The database is unavailable; try again shortly.', retryAfter: '5' }

/**
 * The database could not serve this request (an error of its driver, never one of ours, nor one
 * Fastify marked as the client's: a body that stopped arriving carries the socket's ECONNRESET
 * and statusCode 400).
 */
export const isDatabaseUnavailable = (app: FastifyInstance, error: FastifyError) =>
  !(error instanceof HttpError) && !error.validation && !(error.statusCode !== undefined && error.statusCode < 500) &&
  (app.database?.dialect.isUnavailable(error) ?? false)

/** Node's HTTP parser refused the request before Fastify saw it: which answer that gets. */
function clientErrorAnswer (error: Error & { code?: string }): ErrorBody {
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return errorBody(408, 'request_timeout', 'The request took too long to arrive.')
  if (error.code === 'HPE_HEADER_OVERFLOW') return errorBody(431, 'headers_too_large', 'The request headers are too large.')
  return errorBody(400, 'invalid_request', 'The request is not valid HTTP (a malformed header or Content-Length, say).')
}

/**
 * Fastify's clientErrorHandler: the same shape and security headers as every other answer, where
 * Fastify's default writes `{"message":"Client Error"}` with neither, and no-store, as the request
 * may have been one of /auth's. The connection then closes, as after any request the parser could
 * not read.
 */
export function clientErrorHandler (this: FastifyInstance, error: Error & { code?: string }, socket: Socket): void {
  // A reset connection has nobody left to answer.
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  // Not when this request was answered already (refused before its body arrived, which then
  // failed or timed out): a second answer would be read as the next request's. Node's own
  // handler asks the same of the response on the socket.
  const answered = (socket as Socket & { _httpMessage?: ServerResponse })._httpMessage?.headersSent === true
  if (socket.writable && !answered) {
    const body = clientErrorAnswer(error)
    const { payload, headers } = answerOutsideFastify(body)
    const head = Object.entries({ ...headers, connection: 'close' }).map(([name, value]) => `${name}: ${value}`).join('\r\n')
    socket.write(`HTTP/1.1 ${body.statusCode} ${body.error}\r\n${head}\r\n\r\n${payload}`)
    // The parser's code only: its error also holds the bytes it read, which may hold a token.
    logRefused(this, body, { remoteAddress: socket.remoteAddress, parserError: error.code })
  }
  socket.destroy()
}

/**
 * The one log line of an answer given outside Fastify, which logs no request it never saw: at
 * info, as Fastify logs every completed request. The address is the connection's: TRUST_PROXY's
 * reading of X-Forwarded-For is Fastify's, per request.
 */
function logRefused (app: FastifyInstance, body: ErrorBody, fields: Record<string, unknown>): void {
  app.log.info({ ...fields, res: { statusCode: body.statusCode }, code: body.code }, 'request refused before Fastify')
}

/** An answer given outside Fastify, with what every answer carries. */
function answerOutsideFastify (body: object) {
  const payload = JSON.stringify(body)
  const headers = {
    ...API_RESPONSE_HEADERS,
    ...NO_STORE_HEADERS,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(payload))
  }
  return { payload, headers }
}

/** Whether the router would give this URL to the token endpoint (it decodes the path first). */
function isTokenEndpoint (url: string): boolean {
  try {
    return decodeURIComponent(pathOf(url)) === '/auth/token'
  } catch {
    return false
  }
}

/**
 * The server's `checkExpectation` listener: an Expect other than 100-continue, which Node would
 * answer with a bare 417, gets it in the contract's shape (RFC 9110 §10.1.1). Fastify never sees
 * the request; Node discards its body, and the connection goes on to the next request.
 */
export function expectationFailedHandler (this: FastifyInstance, request: IncomingMessage, response: ServerResponse): void {
  const body = errorBody(417, 'expectation_failed', 'The only expectation served is 100-continue.')
  // The token endpoint's errors have RFC 6749 §5.2's shape, as its route gives them.
  const { payload, headers } = answerOutsideFastify(isTokenEndpoint(request.url ?? '')
    ? { error: 'invalid_request', error_description: body.message }
    : body)
  response.writeHead(417, headers).end(payload)
  logRefused(this, body, { req: { method: request.method, url: request.url, host: request.headers.host, ip: request.socket.remoteAddress } })
}

/**
 * Fastify's frameworkErrors: a URL its router refuses (`/%zz`) before any route or hook runs, so
 * with no-store, as the URL may have been one of /auth's. Fastify logs such a request as incoming
 * but never as completed (it watches no response there), so the completion is logged here.
 */
export function frameworkErrorHandler (_error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const body = errorBody(400, 'invalid_request', 'The URL cannot be decoded.')
  reply.raw.once('finish', () => request.log.info({ res: reply }, 'request completed'))
  reply.code(body.statusCode).headers({ ...API_RESPONSE_HEADERS, ...NO_STORE_HEADERS }).send(body)
}

/**
 * Up to 16 KiB of path, as the request line may hold, is not echoed back whole: its first 200
 * characters say which, with anything token-like masked.
 */
const shownPath = (path: string) => {
  const masked = maskPath(path)
  return masked.length > 200 ? `${masked.slice(0, 200)}…` : masked
}

/**
 * A refusal sent before the request's body was read (an onRequest check, the per-IP limit, a path
 * no route has) closes the connection after it: Node would wait for the rest of the body, and one
 * that never came would end in its 408, written after this answer and read as the next request's.
 */
export function closeIfBodyUnread (request: FastifyRequest, reply: FastifyReply): void {
  // `complete` is false for a request without a body too, until its parse returns: that has nothing to wait for.
  const { complete, headers } = request.raw
  const hasBody = headers['transfer-encoding'] !== undefined || !/^0*$/.test(headers['content-length'] ?? '')
  if (complete === false && hasBody) reply.header('connection', 'close')
}

async function errorsPlugin (app: FastifyInstance) {
  app.setErrorHandler((error: FastifyError & { headers?: Record<string, string> }, request, reply) => {
    closeIfBodyUnread(request, reply)
    const unavailable = isDatabaseUnavailable(app, error)
    const body = unavailable
      ? errorBody(503, 'database_unavailable', DATABASE_UNAVAILABLE.message)
      : toErrorBody(error)
    // A 5xx we answer on purpose (503 from /health) was logged, with its cause, where it was raised.
    if (body.statusCode >= 500 && !isApiError(error)) {
      request.log.error({ err: error }, 'request failed')
    }
    if (unavailable) reply.header('retry-after', DATABASE_UNAVAILABLE.retryAfter)
    if (error.headers) reply.headers(error.headers)
    // RFC 9110 §15.5.2: every 401 carries a challenge; token errors set their own, richer one.
    // RFC 6750 §3.1: a token without the rights gets insufficient_scope, whoever threw the 403 after
    // authenticate set `request.user`; a request without one has no scope to fall short.
    if (!reply.hasHeader('www-authenticate')) {
      if (body.statusCode === 401) reply.header('www-authenticate', bearerChallenge())
      if (body.code === 'forbidden' && request.user) reply.header('www-authenticate', bearerChallenge('insufficient_scope'))
    }
    return reply.code(body.statusCode).send(body)
  })

  // RFC 9110 §15.5.6: a path that another method serves answers 405 with Allow, not 404. Fastify's
  // router answers neither question, so the routes are mirrored into one that can (matching only).
  // No limit on parameters, as in Fastify's own router (app.ts).
  const routes = FindMyWay({ maxParamLength: Number.MAX_SAFE_INTEGER })
  const methods = new Set<HTTPMethod>()
  app.addHook('onRoute', (route) => {
    // @fastify/cors's preflight route matches every path: it would turn every 404 into a 405.
    if (route.url === '*') return
    for (const method of [route.method].flat() as HTTPMethod[]) {
      methods.add(method)
      if (!routes.hasRoute(method, route.url)) routes.on(method, route.url, () => {})
    }
  })

  app.setNotFoundHandler((request, reply) => {
    // No route's hooks ran, /auth's and the guarded routes' no-store among them: the path may be theirs.
    reply.headers(NO_STORE_HEADERS)
    closeIfBodyUnread(request, reply)
    const path = shownPath(pathOf(request.url))
    const allowed = [...methods].filter((method) => {
      const found = routes.find(method, request.url)
      return found !== null && !hasEmptyParameter(found.params)
    })
    // A route of this very method that found nothing (a missing file under /docs/static) is a 404.
    if (allowed.length > 0 && !allowed.includes(request.method as HTTPMethod)) {
      if (request.method === 'OPTIONS' && request.headers['access-control-request-method']) {
        // A CORS preflight from an origin not in CORS_ORIGINS (or with CORS off): answered without
        // Access-Control-Allow-Origin, so the browser reports exactly that instead of a failed status.
        return reply.code(204).send()
      }
      return reply.code(405).header('allow', allowed.join(', '))
        .send(errorBody(405, 'method_not_allowed', `Route ${request.method} ${path} not found; ${path} answers ${allowed.join(', ')}`))
    }
    return reply.code(404).send(errorBody(404, 'not_found', `Route ${request.method} ${path} not found`))
  })
}

export default fp(errorsPlugin, { name: 'errors' })
