// The usual stack, in its fair configuration: Express 5 + jsonwebtoken with the secret as a
// prebuilt KeyObject (a string secret makes jsonwebtoken build a key on every call), chosen by
// `kid`. It makes the same checks as Gatehouse: HS256 only, typ at+jwt, issuer, audience, 10 s
// clock tolerance, every required claim with its type, canonical JSON; and the same reads, from
// the same database as Gatehouse: the SQLite file (DATABASE_PATH, read-only, better-sqlite3
// prepared statements) or PostgreSQL (DATABASE_URL, a pg pool of 10 like Gatehouse's, named
// prepared statements, the session and its user read in one joined statement as Gatehouse does).
import Database from 'better-sqlite3'
import express, { type NextFunction, type Request, type Response } from 'express'
import jwt, { type GetPublicKeyOrSecret, type Jwt } from 'jsonwebtoken'
import { createSecretKey, type KeyObject } from 'node:crypto'
import pg from 'pg'
import { permissionsOf } from '../../src/auth/permissions.ts'
import {
  ACCESS_TOKEN_ALG,
  ACCESS_TOKEN_TYP,
  CLOCK_TOLERANCE_SECONDS,
  MAX_ACCESS_TOKEN_LENGTH,
  REQUIRED_CLAIMS,
  isCanonicalToken,
  kidFor,
  readAccessClaims,
  type AuthenticatedUser
} from '../../src/auth/tokens.ts'

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback
  if (value === undefined) throw new Error(`${name} is required`)
  return value
}

const issuer = env('JWT_ISSUER', 'gatehouse')
const audience = env('JWT_AUDIENCE', 'gatehouse')
const secrets = [env('JWT_SECRET'), ...env('JWT_PREVIOUS_SECRETS', '').split(',').filter(Boolean)]
const keysByKid = new Map<string, KeyObject>(secrets.map((secret) => [kidFor(secret), createSecretKey(Buffer.from(secret))]))

interface User { id: string, email: string, name: string | null, roles: string[], disabled: boolean, created_at: Date, updated_at: Date }

/** The read of GET /auth/me, whichever database answers it. */
interface Store {
  /** The user of the session, when the session is active. */
  account (sessionId: string): Promise<User | undefined> | User | undefined
}

function sqliteStore (path: string): Store {
  interface UserRow { id: string, email: string, name: string | null, roles: string, disabled: number, created_at: number, updated_at: number }
  const sqlite = new Database(path, { readonly: true, fileMustExist: true })
  sqlite.pragma('busy_timeout = 5000')
  const accountBySession = sqlite.prepare(
    'select u.id, u.email, u.name, u.roles, u.disabled, u.created_at, u.updated_at from sessions s join users u on u.id = s.user_id ' +
    'where s.id = ? and s.revoked_at is null and s.expires_at > ?'
  )
  return {
    account (sessionId) {
      const user = accountBySession.get(sessionId, Date.now()) as UserRow | undefined
      return user && { ...user, roles: JSON.parse(user.roles) as string[], disabled: user.disabled === 1, created_at: new Date(user.created_at), updated_at: new Date(user.updated_at) }
    }
  }
}

function postgresStore (url: string): Store {
  const pool = new pg.Pool({ connectionString: url, max: 10 })
  pool.on('error', () => {})
  return {
    async account (sessionId) {
      const { rows: [user] } = await pool.query<User>({
        name: 'account_by_session',
        text: 'select u.id, u.email, u.name, u.roles, u.disabled, u.created_at, u.updated_at from sessions s join users u on u.id = s.user_id ' +
          'where s.id = $1 and s.revoked_at is null and s.expires_at > $2',
        values: [sessionId, new Date()]
      })
      return user
    }
  }
}

const databaseUrl = process.env.DATABASE_URL
const store = databaseUrl && /^postgres(ql)?:\/\//.test(databaseUrl) ? postgresStore(databaseUrl) : sqliteStore(env('DATABASE_PATH'))

const getKey: GetPublicKeyOrSecret = (header, callback) => {
  const key = header.typ === ACCESS_TOKEN_TYP && typeof header.kid === 'string' ? keysByKid.get(header.kid) : undefined
  if (key) callback(null, key)
  else callback(new Error('unknown key'))
}

const refuse = (response: Response, status: number, code: string) =>
  response.status(status).set('www-authenticate', 'Bearer realm="gatehouse"').json({ statusCode: status, error: 'Unauthorized', message: code, code })

declare module 'express-serve-static-core' {
  interface Request { user?: AuthenticatedUser }
}

function authenticate (request: Request, response: Response, next: NextFunction) {
  const [scheme, token, extra] = (request.headers.authorization ?? '').trim().split(/\s+/)
  if (scheme?.toLowerCase() !== 'bearer' || !token || extra !== undefined) return refuse(response, 401, 'missing_token')
  if (token.length > MAX_ACCESS_TOKEN_LENGTH) return refuse(response, 401, 'invalid_token')
  jwt.verify(token, getKey, {
    algorithms: [ACCESS_TOKEN_ALG],
    issuer,
    audience,
    clockTolerance: CLOCK_TOLERANCE_SECONDS,
    complete: true
  }, (error, decoded) => {
    if (error || !decoded) return refuse(response, 401, error?.name === 'TokenExpiredError' ? 'token_expired' : 'invalid_token')
    const payload = (decoded as Jwt).payload as Record<string, unknown>
    const user = REQUIRED_CLAIMS.every((claim) => payload[claim] !== undefined)
      ? readAccessClaims(payload, Math.floor(Date.now() / 1000))
      : undefined
    if (!user || !isCanonicalToken(token)) return refuse(response, 401, 'invalid_token')
    request.user = user
    next()
  })
}

const app = express()
app.disable('x-powered-by')
app.disable('etag')

app.get('/health', (_request, response) => { response.json({ status: 'ok' }) })

app.get('/me/permissions', authenticate, (request, response) => {
  const { id, roles } = request.user!
  response.set('cache-control', 'no-store').json({ user_id: id, roles, permissions: permissionsOf(roles) })
})

app.get('/auth/me', authenticate, async (request, response) => {
  const user = await store.account(request.user!.sid)
  if (!user || user.disabled || user.id !== request.user!.id) return refuse(response, 401, 'invalid_token')
  response.set('cache-control', 'no-store').json({
    id: user.id,
    email: user.email,
    name: user.name,
    roles: user.roles,
    created_at: user.created_at.toISOString(),
    updated_at: user.updated_at.toISOString()
  })
})

const server = app.listen(Number(env('PORT')), '127.0.0.1')
process.once('SIGTERM', () => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
})
