import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { EMAIL_MAX_LENGTH, normaliseEmail } from '../../auth/email.ts'
import { apiError } from '../../errors.ts'
import { actorEnded, actorOf } from '../../plugins/auth.ts'
import { notFound } from '../../plugins/authorization.ts'
import { isActorEnded, type User } from '../../repositories/users.ts'
import { ErrorResponse, NameOrNone, errorResponse, guardedErrors, RoleName, UserResponse, Uuid, isUuid, presentUser } from '../../schemas/common.ts'

const AdminUserResponse = Type.Object({ ...UserResponse.properties, disabled: Type.Boolean() }, { title: 'AdminUser' })
const UserList = Type.Object({
  users: Type.Array(AdminUserResponse),
  next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor for the next page; null on the last page' })
}, { title: 'UserList' })
const ListQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
  cursor: Type.Optional(Type.String({ maxLength: 200 })),
  // Not blank: whitespace alone, trimmed as emails are, would filter nothing and list everyone.
  email: Type.Optional(Type.String({ minLength: 1, maxLength: EMAIL_MAX_LENGTH, pattern: '\\S', description: 'Case-insensitive substring of the email' }))
}, { additionalProperties: false })
const UserChange = Type.Object({
  roles: Type.Optional(Type.Array(RoleName, { maxItems: 4, uniqueItems: true, description: 'Replaces the extra roles; user is always kept' })),
  disabled: Type.Optional(Type.Boolean()),
  name: Type.Optional(NameOrNone)
}, { additionalProperties: false, minProperties: 1 })
const UserParams = Type.Object({ id: Uuid })

const presentAdminUser = (user: User) => ({ ...presentUser(user), disabled: user.disabled })

/** 9999-12-31T23:59:59.999Z: later times no database column holds. */
const LATEST_CURSOR_TIME = 253_402_300_799_999

/** Cursors are opaque to clients: base64url of the last row's [created_at ms, id]. */
const encodeCursor = (user: Pick<User, 'createdAt' | 'id'>) => Buffer.from(JSON.stringify([user.createdAt.getTime(), user.id])).toString('base64url')
function decodeCursor (cursor: string): { createdAt: Date, id: string } {
  try {
    const [ms, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString()) as unknown[]
    const createdAt = new Date(ms as number)
    if (Number.isSafeInteger(ms) && (ms as number) >= 0 && (ms as number) <= LATEST_CURSOR_TIME && typeof id === 'string' && isUuid(id)) {
      const position = { createdAt, id }
      // Only a cursor spelled as we issue it: the same bytes in another spelling (padding, `+/`, more
      // elements) is no next_cursor of ours.
      if (encodeCursor(position) === cursor) return position
    }
  } catch {}
  throw apiError(400, 'invalid_cursor', 'The cursor is not a position in the list: pass next_cursor back as it came.')
}

const lastAdmin = () => apiError(409, 'last_admin', 'The last enabled admin cannot lose admin, be disabled or be deleted.')

const adminUserRoutes: FastifyPluginAsyncTypebox = async (app) => {
  // Admin endpoints act on accounts: the caller's user and session are re-read on every call.
  const adminOnly = [app.authenticate, app.loadAccount, app.requirePermission('users:manage')]
  const lastAdminResponse = errorResponse('It would leave no enabled admin: last_admin')

  app.get('/users', {
    preHandler: adminOnly,
    schema: {
      tags: ['admin'],
      summary: 'Users in creation order, paginated by cursor',
      querystring: ListQuery,
      response: { 200: UserList, 400: errorResponse('A cursor that is not a position in the list: invalid_cursor'), ...guardedErrors }
    }
  }, async (request) => {
    const { limit = 20, cursor, email } = request.query
    const rows = await app.usersRepository.page({
      limit: limit + 1,
      after: cursor === undefined ? undefined : decodeCursor(cursor),
      emailContains: email ? normaliseEmail(email) : undefined
    })
    const users = rows.slice(0, limit)
    return {
      users: users.map(presentAdminUser),
      next_cursor: rows.length > limit ? encodeCursor(users[users.length - 1]!) : null
    }
  })

  app.get('/users/:id', {
    preHandler: adminOnly,
    schema: {
      tags: ['admin'],
      summary: 'One user',
      params: UserParams,
      response: { 200: AdminUserResponse, 400: ErrorResponse, ...guardedErrors, 404: ErrorResponse }
    }
  }, async (request) => {
    const user = await app.usersRepository.findById(request.params.id)
    if (!user) throw notFound('user')
    return presentAdminUser(user)
  })

  app.patch('/users/:id', {
    preHandler: adminOnly,
    schema: {
      tags: ['admin'],
      summary: 'Change roles, disabled or name; a role change or disable revokes the user\'s sessions',
      params: UserParams,
      body: UserChange,
      response: { 200: AdminUserResponse, 400: ErrorResponse, ...guardedErrors, 404: ErrorResponse, 409: lastAdminResponse }
    }
  }, async (request) => {
    const result = await app.usersRepository.adminUpdate(actorOf(request), request.params.id, request.body)
    if (isActorEnded(result)) throw actorEnded(result)
    if (result.outcome === 'not_found') throw notFound('user')
    if (result.outcome === 'last_admin') throw lastAdmin()
    const { user, rolesChanged, disabledNow, revokedSessions } = result
    const audit = { userId: user.id, adminId: request.user.id }
    if (rolesChanged) request.log.info({ event: 'role_change', ...audit, roles: user.roles }, 'roles changed')
    if (disabledNow) request.log.info({ event: 'user_disabled', ...audit }, 'user disabled')
    if (revokedSessions > 0) {
      request.log.info({ event: 'session_revoked', ...audit, count: revokedSessions, reason: 'admin_change' }, 'sessions revoked')
    }
    return presentAdminUser(user)
  })

  app.delete('/users/:id', {
    preHandler: adminOnly,
    schema: {
      tags: ['admin'],
      summary: 'Delete a user and their sessions',
      params: UserParams,
      response: { 204: Type.Null(), 400: ErrorResponse, ...guardedErrors, 404: ErrorResponse, 409: lastAdminResponse }
    }
  }, async (request, reply) => {
    const outcome = await app.usersRepository.adminDelete(actorOf(request), request.params.id)
    if (isActorEnded(outcome)) throw actorEnded(outcome)
    if (outcome === 'not_found') throw notFound('user')
    if (outcome === 'last_admin') throw lastAdmin()
    request.log.info({ event: 'user_deleted', userId: request.params.id, adminId: request.user.id }, 'user deleted')
    return reply.code(204).send(null)
  })
}

export default fp(adminUserRoutes, { name: 'admin-user-routes', dependencies: ['authorization', 'users-repository'], encapsulate: true })
