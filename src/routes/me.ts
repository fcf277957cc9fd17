import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { PERMISSIONS, permissionsOf } from '../auth/permissions.ts'
import { ErrorResponse, RoleName, Uuid } from '../schemas/common.ts'

const PermissionsResponse = Type.Object({
  user_id: Uuid,
  roles: Type.Array(RoleName),
  permissions: Type.Array(Type.Enum(PERMISSIONS))
}, { title: 'Permissions' })

/**
 * What the caller may do, read from the access token alone: a client shows only the actions the
 * user has. Like every stateless check (contract: "Tokens"), it shows the token's roles: an admin's
 * role change ends the user's sessions, so the new roles show from their next sign-in, and the
 * old ones at most one access-token lifetime after the change.
 */
const meRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/permissions', {
    config: { database: false },
    preHandler: app.authenticate,
    schema: {
      tags: ['auth'],
      summary: 'The caller\'s roles and the permissions they grant, from the access token (no database read)',
      response: { 200: PermissionsResponse, 401: ErrorResponse }
    }
  }, async (request) => {
    const { id, roles } = request.user
    return { user_id: id, roles, permissions: permissionsOf(roles) }
  })
}

export default fp(meRoutes, { name: 'me-routes', dependencies: ['auth'], encapsulate: true })
