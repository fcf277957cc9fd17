import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { EMAIL_LOCAL_PART_MAX_LENGTH, normaliseEmail } from '../auth/email.ts'
import { hashPassword, passwordProblem, rehashedMeanwhile, verifyPassword } from '../auth/passwords.ts'
import { apiError } from '../errors.ts'
import { accountGone, accountOf, actorEnded, actorOf } from '../plugins/auth.ts'
import { checkPasswordLimited } from '../auth/sign-in-limit.ts'
import { SIGN_IN_IP_LIMIT } from '../plugins/rate-limits.ts'
import { noStore } from '../plugins/security.ts'
import { stillWaiting } from '../request-client.ts'
import { MAX_OPEN_SESSIONS, sessionAgeNow } from '../repositories/sessions.ts'
import { isActorEnded } from '../repositories/users.ts'
import { Email, ErrorResponse, NameOrNone, NewPassword, REFRESH_TOKEN_MAX_LENGTH, errorResponse, Password, SessionResponse, UserResponse, presentUser } from '../schemas/common.ts'
import sessionRoutes from './sessions.ts'
import tokenRoutes from './token.ts'

const Credentials = Type.Object({ email: Email, password: Password }, { additionalProperties: false })
const Signup = Type.Object({ email: Email, password: NewPassword, name: Type.Optional(NameOrNone) }, { additionalProperties: false })
const RefreshToken = Type.String({ minLength: 1, maxLength: REFRESH_TOKEN_MAX_LENGTH })
const Logout = Type.Object({
  scope: Type.Optional(Type.Enum(['local', 'global'], { description: 'With a bearer token: this session or every session' })),
  refresh_token: Type.Optional(RefreshToken)
}, { additionalProperties: false })
const PasswordChange = Type.Object({ current_password: Password, new_password: NewPassword }, { additionalProperties: false })
const ProfileChange = Type.Object({ name: NameOrNone }, { additionalProperties: false })

/** Emails are normalised before validation, storage and comparison (contract). */
async function normaliseBodyEmail (request: FastifyRequest) {
  const body = request.body as { email?: unknown } | undefined
  if (body && typeof body.email === 'string') body.email = normaliseEmail(body.email)
}

const authRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.addHook('onRequest', noStore)
  app.addHook('onRequest', app.limitPerIp)
  // Parts of /auth, in plugins of their own (their hooks and parsers stay theirs); what they use
  // is named in this module's dependencies.
  await app.register(sessionRoutes)
  await app.register(tokenRoutes)

  app.post('/signup', {
    config: { access: 'public' },
    preValidation: normaliseBodyEmail,
    schema: {
      tags: ['auth'],
      summary: 'Create an account and start a session',
      body: Signup,
      response: {
        201: SessionResponse,
        400: errorResponse('A password the policy refuses (common, the email, or short without its surrounding whitespace): weak_password'),
        409: errorResponse('An account with this email exists: email_taken')
      }
    }
  }, async (request, reply) => {
    const registration = await app.signInFlows.signUp(request, request.body)
    if (registration.outcome === 'weak_password') throw apiError(400, 'weak_password', registration.message)
    if (registration.outcome === 'email_taken') throw apiError(409, 'email_taken', 'An account with this email already exists.')
    if (registration.outcome === 'invalid_email') throw apiError(400, 'validation_error', `body/email must have at most ${EMAIL_LOCAL_PART_MAX_LENGTH} characters before the @`)
    return reply.code(201).send(registration.created)
  })

  app.post('/login', {
    config: { access: 'public', ipLimitGroup: SIGN_IN_IP_LIMIT },
    preValidation: normaliseBodyEmail,
    schema: {
      tags: ['auth'],
      summary: 'Sign in with email and password',
      description: `Opens a session. A user keeps at most ${MAX_OPEN_SESSIONS} open sessions: past that, the least recently used one is revoked.`,
      body: Credentials,
      response: {
        200: SessionResponse,
        400: ErrorResponse,
        401: errorResponse('Unknown email or wrong password (one answer for both): invalid_credentials'),
        403: errorResponse('The right password for a disabled account: user_disabled')
      }
    }
  }, async (request) => app.signInFlows.signIn(request, request.body.email, request.body.password))

  app.post('/refresh', {
    config: { access: 'public' },
    schema: {
      tags: ['auth'],
      summary: 'Exchange a refresh token for a new pair (rotation)',
      description: 'The presented token is used up. Presenting it again after the retry grace window revokes the session.',
      body: Type.Object({ refresh_token: RefreshToken }, { additionalProperties: false }),
      response: {
        200: SessionResponse,
        400: ErrorResponse,
        401: errorResponse('Unknown, expired, revoked or already used refresh token: invalid_refresh_token')
      }
    }
  }, async (request) => app.signInFlows.refresh(request, request.body.refresh_token))

  app.post('/logout', {
    // Public so a client whose access token expired can still end its session with the refresh
    // token; without one, the handler authenticates the bearer token like any guarded route.
    // A bodiless POST (the usual logout call) is an empty object, not a validation error.
    config: { access: 'public', bodyOptional: true },
    schema: {
      tags: ['auth'],
      summary: 'End this session, every session (scope: global), or the session of a refresh token',
      // Either a bearer token or, with refresh_token in the body, nothing.
      security: [{ bearerAuth: [] }, { oauth2: [] }, {}],
      body: Logout,
      response: {
        204: Type.Null(),
        400: errorResponse('scope together with refresh_token: validation_error; a malformed Authorization header: invalid_request'),
        401: errorResponse('Neither a valid bearer token nor a refresh_token: missing_token, invalid_token, token_expired')
      }
    }
  }, async (request, reply) => {
    const age = sessionAgeNow(app.config.sessionMaxAge)
    const body = request.body
    if (body.refresh_token && body.scope) {
      throw apiError(400, 'validation_error', 'body: send scope with a bearer token, or refresh_token alone, not both')
    }
    if (body.refresh_token) {
      // An unknown token also answers 204: logging out never tells whether a token existed.
      const session = await app.sessionsRepository.revokeByRefreshToken(body.refresh_token, age)
      if (session) request.log.info({ event: 'session_revoked', userId: session.userId, sessionId: session.id, reason: 'logout' }, 'session revoked')
      return reply.code(204).send(null)
    }
    await app.authenticate(request)
    await app.loadAccount(request)
    const { user, session } = accountOf(request)
    if (body.scope === 'global') {
      const count = await app.sessionsRepository.revokeAllForUser(user.id, age)
      request.log.info({ event: 'session_revoked', userId: user.id, count, reason: 'logout_global' }, 'sessions revoked')
    } else {
      await app.sessionsRepository.revoke(session.id, user.id, age)
      request.log.info({ event: 'session_revoked', userId: user.id, sessionId: session.id, reason: 'logout' }, 'session revoked')
    }
    return reply.code(204).send(null)
  })

  app.get('/me', {
    preHandler: [app.authenticate, app.loadAccount],
    schema: {
      tags: ['auth'],
      summary: 'The signed-in user',
      response: { 200: UserResponse, 401: ErrorResponse }
    }
  }, async (request) => presentUser(accountOf(request).user))

  app.patch('/me', {
    preHandler: [app.authenticate, app.loadAccount],
    schema: {
      tags: ['auth'],
      summary: 'Change the signed-in user\'s profile',
      body: ProfileChange,
      response: { 200: UserResponse, 400: ErrorResponse, 401: ErrorResponse }
    }
  }, async (request) => {
    const user = await app.usersRepository.updateName(actorOf(request), request.body.name)
    if (isActorEnded(user)) throw actorEnded(user)
    return presentUser(user)
  })

  app.post('/password', {
    preHandler: [app.authenticate, app.loadAccount],
    schema: {
      tags: ['auth'],
      summary: 'Change the password; every other session is revoked',
      body: PasswordChange,
      response: {
        204: Type.Null(),
        400: errorResponse('A new password the policy refuses: weak_password'),
        401: errorResponse('Wrong current password: invalid_credentials')
      }
    }
  }, async (request, reply) => {
    const { user } = accountOf(request)
    const { current_password: currentPassword, new_password: newPassword } = request.body
    // A stolen access token must not become a way to guess the password: same per-account limit.
    const currentHash = await app.usersRepository.findPasswordHash(user.id)
    // Deleted since loadAccount read it: no password was wrong, and none is counted.
    if (currentHash === undefined) throw accountGone()
    const waiting = stillWaiting(request)
    const correct = await checkPasswordLimited(app.signInFailures, user.email,
      () => verifyPassword(currentHash, currentPassword, waiting),
      () => request.log.warn({ event: 'password_change_blocked', userId: user.id }, 'password change refused: too many attempts for this account'))
    const wrongPassword = () => {
      request.log.info({ event: 'password_change_failed', userId: user.id }, 'wrong current password')
      return apiError(401, 'invalid_credentials', 'The current password is wrong.')
    }
    if (!correct) throw wrongPassword()
    const problem = passwordProblem(newPassword, user.email)
    if (problem) throw apiError(400, 'weak_password', problem)
    // ASVS 3.3.3: a password change ends every other session. Refused, like a wrong password,
    // when the password changed since it was verified (another change won the race); a hash a
    // sign-in upgraded meanwhile, still of this password, is changed from instead.
    const newHash = await hashPassword(newPassword, waiting)
    const change = (from: string) => app.usersRepository.changePassword(actorOf(request), { from, to: newHash }, new Date())
    let count = await change(currentHash)
    if (count === 'hash_changed') {
      const upgraded = await rehashedMeanwhile(await app.usersRepository.findPasswordHash(user.id), currentHash, currentPassword, waiting)
      if (upgraded) count = await change(upgraded)
    }
    if (count === 'hash_changed') throw wrongPassword()
    // Signed out, disabled or deleted during the checks: the answer a request sent after gets.
    if (isActorEnded(count)) throw actorEnded(count)
    request.log.info({ event: 'password_changed', userId: user.id, revokedSessions: count }, 'password changed')
    return reply.code(204).send(null)
  })
}

export default fp(authRoutes, { name: 'auth-routes', dependencies: ['auth', 'rate-limits', 'sign-in-flows', 'users-repository', 'sessions-repository'], encapsulate: true })
