import type { FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Declares a route open to anyone. Every other route must start its preHandler with authenticate. */
    access?: 'public'
  }
}

/**
 * Deny by default (OWASP ASVS 4.1.3): a route that declares no access policy, or both, stops the
 * app from starting, so a forgotten guard is a start-up error rather than an open endpoint.
 */
function auditAccessPolicy (app: FastifyInstance, route: RouteOptions): void {
  const preHandlers = [route.preHandler ?? []].flat()
  const guarded = preHandlers[0] === app.authenticate
  const declaredPublic = route.config?.access === 'public'
  if (guarded === declaredPublic) {
    const methods = [route.method].flat().join(',')
    throw new Error(
      `Route ${methods} ${route.url} must declare one access policy: config.access = 'public', ` +
      'or a preHandler list that starts with app.authenticate'
    )
  }
}

async function authorizationPlugin (app: FastifyInstance) {
  app.addHook('onRoute', (route) => auditAccessPolicy(app, route))
}

export default fp(authorizationPlugin, { name: 'authorization', dependencies: ['auth'] })
