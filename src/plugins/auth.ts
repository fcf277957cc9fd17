import fastifyJwt, { type TokenOrHeader } from '@fastify/jwt'
import { HttpError } from '@fastify/sensible'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Role } from '../auth/permissions.ts'
import {
  ACCESS_TOKEN_ALG,
  ACCESS_TOKEN_TYP,
  CLOCK_TOLERANCE_SECONDS,
  MAX_ACCESS_TOKEN_LENGTH,
  REQUIRED_CLAIMS,
  accessTokenPayload,
  isCanonicalToken,
  kidFor,
  readAccessClaims,
  type AccessTokenPayload,
  type AuthenticatedUser
} from '../auth/tokens.ts'
import { VERIFIED_TOKENS_CACHED, verifiedTokenCache } from '../auth/verified-tokens.ts'
import { apiError } from '../errors.ts'
import { accessCheck, timesSent } from './validation.ts'
import { sessionAgeNow, type Session } from '../repositories/sessions.ts'
import type { Actor, ActorEnded, User } from '../repositories/users.ts'

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: AccessTokenPayload
    user: AuthenticatedUser
  }
}

interface IssuedAccessToken {
  access_token: string
  token_type: 'Bearer'
  expires_in: number
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by loadAccount: the caller's user and session, read fresh from the database; read it through accountOf(). */
    account: { user: User, session: Session } | null
  }
  interface FastifyInstance {
    /** preHandler: verifies the bearer access token and sets `request.user`, or answers 401/400. */
    authenticate (request: FastifyRequest): Promise<void>
    /**
     * preHandler after authenticate, for endpoints that act on the account itself: re-reads the
     * user and the session, so a deleted or disabled user or a revoked session is refused at once.
     */
    loadAccount (request: FastifyRequest): Promise<void>
    /**
     * An access token for the session just opened or refreshed (its lastUsedAt is now), living
     * ACCESS_TOKEN_TTL but never past the session's end, which SESSION_MAX_AGE may bring closer.
     */
    issueAccessToken (user: { id: string, roles: Role[] }, session: Pick<Session, 'id' | 'lastUsedAt' | 'expiresAt'>): IssuedAccessToken
  }
}

/**
 * The account loadAccount read. A route that reads it without that preHandler is a bug in the
 * route: it fails with a 500, whose log line names the route, rather than act without an account.
 */
export function accountOf (request: FastifyRequest): { user: User, session: Session } {
  if (!request.account) throw new Error(`${request.method} ${request.routeOptions.url} reads the account without the loadAccount preHandler`)
  return request.account
}

const REALM = 'gatehouse'

export function bearerChallenge (error?: string, description?: string): string {
  let challenge = `Bearer realm="${REALM}"`
  if (error) challenge += `, error="${error}"`
  // RFC 6750 §3: the description is a quoted string that may not contain " or \.
  if (description) challenge += `, error_description="${description.replace(/["\\]/g, "'")}"`
  return challenge
}

const invalidToken = (description: string) =>
  apiError(401, 'invalid_token', description, { 'www-authenticate': bearerChallenge('invalid_token', description) })

/** 401 for a valid access token whose user was deleted before the request could act for them. */
export const accountGone = () => invalidToken('The account behind this access token no longer exists.')

/** 401 for a valid access token whose session was revoked or expired, or whose user was disabled or deleted. */
export const sessionEnded = () => invalidToken('The session behind this access token has ended.')

/** The caller as the repositories' changes name them: the user and session of the verified access token. */
export const actorOf = (request: FastifyRequest): Actor => ({ userId: request.user.id, sessionId: request.user.sid })

/** The 401 for a change whose caller may act no more (holdActor). */
export const actorEnded = (reason: ActorEnded) => reason === 'account_gone' ? accountGone() : sessionEnded()

const MALFORMED_AUTHORIZATION = 'The Authorization header must be sent once, the Bearer scheme followed by one token.'
const malformedAuthorization = () => apiError(400, 'invalid_request', MALFORMED_AUTHORIZATION, {
  'www-authenticate': bearerChallenge('invalid_request', MALFORMED_AUTHORIZATION)
})

/**
 * The request's Authorization header; 400 when it was sent twice. Node keeps the first and drops
 * the rest, so a proxy or log that reads the last would see another token than the one verified
 * (RFC 9110 §5.3: a field that is no list is sent once).
 */
function authorizationHeader (request: FastifyRequest): string | undefined {
  if (timesSent(request, 'authorization') > 1) throw malformedAuthorization()
  return request.headers.authorization
}

/**
 * RFC 6750 §2.1: `Bearer <token>`, scheme case-insensitive. No bearer credentials at all is a bare
 * challenge (§3.1); a Bearer header that is malformed is invalid_request (400). Tokens in the query
 * string or body are never read (§2.3 is optional and leaks tokens into logs).
 */
