// Per-operation costs of the pieces on Gatehouse's hot path, in-process, to tell which are worth
// removing: a database read through Drizzle (built per call, as the repositories do) against a
// prepared statement; a write transaction's commit with and without a sync to disk;
// @fastify/helmet's per-request helmet() against fixed headers; fast-jwt verification and the
// canonical-JSON check against a cache lookup.
// Usage: node --import tsx bench/micro.ts [--users N]
import Database from 'better-sqlite3'
import { eq, sql } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/better-sqlite3'
import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core'
import { createSigner, createVerifier } from 'fast-jwt'
import helmet from 'helmet'
import jwt from 'jsonwebtoken'
import { createSecretKey, randomBytes, randomUUID } from 'node:crypto'
import { readdirSync, readFileSync, rmSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { ACCESS_TOKEN_TYP, REQUIRED_CLAIMS, isCanonicalToken, kidFor } from '../src/auth/tokens.ts'
import { ROOT } from './lib/processes.ts'

const { values } = parseArgs({ options: { users: { type: 'string', default: '100000' } } })
const userCount = Number(values.users)

/** Nanoseconds per call of `run`, over about `ms` milliseconds after a warm-up. */
function time (name: string, run: (index: number) => unknown, ms = 400): number {
  for (let index = 0; index < 2000; index++) run(index)
  let calls = 0
  const started = process.hrtime.bigint()
  const until = started + BigInt(ms * 1e6)
  let now = started
  while (now < until) {
    for (let index = 0; index < 200; index++) run(calls++)
    now = process.hrtime.bigint()
  }
  const ns = Number(now - started) / calls
  console.log(`${(ns / 1000).toFixed(2).padStart(8)} µs  ${name}`)
  return ns
}

// --- database: the users table of migrations/sqlite, N rows
const file = join(tmpdir(), `gatehouse-micro-${process.pid}.db`)
const sqlite = new Database(file)
sqlite.pragma('journal_mode = WAL')
for (const migration of readdirSync(join(ROOT, 'migrations/sqlite')).filter((name) => name.endsWith('.sql')).sort()) {
  for (const statement of readFileSync(join(ROOT, 'migrations/sqlite', migration), 'utf8').split('--> statement-breakpoint')) {
    if (statement.trim()) sqlite.exec(statement)
  }
}
const ids: string[] = []
const insert = sqlite.prepare('insert into users (id, email, name, roles, password_hash, created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?)')
sqlite.transaction(() => {
  for (let index = 0; index < userCount; index++) {
    const id = randomUUID()
    ids.push(id)
    insert.run(id, `user${index}@example.com`, `User ${index}`, '["user"]', '$argon2id$v=19$m=19456,t=2,p=1$x$y', Date.now(), Date.now())
  }
})()

const users = sqliteTable('users', {
  id: text('id').primaryKey(),
  email: text('email').notNull(),
  name: text('name'),
  roles: text('roles', { mode: 'json' }).$type<string[]>().notNull(),
  passwordHash: text('password_hash').notNull(),
  disabled: integer('disabled', { mode: 'boolean' }).notNull(),
  createdAt: integer('created_at', { mode: 'timestamp_ms' }).notNull(),
  updatedAt: integer('updated_at', { mode: 'timestamp_ms' }).notNull()
})
const publicColumns = {
  id: users.id, email: users.email, name: users.name, roles: users.roles, disabled: users.disabled, createdAt: users.createdAt, updatedAt: users.updatedAt
}
const db = drizzle(sqlite)
const pick = (index: number) => ids[(index * 7919) % ids.length]!

console.log(`\nuser by primary key (${userCount.toLocaleString('en-US')} users)`)
time('drizzle select, built per call (as src/repositories)', (index) => db.select(publicColumns).from(users).where(eq(users.id, pick(index))).all())
const preparedDrizzle = db.select(publicColumns).from(users).where(eq(users.id, sql.placeholder('id'))).prepare()
time('drizzle .prepare() once, .get({ id }) per call', (index) => preparedDrizzle.get({ id: pick(index) }))
const raw = sqlite.prepare('select id, email, name, roles, disabled, created_at, updated_at from users where id = ?')
time('better-sqlite3 statement prepared once, .get(id)', (index) => raw.get(pick(index)))
time('better-sqlite3 prepare + get per call', (index) => sqlite.prepare('select id, email, name, roles, disabled, created_at, updated_at from users where id = ?').get(pick(index)))

// --- a write transaction's commit: what synchronous = FULL (src/db/sqlite/open.ts) costs
console.log('\none-row write transaction (BEGIN IMMEDIATE … COMMIT), the event loop waiting on it')
const touch = sqlite.prepare('update users set updated_at = ? where id = ?')
// A new value each time: SQLite writes no page for a row updated to what it holds, and then syncs nothing.
let stamp = 0
for (const mode of ['NORMAL', 'FULL']) {
  sqlite.pragma(`synchronous = ${mode}`)
  time(`synchronous = ${mode}`, (index) => {
    sqlite.exec('BEGIN IMMEDIATE')
    touch.run(++stamp, pick(index))
    sqlite.exec('COMMIT')
  }, 1000)
}

// --- helmet, as @fastify/helmet calls it for each request
console.log('\nsecurity headers')
const config = { contentSecurityPolicy: { directives: { upgradeInsecureRequests: null } } }
const fakeResponse = () => {
  const headers = new Map<string, unknown>()
  return { setHeader: (name: string, value: unknown) => headers.set(name, value), removeHeader: (name: string) => headers.delete(name), headers }
}
time('helmet(config)(req, res) per request (what @fastify/helmet does)', () => {
  helmet(config)({} as IncomingMessage, fakeResponse() as unknown as ServerResponse, () => {})
})
const built = helmet(config)
time('helmet built once, middleware per request', () => {
  built({} as IncomingMessage, fakeResponse() as unknown as ServerResponse, () => {})
})
const once = fakeResponse()
built({} as IncomingMessage, once as unknown as ServerResponse, () => {})
const fixed = [...once.headers]
time(`${fixed.length} precomputed headers set per request`, () => {
  const response = fakeResponse()
  for (const [name, value] of fixed) response.setHeader(name, value)
})

// --- access tokens
console.log('\naccess token verification (HS256, typ at+jwt, iss, aud, required claims)')
const secret = randomBytes(48).toString('base64url')
const kid = kidFor(secret)
const sign = createSigner({ key: secret, algorithm: 'HS256', kid, header: { alg: 'HS256', typ: ACCESS_TOKEN_TYP }, iss: 'gatehouse', aud: 'gatehouse', expiresIn: 900_000 })
const tokens = Array.from({ length: 50 }, () => sign({ sub: randomUUID(), sid: randomUUID(), roles: ['user', 'member'], jti: randomUUID() }))
const options = { algorithms: ['HS256' as const], allowedIss: 'gatehouse', allowedAud: 'gatehouse', requiredClaims: REQUIRED_CLAIMS, checkTyp: ACCESS_TOKEN_TYP, clockTolerance: 10_000, complete: true }
const verifyString = createVerifier({ ...options, key: secret })
const verifyCached = createVerifier({ ...options, key: secret, cache: 1000 })
const token = (index: number) => tokens[index % tokens.length]!
time('fast-jwt verifier built once (it turns the key into a KeyObject once)', (index) => verifyString(token(index)))
time('fast-jwt verifier per call (string key)', (index) => createVerifier({ ...options, key: secret })(token(index)))
time('fast-jwt verifier with its own cache (50 tokens)', (index) => verifyCached(token(index)))
time('isCanonicalToken(token)', (index) => isCanonicalToken(token(index)))
const keyObject = createSecretKey(Buffer.from(secret))
time('jsonwebtoken.verify, KeyObject', (index) => jwt.verify(token(index), keyObject, { algorithms: ['HS256'], issuer: 'gatehouse', audience: 'gatehouse', complete: true }))
time('jsonwebtoken.verify, string secret', (index) => jwt.verify(token(index), secret, { algorithms: ['HS256'], issuer: 'gatehouse', audience: 'gatehouse', complete: true }), 200)
const cache = new Map(tokens.map((t) => [t, { expiresAt: Date.now() + 60_000 }]))
time('Map cache hit + expiry check', (index) => { const hit = cache.get(token(index)); return hit && hit.expiresAt > Date.now() })

sqlite.close()
rmSync(file, { force: true })
rmSync(file + '-wal', { force: true })
rmSync(file + '-shm', { force: true })
