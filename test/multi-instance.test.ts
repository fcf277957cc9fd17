// Several real Gatehouse processes on one PostgreSQL database and one Redis: a token from one is
// good on the others, rotation and revocation are one truth, and brute-force limits are shared.
// Runs when PostgreSQL (TEST_DATABASE_URL or the local default) and Redis are reachable.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import { startServer, type ServerProcess } from './server-process.ts'
import { POSTGRES_URL, REDIS_URL, postgresReachable, redisReachable } from './services.ts'

const PASSWORD = 'several instances, one truth'

const skip = !await postgresReachable()
  ? `PostgreSQL is not reachable at ${POSTGRES_URL} (.ci/run starts it)`
  : !await redisReachable() ? `Redis is not reachable at ${REDIS_URL} (.ci/run starts it)` : false

async function call (server: ServerProcess, method: string, path: string, { body, token, ip }: { body?: unknown, token?: string, ip?: string } = {}) {
  const response = await fetch(server.origin + path, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      // Each scenario its own client address, so per-IP limits in the shared Redis never collide.
      ...(ip ? { 'x-forwarded-for': ip } : {})
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000)
  })
  const text = await response.text()
  return { status: response.status, json: text ? JSON.parse(text) as Record<string, any> : {} }
}

t.test('three instances on one PostgreSQL and Redis', { skip }, async (t) => {
  const name = `gatehouse_multi_${process.pid}_${randomBytes(3).toString('hex')}`
  const admin = new pg.Client({ connectionString: POSTGRES_URL })
  await admin.connect()
  await admin.query(`create database ${name}`)
  t.teardown(async () => {
    await admin.query(`drop database if exists ${name} with (force)`)
    await admin.end()
  })
  const databaseUrl = new URL(POSTGRES_URL)
  databaseUrl.pathname = `/${name}`

  const env = {
    DATABASE_URL: databaseUrl.toString(),
    REDIS_URL,
    JWT_SECRET: randomBytes(48).toString('base64url'),
    REFRESH_REUSE_GRACE: '0',
    RATE_LIMIT_ACCOUNT_MAX: '3',
    RATE_LIMIT_IP_MAX: '1000',
    TRUST_PROXY: 'true'

  }
  // All three start at once on an empty database: the migration lock lets one migrate.
  const servers = await Promise.all([startServer(t, env), startServer(t, env), startServer(t, env)])
  const [a, b, c] = servers as [ServerProcess, ServerProcess, ServerProcess]
  const ip = () => `10.${[...randomBytes(3)].join('.')}`
  const email = (label: string) => `${label}-${randomBytes(4).toString('hex')}@example.com`

  await t.test('a token issued by one instance is accepted by the others', async (t) => {
    const session = await call(a, 'POST', '/auth/signup', { body: { email: email('ada'), password: PASSWORD }, ip: ip() })
    t.equal(session.status, 201)
    for (const server of [b, c]) {
      const me = await call(server, 'GET', '/auth/me', { token: session.json.access_token })
      t.equal(me.status, 200)
      t.equal(me.json.id, session.json.user.id)
    }
  })

  await t.test('a refresh rotated on one instance is refused as reused on another, for the whole session', async (t) => {
    const session = await call(a, 'POST', '/auth/signup', { body: { email: email('bob'), password: PASSWORD }, ip: ip() })
    const rotated = await call(a, 'POST', '/auth/refresh', { body: { refresh_token: session.json.refresh_token }, ip: ip() })
    t.equal(rotated.status, 200)
    const replay = await call(b, 'POST', '/auth/refresh', { body: { refresh_token: session.json.refresh_token }, ip: ip() })
    t.equal(replay.status, 401)
    t.equal(replay.json.code, 'invalid_refresh_token')
    const victim = await call(c, 'POST', '/auth/refresh', { body: { refresh_token: rotated.json.refresh_token }, ip: ip() })
    t.equal(victim.status, 401, 'the session is revoked everywhere')
    t.equal((await call(c, 'GET', '/auth/me', { token: rotated.json.access_token })).status, 401)
  })

  await t.test('20 concurrent refreshes of one token across three instances: exactly one succeeds', async (t) => {
    const session = await call(b, 'POST', '/auth/signup', { body: { email: email('cyd'), password: PASSWORD }, ip: ip() })
    const answers = await Promise.all(Array.from({ length: 20 }, (_, index) =>
      call(servers[index % 3]!, 'POST', '/auth/refresh', { body: { refresh_token: session.json.refresh_token }, ip: ip() })))
    t.equal(answers.filter((answer) => answer.status === 200).length, 1)
    t.equal(answers.filter((answer) => answer.status === 401).length, 19)
  })

  await t.test('logout on one instance is honoured by all', async (t) => {
    const session = await call(c, 'POST', '/auth/signup', { body: { email: email('dee'), password: PASSWORD }, ip: ip() })
    t.equal((await call(a, 'POST', '/auth/logout', { token: session.json.access_token })).status, 204)
    t.equal((await call(b, 'GET', '/auth/me', { token: session.json.access_token })).status, 401)
    t.equal((await call(c, 'POST', '/auth/refresh', { body: { refresh_token: session.json.refresh_token }, ip: ip() })).status, 401)
  })

  await t.test('the per-account login limit is shared', async (t) => {
    const address = email('eve')
    await call(a, 'POST', '/auth/signup', { body: { email: address, password: PASSWORD }, ip: ip() })
    for (const server of servers) {
      t.equal((await call(server, 'POST', '/auth/login', { body: { email: address, password: 'not the password' }, ip: ip() })).status, 401)
    }
    const blocked = await call(b, 'POST', '/auth/login', { body: { email: address, password: PASSWORD }, ip: ip() })
    t.equal(blocked.status, 429, 'three failures on three instances reach the limit of 3')
    t.equal(blocked.json.code, 'rate_limited')
  })

  await t.test('concurrent emails: 30 signups of one email across instances make one account', async (t) => {
    const address = email('fay')
    const answers = await Promise.all(Array.from({ length: 30 }, (_, index) =>
      call(servers[index % 3]!, 'POST', '/auth/signup', { body: { email: address, password: PASSWORD }, ip: ip() })))
    t.equal(answers.filter((answer) => answer.status === 201).length, 1)
    t.equal(answers.filter((answer) => answer.status === 409).length, 29)
  })
})
