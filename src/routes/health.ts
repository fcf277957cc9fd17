import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { apiError } from '../errors.ts'
import { DATABASE_UNAVAILABLE } from '../plugins/errors.ts'
import { errorResponse } from '../schemas/common.ts'

const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/health', {
    config: { access: 'public' },
    schema: {
      tags: ['health'],
      summary: 'Readiness: 200 while the database answers, 503 while it does not (a probe for traffic, not for restarts)',
      response: { 200: Type.Object({ status: Type.Literal('ok') }), 503: errorResponse('The database cannot be reached or has lost its tables: database_unavailable, with Retry-After') }
    }
  }, async (request) => {
    try {
      await app.database.ping()
    } catch (error) {
      request.log.error({ err: error }, 'database health check failed')
      throw apiError(503, 'database_unavailable', DATABASE_UNAVAILABLE.message, { 'retry-after': DATABASE_UNAVAILABLE.retryAfter })
    }
    return { status: 'ok' as const }
  })
}

export default fp(healthRoutes, { name: 'health-routes', dependencies: ['database'], encapsulate: true })
