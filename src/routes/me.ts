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
 * user has. Like every stateless check (contract: "Tokens"), a role change shows here once the
 * client refreshes, at the latest one access-token lifetime later.
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
