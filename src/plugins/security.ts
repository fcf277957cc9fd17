import cors from '@fastify/cors'
import helmet from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

/**
 * Security headers on every response (helmet), and CORS for the browser origins in CORS_ORIGINS,
 * none by default. Clients send bearer tokens, never cookies, so credentials stay off.
 */
async function securityPlugin (app: FastifyInstance) {
  await app.register(helmet, {
    contentSecurityPolicy: {
      // Plain-http development servers must keep working; production sits behind TLS anyway.
      directives: { upgradeInsecureRequests: null }
    }
  })

  const allowed = new Set(app.config.corsOrigins)
  await app.register(cors, {
    origin: (origin, callback) => callback(null, origin !== undefined && allowed.has(origin)),
    methods: ['GET', 'POST', 'PATCH', 'DELETE'],
    allowedHeaders: ['Authorization', 'Content-Type'],
    exposedHeaders: ['WWW-Authenticate', 'Retry-After'],
    credentials: false,
    maxAge: 600
  })
}

export default fp(securityPlugin, { name: 'security', dependencies: ['config'] })
