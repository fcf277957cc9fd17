import { createHmac, randomBytes, randomUUID } from 'node:crypto'
import { connect } from 'node:net'
import { PassThrough } from 'node:stream'
import pg from 'pg'
import tap, { type Test } from 'tap'
import { buildApp, type App, type BuildOptions } from '../src/app.ts'
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

/**
 * TEST_DATABASE_URL=postgres://… runs the suite on PostgreSQL: this test file gets a database of
 * its own, and every build() a freshly emptied schema in it. Unset, every build() gets an
 * in-memory SQLite database.
 */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL
let postgresDatabase: Promise<string> | undefined

function filePostgresDatabase (serverUrl: string): Promise<string> {
  postgresDatabase ??= (async () => {
    const name = `gatehouse_test_${process.pid}_${randomBytes(4).toString('hex')}`
    const admin = new pg.Client({ connectionString: serverUrl })
    await admin.connect()
    await admin.query(`create database ${name}`)
    await admin.end()
    tap.teardown(async () => {
      const cleanup = new pg.Client({ connectionString: serverUrl })
      await cleanup.connect()
      await cleanup.query(`drop database if exists ${name} with (force)`)
      await cleanup.end()
    })
    const url = new URL(serverUrl)
    url.pathname = `/${name}`
    return url.toString()
  })()
  return postgresDatabase
}

export async function freshPostgresUrl (serverUrl: string): Promise<string> {
  const url = await filePostgresDatabase(serverUrl)
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  await client.query('drop schema if exists public cascade; create schema public')
  await client.end()
  return url
}

/**
 * The database of a test's app: a freshly emptied schema of this file's PostgreSQL database when
 * TEST_DATABASE_URL is set, else `sqlite` (in memory, or a file for a test that restarts its app).
 */
export const testDatabase = async (sqlite = TEST_ENV.DATABASE_URL) =>
  TEST_DATABASE_URL ? await freshPostgresUrl(TEST_DATABASE_URL) : sqlite

/** A ready app on a fresh database (or env.DATABASE_URL), closed when the test ends. */
export async function build (t: Test, env: Record<string, string> = {}, options: BuildOptions = {}): Promise<App> {
  const app = await buildApp(loadConfig({ ...TEST_ENV, ...env, DATABASE_URL: env.DATABASE_URL ?? await testDatabase() }), options)
  t.teardown(() => app.close())
  await app.ready()
  return app
}

/** build(), with the app's JSON log lines kept: `log.text` is everything written so far. */
export async function appWithLog (t: Test, env: Record<string, string>) {
  const log = { text: '' }
  const stream = new PassThrough()
  stream.on('data', (chunk) => { log.text += chunk })
  return { app: await build(t, env, { logStream: stream }), log }
}

export type LogLine = Record<string, any>
/** The JSON lines of a log's text. */
export const logLines = (text: string): LogLine[] => text.split('\n').filter(Boolean).map((line) => JSON.parse(line))

type Row = Record<string, unknown>
const onPostgres = (app: App) => app.database.dialect.name === 'postgres'

/** Parameters bound alike on both databases: booleans, dates and JSON as each stores them. */
function bind (app: App, params: unknown[]): unknown[] {
  return params.map((value) => {
    if (value instanceof Date) return onPostgres(app) ? value : value.getTime()
    if (typeof value === 'boolean') return onPostgres(app) ? value : Number(value)
    if (value !== null && typeof value === 'object') return JSON.stringify(value)
    return value
  })
}

/** Rows read back alike: times as epoch milliseconds, booleans as 1/0, JSON as text. */
function readBack (app: App, row: Row): Row {
  if (!onPostgres(app)) return row
  return Object.fromEntries(Object.entries(row).map(([key, value]) => {
    if (value instanceof Date) return [key, value.getTime()]
    if (typeof value === 'boolean') return [key, Number(value)]
    if (value !== null && typeof value === 'object') return [key, JSON.stringify(value)]
    return [key, value]
  }))
}

/**
 * Raw SQL on the app's database for tests that check or arrange its state, written once for both
 * databases: `?` placeholders, and values bound and read back alike (see bind and readBack).
 */
