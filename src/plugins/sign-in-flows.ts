import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Static } from 'typebox'
import { dummyVerify, hashPassword, matchPassword, needsRehash, passwordProblem, prepareDummyVerify, rehashedMeanwhile, type PasswordMatch } from '../auth/passwords.ts'
import { registerUser, type Registration } from '../auth/registration.ts'
import { apiError } from '../errors.ts'
import { checkPasswordLimited } from '../auth/sign-in-limit.ts'
import { boundedIp, stillWaiting } from '../request-client.ts'
import { sessionAgeNow, type Session, type SessionClient } from '../repositories/sessions.ts'
import type { User } from '../repositories/users.ts'
import { presentUser, type SessionResponse } from '../schemas/common.ts'

type SessionAnswer = Static<typeof SessionResponse>

export interface SignInFlows {
  /**
   * A new account and its first session, stored together (registerUser's rules); its refusals as
   * registerUser gives them.
   */
  signUp (request: FastifyRequest, input: { email: string, password: string, name?: string | null | undefined }): Promise<Registration<SessionAnswer>>
  /** Email and password → a session; 401 invalid_credentials or 403 user_disabled. */
  signIn (request: FastifyRequest, email: string, password: string): Promise<SessionAnswer>
  /** Rotates a refresh token → a session response; 401 invalid_refresh_token. */
  refresh (request: FastifyRequest, refreshToken: string): Promise<SessionAnswer>
}

declare module 'fastify' {
  interface FastifyInstance {
    signInFlows: SignInFlows
  }
}

const invalidCredentials = () => apiError(401, 'invalid_credentials', 'The email or password is wrong.')
const userDisabled = () => apiError(403, 'user_disabled', 'This account is disabled.')
/**
 * The log line of a refresh that revoked its session: two parties held it. A superseded token
 * (replaced by a grace-window retry) is told apart: two tabs that raced a refresh show as that, as
 * does the rightful client after someone replayed its token within the window.
 */
const SESSION_THEFT_LOG = {
  reused: { event: 'refresh_token_reuse', message: 'refresh token reuse detected: session revoked' },
  superseded: { event: 'refresh_token_superseded', message: 'refresh token superseded by a grace-window retry presented: session revoked' }
} as const

const invalidRefreshToken = () =>
  apiError(401, 'invalid_refresh_token', 'The refresh token is invalid, expired or revoked.')

/**
 * The flows that open and renew sessions: signup's, and the sign-in and refresh flows that
 * /auth/login, /auth/refresh and the OAuth2 token endpoint share, so each answers the same way
 * whatever shape of request carried the credentials.
 */
