import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { randomUUID } from 'node:crypto'
import { Type } from 'typebox'
import { normaliseEmail } from '../auth/email.ts'
import { dummyVerify, hashPassword, needsRehash, passwordPolicyProblem, verifyPassword } from '../auth/passwords.ts'
import { apiError } from '../errors.ts'
import type { User } from '../repositories/users.ts'
import { Email, ErrorResponse, Name, Password, UserResponse, presentUser } from '../schemas/common.ts'

const SessionResponse = Type.Object({
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'Access token lifetime in seconds' }),
  user: UserResponse
})

const Credentials = Type.Object({ email: Email, password: Password }, { additionalProperties: false })
const Signup = Type.Object({ email: Email, password: Password, name: Type.Optional(Name) }, { additionalProperties: false })

/** Emails are normalised before validation, storage and comparison (contract). */
async function normaliseBodyEmail (request: FastifyRequest) {
  const body = request.body as { email?: unknown } | undefined
  if (body && typeof body.email === 'string') body.email = normaliseEmail(body.email)
}

const invalidCredentials = () => apiError(401, 'invalid_credentials', 'The email or password is wrong.')

const authRoutes: FastifyPluginAsyncTypebox = async (app) => {
  // Nothing a client gets from /auth may be cached: tokens and personal data (RFC 6749 §5.1).
  app.addHook('onRequest', async (_request, reply) => {
    reply.header('cache-control', 'no-store')
    reply.header('pragma', 'no-cache')
  })

  function sendSession (reply: FastifyReply, user: User, sessionId: string, status: 200 | 201) {
    return reply.code(status).send({ ...app.issueAccessToken(user, sessionId), user: presentUser(user) })
  }

  app.post('/signup', {
    config: { access: 'public' },
    preValidation: normaliseBodyEmail,
    schema: {
      tags: ['auth'],
      summary: 'Create an account and start a session',
      body: Signup,
      response: { 201: SessionResponse, 400: ErrorResponse, 409: ErrorResponse }
    }
  }, async (request, reply) => {
    const { email, password, name } = request.body
    const problem = passwordPolicyProblem(password, email)
    if (problem) throw apiError(400, 'weak_password', problem)
    const user = await app.usersRepository.create({
      email,
      name: name ?? null,
      passwordHash: await hashPassword(password),
      roles: ['user']
    })
    if (!user) throw apiError(409, 'email_taken', 'An account with this email already exists.')
    request.log.info({ event: 'signup', userId: user.id }, 'user signed up')
    return sendSession(reply, user, randomUUID(), 201)
  })

  app.post('/login', {
    config: { access: 'public' },
    preValidation: normaliseBodyEmail,
    schema: {
      tags: ['auth'],
      summary: 'Sign in with email and password',
      body: Credentials,
      response: { 200: SessionResponse, 400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse }
    }
  }, async (request, reply) => {
    const { email, password } = request.body
    const found = await app.usersRepository.findCredentialsByEmail(email)
    if (!found) {
      await dummyVerify(password)
      request.log.info({ event: 'login_failed', reason: 'unknown_email' }, 'login failed')
      throw invalidCredentials()
    }
    if (!await verifyPassword(found.passwordHash, password)) {
      request.log.info({ event: 'login_failed', userId: found.user.id, reason: 'wrong_password' }, 'login failed')
      throw invalidCredentials()
    }
    // Only after a correct password, so the answer reveals nothing to a guesser.
    if (found.user.disabled) throw apiError(403, 'user_disabled', 'This account is disabled.')
    if (needsRehash(found.passwordHash)) {
      await app.usersRepository.updatePasswordHash(found.user.id, await hashPassword(password))
    }
    request.log.info({ event: 'login', userId: found.user.id }, 'user logged in')
    return sendSession(reply, found.user, randomUUID(), 200)
  })

  app.get('/me', {
    preHandler: [app.authenticate],
    schema: {
      tags: ['auth'],
      summary: 'The signed-in user',
      security: [{ bearerAuth: [] }],
      response: { 200: UserResponse, 401: ErrorResponse }
    }
  }, async (request) => {
    const user = await app.usersRepository.findById(request.user.id)
    if (!user || user.disabled) {
      throw apiError(401, 'invalid_token', 'The account behind this token no longer exists or is disabled.', {
        'www-authenticate': app.bearerChallenge('invalid_token')
      })
    }
    return presentUser(user)
  })
}

export default authRoutes
