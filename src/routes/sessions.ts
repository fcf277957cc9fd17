import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { accountOf } from '../plugins/auth.ts'
import { notFound } from '../plugins/authorization.ts'
import { MAX_OPEN_SESSIONS, sessionAgeNow } from '../repositories/sessions.ts'
import { ErrorResponse, Timestamp, Uuid } from '../schemas/common.ts'

const SessionView = Type.Object({
  id: Uuid,
  created_at: Timestamp,
  last_used_at: Timestamp,
  user_agent: Type.Union([Type.String(), Type.Null()]),
  ip: Type.Union([Type.String(), Type.Null()]),
  current: Type.Boolean({ description: 'The session of the access token making this request' })
}, { title: 'SessionSummary' })

const sessionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/sessions', {
    preHandler: [app.authenticate, app.loadAccount],
    schema: {
      tags: ['sessions'],
      summary: 'The signed-in user\'s active sessions, most recently used first',
      description: `At most ${MAX_OPEN_SESSIONS}: a sign-in past that revokes the least recently used session.`,
      response: { 200: Type.Array(SessionView), 401: ErrorResponse }
    }
  }, async (request) => {
    const { user, session: current } = accountOf(request)
    const sessions = await app.sessionsRepository.listActive(user.id, sessionAgeNow(app.config.sessionMaxAge))
    return sessions.map((session) => ({
      id: session.id,
      created_at: session.createdAt.toISOString(),
      last_used_at: session.lastUsedAt.toISOString(),
      user_agent: session.userAgent,
      ip: session.ip,
      current: session.id === current.id
    }))
  })

  app.delete('/sessions/:id', {
    preHandler: [app.authenticate, app.loadAccount],
    schema: {
      tags: ['sessions'],
      summary: 'Revoke one of the signed-in user\'s sessions',
      params: Type.Object({ id: Uuid }),
      response: { 204: Type.Null(), 400: ErrorResponse, 401: ErrorResponse, 404: ErrorResponse }
    }
  }, async (request, reply) => {
    const { user } = accountOf(request)
    // Another user's session answers 404 like an unknown one: ids are not confirmed to strangers.
    if (!await app.sessionsRepository.revoke(request.params.id, user.id, sessionAgeNow(app.config.sessionMaxAge))) {
      throw notFound('session')
    }
    request.log.info({ event: 'session_revoked', userId: user.id, sessionId: request.params.id, reason: 'user' }, 'session revoked')
    return reply.code(204).send(null)
  })
}

export default sessionRoutes
