import sensible from '@fastify/sensible'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify from 'fastify'
import { randomUUID } from 'node:crypto'
import type { Config } from './config.ts'
import { loggerOptions } from './logging.ts'
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
import errors, { clientErrorHandler, expectationFailedHandler, frameworkErrorHandler } from './plugins/errors.ts'
import { gracefulClose } from './plugins/graceful-close.ts'
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

export interface BuildOptions {
  /** Where JSON log lines go instead of stdout (tests read them). */
  logStream?: NodeJS.WritableStream
}

/** The one way to build Gatehouse: the server entry and every test call it. */
export async function buildApp (config: Config, options: BuildOptions = {}) {
  const closing = gracefulClose()
  const app = Fastify({
    logger: loggerOptions(config, options.logStream),
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