async function signInFlowsPlugin (app: FastifyInstance) {
  const { refreshTokenTtl: ttl, refreshReuseGrace: grace, sessionMaxAge: maxAge } = app.config
  await prepareDummyVerify()

  const respond = (user: User, session: Session, refreshToken: string): SessionAnswer => ({
    ...app.issueAccessToken(user, session),
    refresh_token: refreshToken,
    user: presentUser(user)
  })

  const clientOf = (request: FastifyRequest): SessionClient => ({ userAgent: request.headers['user-agent'], ip: boundedIp(request.ip) })
  const sessionTimes = () => ({ now: new Date(), ttl, maxAge })

  /**
   * Opens a session for a user who has just proved who they are, with the password hash they
   * proved it against; 401 invalid_credentials when that hash, or the account, changed in the meantime.
   */
  async function openSession (request: FastifyRequest, user: User, passwordHash: string): Promise<SessionAnswer> {
    const opened = await app.sessionsRepository.open({ userId: user.id, passwordHash, ...clientOf(request) }, sessionTimes())
    if (!opened) {
      // Disabled since its password was checked, and that password is still its own: the answer a
      // sign-in after the disable gets. A changed password or a deleted user: wrong credentials.
      const current = await app.usersRepository.findCredentialsByEmail(user.email)
      const disabled = current !== undefined && current.user.disabled && current.passwordHash === passwordHash
      request.log.info({ event: 'login_failed', userId: user.id, reason: disabled ? 'account_disabled' : 'account_changed' },
        'sign-in failed: the password or the account changed meanwhile')
      throw disabled ? userDisabled() : invalidCredentials()
    }
    if (opened.displacedSessions > 0) {
      request.log.info({ event: 'session_revoked', userId: user.id, count: opened.displacedSessions, reason: 'session_limit' },
        'sessions revoked: the user has too many open')
    }
    return respond(opened.user, opened.session, opened.refreshToken)
  }

  const flows: SignInFlows = {
    async signUp (request, input) {
      const registration = await registerUser(
        (user) => app.sessionsRepository.openForNewUser(user, clientOf(request), sessionTimes()), input, stillWaiting(request))
      if (registration.outcome !== 'created') return registration
      const { user, session, refreshToken } = registration.created
      request.log.info({ event: 'signup', userId: user.id }, 'user signed up')
      return { outcome: 'created', created: respond(user, session, refreshToken) }
    },

    async signIn (request, email, password) {
      const found = await app.usersRepository.findCredentialsByEmail(email)
      // Unknown emails are counted too, and spend the same argon2 time as known ones.
      const waiting = stillWaiting(request)
      // Set by the check below (a closure: the compiler would take it for false still).
      let match = false as PasswordMatch
      const correct = await checkPasswordLimited(app.signInFailures, email,
        async () => found ? (match = await matchPassword(found.passwordHash, password, waiting)) !== false : dummyVerify(password, waiting),
        () => request.log.warn({ event: 'login_blocked', userId: found?.user.id }, 'sign-in refused: too many attempts for this account'))
      if (!found || !correct) {
        request.log.info({ event: 'login_failed', userId: found?.user.id, reason: found ? 'wrong_password' : 'unknown_email' }, 'sign-in failed')
        throw invalidCredentials()
      }
      const { user, passwordHash } = found
      // Only after a correct password, so the answer tells a guesser nothing.
      if (user.disabled) {
        request.log.info({ event: 'login_failed', userId: user.id, reason: 'account_disabled' }, 'sign-in failed')
        throw userDisabled()
      }
      let verifiedHash = passwordHash
      // A hash of the password as typed is made again of it normalised, unless that would be a
      // password the policy refuses (fullwidth letters spelling a common one): kept, the old hash
      // still opens the account to what was typed only.
      const normalisedIsWeak = match === 'as-typed' && passwordProblem(password, user.email) !== undefined
      if ((needsRehash(passwordHash) || match === 'as-typed') && !normalisedIsWeak) {
        const upgraded = await hashPassword(password)
        verifiedHash = await app.usersRepository.replacePasswordHash(user.id, passwordHash, upgraded)
          ? upgraded
          // Another sign-in's upgrade may have come first: its hash, if this password still verifies.
          // Otherwise the password changed, and openSession refuses the session.
          : await rehashedMeanwhile(await app.usersRepository.findPasswordHash(user.id), passwordHash, password, waiting) ?? passwordHash
      }
      const session = await openSession(request, user, verifiedHash)
      request.log.info({ event: 'login', userId: user.id }, 'signed in')
      return session
    },

    async refresh (request, refreshToken) {
      const rotation = await app.sessionsRepository.rotate(refreshToken, { now: new Date(), ttl, maxAge, grace })
      if (rotation.outcome === 'invalid') throw invalidRefreshToken()
      if (rotation.outcome === 'reused' || rotation.outcome === 'superseded') {
        const { event, message } = SESSION_THEFT_LOG[rotation.outcome]
        request.log.warn({ event, userId: rotation.session.userId, sessionId: rotation.session.id }, message)
        throw invalidRefreshToken()
      }
      // Roles and the disabled flag are read again, so changes take effect at the next refresh.
      const user = await app.usersRepository.findById(rotation.session.userId)
      if (!user || user.disabled) {
        await app.sessionsRepository.revoke(rotation.session.id, rotation.session.userId, sessionAgeNow(maxAge))
        throw invalidRefreshToken()
      }
      return respond(user, rotation.session, rotation.refreshToken)
    }
  }
  app.decorate('signInFlows', flows)
}

export default fp(signInFlowsPlugin, {
  name: 'sign-in-flows',
  dependencies: ['config', 'auth', 'rate-limits', 'users-repository', 'sessions-repository']
})