export async function dbAll (app: App, query: string, ...params: unknown[]): Promise<Row[]> {
  let index = 0
  const text = onPostgres(app) ? query.replace(/\?/g, () => `$${++index}`) : query
  const rows = await app.database.query(text, bind(app, params))
  return rows.map((row) => readBack(app, row))
}

export async function dbGet (app: App, query: string, ...params: unknown[]): Promise<Row | undefined> {
  return (await dbAll(app, query, ...params))[0]
}

export async function dbRun (app: App, query: string, ...params: unknown[]): Promise<void> {
  await dbAll(app, query, ...params)
}

/** Makes every update of a session fail, on either database, until the returned function is called. */
export async function refuseSessionUpdates (app: App): Promise<() => Promise<void>> {
  const postgres = app.database.dialect.name === 'postgres'
  await app.database.query(postgres
    ? "create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused by test'; end $$; " +
      'create trigger refuse before update on sessions for each row execute function refuse()'
    : "create trigger refuse before update on sessions begin select raise(abort, 'refused by test'); end")
  return async () => { await app.database.query(`drop trigger refuse${postgres ? ' on sessions' : ''}`) }
}

/**
 * A session stored directly, as if signed in long ago (the cap and cleanup tests): it has no
 * refresh token. Times default to a day ago (created and last used) and a day ahead (expiry).
 */
export async function insertSession (app: App, userId: string, times: { lastUsedAt?: number, expiresAt?: number, revokedAt?: Date | null } = {}, userAgent: string | null = null): Promise<string> {
  const id = randomUUID()
  const now = Date.now()
  await dbRun(app, 'insert into sessions (id, user_id, created_at, last_used_at, expires_at, revoked_at, user_agent, ip) values (?, ?, ?, ?, ?, ?, ?, ?)',
    id, userId, new Date(now - 86_400_000), new Date(times.lastUsedAt ?? now - 86_400_000), new Date(times.expiresAt ?? now + 86_400_000),
    times.revokedAt ?? null, userAgent, null)
  return id
}

/** The first column of the first row as a number: `select count(*) from …`. */
export async function dbCount (app: App, query: string, ...params: unknown[]): Promise<number> {
  const row = await dbGet(app, query, ...params)
  return Number(Object.values(row ?? {})[0])
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

/** Signs up, sets the roles in the database, refreshes: the new access token carries the roles. */
export async function signupWithRoles (app: App, roles: string[], email = uniqueEmail()): Promise<SessionBody> {
  const session = await signup(app, email)
  await dbRun(app, 'update users set roles = ? where id = ?', roles, session.user.id)
  const refreshed = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })
  if (refreshed.statusCode !== 200) throw new Error(`refresh failed: ${refreshed.statusCode} ${refreshed.body}`)
  const body = refreshed.json() as SessionBody
  if (body.user.roles.join() !== roles.join()) throw new Error(`roles not applied: ${body.user.roles.join()}`)
  return body
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

/**
 * Runs `meanwhile` just before the repository method `name` of `repository` runs once: the moment
 * a concurrent request would land between a sign-in's password check and its write.
 */
export function before<R extends object> (repository: R, name: keyof R, meanwhile: () => Promise<unknown>) {
  const original = repository[name] as (...args: unknown[]) => Promise<unknown>
  let armed = true
  Object.assign(repository, {
    [name]: async (...args: unknown[]) => {
      if (armed) {
        armed = false
        await meanwhile()
      }
      return original(...args)
    }
  })
}

/** Sends raw bytes and resolves with everything the server writes before closing. */
export function exchange (port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(request))
    let answer = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => { answer += chunk })
    socket.on('close', () => resolve(answer))
    socket.on('error', reject)
  })
}

/** An HTTP/1.1 answer's status line, headers (lower-cased names) and JSON body. */
export function parseAnswer (answer: string) {
  const [head = '', body = ''] = answer.split('\r\n\r\n')
  const [statusLine, ...lines] = head.split('\r\n')
  const headers = Object.fromEntries(lines.map((line) => {
    const colon = line.indexOf(':')
    return [line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim()]
  }))
  return { statusLine, headers, body: JSON.parse(body) as unknown }
}
