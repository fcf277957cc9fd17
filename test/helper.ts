import { createHmac } from 'node:crypto'
import type { Test } from 'tap'
import { buildApp, type App } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { kidFor } from '../src/auth/tokens.ts'

export const TEST_SECRET = 'test-signing-secret-that-is-at-least-32-bytes-long'
export const TEST_PASSWORD = 'correct horse battery staple'

/** Environment every test app starts from: an in-memory database and a fixed secret. */
export const TEST_ENV = {
  DATABASE_URL: ':memory:',
  JWT_SECRET: TEST_SECRET,
  LOG_LEVEL: 'silent',
  // Tests sign in far more often than a person; test/rate-limits.test.ts sets its own limits.
  RATE_LIMIT_IP_MAX: '100000',
  RATE_LIMIT_ACCOUNT_MAX: '100000'
}

/** A ready app on a fresh database, closed when the test ends. */
export async function build (t: Test, env: Record<string, string> = {}): Promise<App> {
  const app = await buildApp(loadConfig({ ...TEST_ENV, ...env }))
  t.teardown(() => app.close())
  await app.ready()
  return app
}

export interface SessionBody {
  access_token: string
  token_type: string
  expires_in: number
  refresh_token: string
  user: { id: string, email: string, name: string | null, roles: string[], created_at: string, updated_at: string }
}

let counter = 0
export const uniqueEmail = (prefix = 'user') => `${prefix}-${process.pid}-${++counter}@example.com`

export async function signup (app: App, email = uniqueEmail(), password = TEST_PASSWORD): Promise<SessionBody> {
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password } })
  if (response.statusCode !== 201) throw new Error(`signup failed: ${response.statusCode} ${response.body}`)
  return response.json()
}

export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

/**
 * Hand-made JWTs for the attack tests: any header, any payload, HMAC with any algorithm and secret,
 * so a test can forge exactly the token it means to refuse.
 */
export function forgeToken (
  payload: Record<string, unknown>,
  { header = {}, secret = TEST_SECRET, hmac = 'sha256' }: { header?: Record<string, unknown>, secret?: string, hmac?: string } = {}
): string {
  const fullHeader = { alg: 'HS256', typ: 'at+jwt', kid: kidFor(secret), ...header }
  const input = `${b64(fullHeader)}.${b64(payload)}`
  return `${input}.${createHmac(hmac, secret).update(input).digest('base64url')}`
}

/** The payload of a JWT, unverified: for tests that look inside tokens. */
export function tokenPayload (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString())
}

/** Claims as Gatehouse would issue them for this session's user, valid for 15 minutes. */
export function validClaims (session: SessionBody, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return {
    sub: session.user.id,
    sid: tokenPayload(session.access_token).sid,
    roles: ['user'],
    jti: 'test-jti',
    iss: 'gatehouse',
    aud: 'gatehouse',
    iat: now,
    exp: now + 900,
    ...overrides
  }
}
