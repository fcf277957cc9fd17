import sensible from '@fastify/sensible'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { type FastifyServerOptions } from 'fastify'
import { randomUUID } from 'node:crypto'
import type { Config } from './config.ts'
import auth from './plugins/auth.ts'
import authorization, { accessAudit } from './plugins/authorization.ts'
import bootstrapAdmin from './plugins/bootstrap-admin.ts'
import configPlugin from './plugins/config.ts'
import database from './plugins/database.ts'
import docs from './plugins/docs.ts'
import rateLimits from './plugins/rate-limits.ts'
import security from './plugins/security.ts'
import signInFlows from './plugins/sign-in-flows.ts'
import validation from './plugins/validation.ts'
import { boundedIp, maskPath, maskTokenLike } from './request-client.ts'
import errors, { clientErrorHandler, expectationFailedHandler, frameworkErrorHandler } from './plugins/errors.ts'
import { gracefulClose } from './plugins/graceful-close.ts'
import { withoutQueryParameters } from './errors.ts'
import clothesRepository from './repositories/clothes.ts'
import sessionsRepository from './repositories/sessions.ts'
import usersRepository from './repositories/users.ts'
import videosRepository from './repositories/videos.ts'
import adminUserRoutes from './routes/admin/users.ts'
import authRoutes from './routes/auth.ts'
import clothesRoutes from './routes/clothes.ts'
import healthRoutes from './routes/health.ts'
import meRoutes from './routes/me.ts'
import videoRoutes from './routes/videos.ts'

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
const QUERY_PART = /([?&])([^=&]*=)?[^&]*/g
function maskUrl (url: string): string {
  const start = url.indexOf('?')
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

export interface BuildOptions {
  /** Where JSON log lines go instead of stdout (tests read them). */
  logStream?: NodeJS.WritableStream
}

function loggerOptions (config: Config, { logStream }: BuildOptions): FastifyServerOptions['logger'] {
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

/** The one way to build Gatehouse: the server entry and every test call it. */
export async function buildApp (config: Config, options: BuildOptions = {}) {
  const closing = gracefulClose()
  const app = Fastify({
    logger: loggerOptions(config, options),
    // Unique across instances and restarts (Fastify's own count starts at req-1 in every process),
    // so a security event's reqId names one request of the whole fleet.
    genReqId: () => randomUUID(),
    trustProxy: config.trustProxy,
    // A path parameter of any length reaches its route, so who asks is answered first (401, 403) and
    // an over-long id then fails its schema like any other (400 validation_error), with the route's
    // headers. No route matches a parameter by pattern, and Node caps the URL at 16 KiB anyway.
    routerOptions: { maxParamLength: Number.MAX_SAFE_INTEGER },
    // A request must arrive whole within REQUEST_TIMEOUT, or it gets 408 and its connection closes:
    // Fastify's default sets no limit, and a client sending a body a byte a minute would hold its
    // connection for ever. Node checks its connections every second for it (by default, every 30 s),
    // and swaps the two limits when the one for headers is the longer (its default is 60 s).
    requestTimeout: config.requestTimeout * 1000,
    // Node's check for a Host header answers with an empty body; security.ts answers it instead.
    // The responses know when the server closes (graceful-close.ts).
    http: {
      connectionsCheckingInterval: 1000,
      headersTimeout: Math.min(60_000, config.requestTimeout * 1000),
      requireHostHeader: false,
      ServerResponse: closing.ServerResponse
    },
    // Every request body here is a few fields: 8 KiB is plenty, and more is refused with 413.
    bodyLimit: 8 * 1024,
    // Start-up migrates the database, which may take as long as it needs; connecting is bounded by
    // the driver's own timeout. Fastify's default 10 s would cut a long migration short.
    pluginTimeout: 0,
    // A request arriving on an open connection while the server closes is answered, not refused
    // with a bare 503: its answer tells the client to close the connection (graceful-close.ts).
    return503OnClosing: false,
    // A request Node's HTTP parser refuses, and a URL the router refuses (`/%zz`), are answered
    // before any hook runs: in the contract's shape, with the API's security headers.
    clientErrorHandler,
    frameworkErrors: frameworkErrorHandler
  }).withTypeProvider<TypeBoxTypeProvider>()

  // No route reads plain text: such bodies get 415 instead of reaching a JSON schema.
  app.removeContentTypeParser('text/plain')
  app.server.on('checkExpectation', expectationFailedHandler.bind(app))

  try {
    // First, so that it sees every route, whichever plugin adds it (deny by default).
    await app.register(accessAudit)
    await app.register(configPlugin, config)
    await app.register(sensible)
    await app.register(validation)
    await app.register(errors)
    await app.register(security)
    await app.register(closing.plugin)
    await app.register(database)
    await app.register(usersRepository)
    await app.register(sessionsRepository)
    await app.register(videosRepository)
    await app.register(clothesRepository)
    await app.register(bootstrapAdmin)
    await app.register(rateLimits)
    await app.register(auth)
    await app.register(signInFlows)
    // Before the routes: it documents each as it is added.
    await app.register(docs)
    await app.register(authorization)

    // Each route module is an encapsulated plugin (its hooks stay its own) that names what it
    // uses: one registered without its repository stops the start, naming the repository.
    await app.register(healthRoutes)
    await app.register(authRoutes, { prefix: '/auth' })
    await app.register(meRoutes, { prefix: '/me' })
    await app.register(videoRoutes, { prefix: '/videos' })
    await app.register(clothesRoutes, { prefix: '/clothes' })
    await app.register(adminUserRoutes, { prefix: '/admin' })
  } catch (error) {
    // What had started (the database, a Redis client) is closed, not left open behind the error.
    await app.close().catch(() => {})
    throw error
  }

  if (config.jwt.secretFile) {
    app.log.warn(`JWT_SECRET is not set: signing with the generated secret kept in ${config.jwt.secretFile}. Set JWT_SECRET in production.`)
  }
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