function bearerToken (request: FastifyRequest): string {
  const header = authorizationHeader(request)?.trim() ?? ''
  const [scheme] = header.split(/\s/, 1)
  if (!scheme || scheme.toLowerCase() !== 'bearer') {
    throw apiError(401, 'missing_token', 'This request needs a bearer access token.', {
      'www-authenticate': bearerChallenge()
    })
  }
  const credentials = header.slice(scheme.length).trim()
  if (credentials === '' || /\s/.test(credentials)) throw malformedAuthorization()
  return credentials
}

async function authPlugin (app: FastifyInstance) {
  const { jwt: settings, accessTokenTtl } = app.config
  const signingKid = kidFor(settings.secret)
  // kid → secret: a token names its secret; we never try each one in turn.
  const secretsByKid = new Map([settings.secret, ...settings.previousSecrets].map((secret) => [kidFor(secret), secret]))

  await app.register(fastifyJwt, {
    secret: {
      private: settings.secret,
      public: async (_request: FastifyRequest, token: TokenOrHeader) => {
        const kid: unknown = 'header' in token ? token.header.kid : token.kid
        const secret = typeof kid === 'string' ? secretsByKid.get(kid) : undefined
        if (!secret) throw invalidToken('The access token is not signed by a key we know.')
        return secret
      }
    },
    decode: { complete: true },
    // @fastify/jwt stores the payload it verified, before Gatehouse's own checks of its claims:
    // under a name of its own, so request.user only ever holds a user those checks passed.
    decoratorName: 'verifiedAccessTokenPayload',
    sign: {
      algorithm: ACCESS_TOKEN_ALG,
      kid: signingKid,
      header: { alg: ACCESS_TOKEN_ALG, typ: ACCESS_TOKEN_TYP },
      iss: settings.issuer,
      aud: settings.audience,
      expiresIn: accessTokenTtl
    },
    verify: {
      // @fastify/jwt would otherwise accept HS384/HS512 and tokens without exp (RFC 8725 §3.1, §3.9).
      algorithms: [ACCESS_TOKEN_ALG],
      allowedIss: settings.issuer,
      allowedAud: settings.audience,
      requiredClaims: REQUIRED_CLAIMS,
      checkTyp: ACCESS_TOKEN_TYP,
      clockTolerance: CLOCK_TOLERANCE_SECONDS * 1000,
      extractToken: (request: FastifyRequest) => {
        const token = bearerToken(request)
        if (token.length > MAX_ACCESS_TOKEN_LENGTH) throw invalidToken('The access token is invalid.')
        return token
      }
    }
  })

  app.decorate('issueAccessToken', (user: { id: string, roles: Role[] }, session: Pick<Session, 'id' | 'lastUsedAt' | 'expiresAt'>): IssuedAccessToken => {
    const sessionLeft = Math.max(1, Math.floor((session.expiresAt.getTime() - session.lastUsedAt.getTime()) / 1000))
    const expiresIn = Math.min(accessTokenTtl, sessionLeft)
    const payload = accessTokenPayload(user, session.id)
    return {
      // The registered signer unless the session ends sooner: a signer with other options is built per call.
      access_token: expiresIn === accessTokenTtl ? app.jwt.sign(payload) : app.jwt.sign(payload, { expiresIn }),
      token_type: 'Bearer',
      expires_in: expiresIn
    }
  })

  const verified = verifiedTokenCache(VERIFIED_TOKENS_CACHED)
  app.decorateRequest<AuthenticatedUser | null>('user', null)

  app.decorate('authenticate', accessCheck(async (request: FastifyRequest) => {
    const token = bearerToken(request)
    const cached = verified.get(token, Date.now())
    if (cached) {
      request.user = cached
      return
    }

    let payload: Record<string, unknown>
    try {
      payload = await request.jwtVerify() as unknown as Record<string, unknown>
    } catch (error) {
      if (error instanceof HttpError) throw error
      if ((error as { code?: string }).code === 'FST_JWT_AUTHORIZATION_TOKEN_EXPIRED') {
        throw apiError(401, 'token_expired', 'The access token has expired.', {
          'www-authenticate': bearerChallenge('invalid_token', 'The access token has expired.')
        })
      }
      throw invalidToken('The access token is invalid.')
    }
    const user = readAccessClaims(payload, Math.floor(Date.now() / 1000))
    if (!user || !isCanonicalToken(token)) throw invalidToken('The access token is invalid.')
    request.user = Object.freeze(user)
    verified.remember(token, request.user, ((payload.exp as number) + CLOCK_TOLERANCE_SECONDS) * 1000)
  }))

  app.decorateRequest('account', null)
  app.decorate('loadAccount', accessCheck(async (request: FastifyRequest) => {
    const account = await app.sessionsRepository.findActiveAccount(request.user.sid, sessionAgeNow(app.config.sessionMaxAge))
    if (!account || account.user.disabled || account.user.id !== request.user.id) {
      throw sessionEnded()
    }
    request.account = account
  }))
}

export default fp(authPlugin, { name: 'auth', dependencies: ['config', 'sessions-repository'] })
