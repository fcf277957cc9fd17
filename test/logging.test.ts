import type { LightMyRequestResponse } from 'fastify'
import { connect } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { hash } from '@node-rs/argon2'
import { serializeError } from '../src/logging.ts'
import { HASH_OPTIONS, HASH_SLOTS } from '../src/auth/passwords.ts'
import { startupProblem } from '../src/errors.ts'
import { MAX_OPEN_SESSIONS } from '../src/repositories/sessions.ts'
import {
  TEST_ENV, TEST_PASSWORD, appWithLog, before, bearer, dbAll, dbCount, dbGet, dbRun, exchange, freshPostgresUrl, insertSession, logLines, parseAnswer, signup, signupWithRoles, testDatabase, tokenPayload, uniqueEmail, type LogLine
} from './helper.ts'
import { POSTGRES_URL, postgresReachable } from './services.ts'

/** A request id: a UUID, unique across instances and restarts. */
const REQUEST_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const WRONG_PASSWORD = 'wrong password!'

function assertNoSecrets (t: Test, text: string, secrets: string[]) {
  for (const secret of secrets) t.notOk(text.includes(secret), `log does not contain ${secret.slice(0, 12)}…`)
}

/** The security event lines, in order, each cut down to the fields `expected` names: exact, and undefined for absent. */
function assertEvents (t: Test, lines: LogLine[], expected: LogLine[], message: string) {
  const events = lines.filter((line) => line.event !== undefined)
  const cut = events.map((line, index) => expected[index] ? Object.fromEntries(Object.keys(expected[index]).map((key) => [key, line[key]])) : line)
  t.same(cut, expected, message)
}

/** Sends one request and checks the security events it logged, each carrying that request's id. */
async function expectEvents (t: Test, log: { text: string }, send: () => Promise<LightMyRequestResponse>, expected: LogLine[]) {
  const from = log.text.length
  const response = await send()
  const lines = logLines(log.text.slice(from))
  const reqId = lines.find((line) => line.msg === 'incoming request')?.reqId
  t.match(reqId, REQUEST_ID, 'the request is logged')
  assertEvents(t, lines, expected.map((fields) => ({ ...fields, reqId })), `${response.statusCode}: ${expected.map((fields) => fields.event).join(', ') || 'no event'}`)
  return response
}

t.test('logs carry security events with user and request ids, and never a secret', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', REFRESH_REUSE_GRACE: '0' })

  const email = uniqueEmail()
  const session = await signup(app, email)
  await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: WRONG_PASSWORD } })
  const login = (await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).json()
  await app.inject({ url: `/auth/me?access_token=${login.access_token}&other=1`, headers: bearer(login.access_token) })
  // A token under any name, where no bearer header carries it.
  await app.inject({ url: `/auth/me?authorization=${login.access_token}&jwt=${login.access_token}` })
  // And under no name at all, after a named one.
  await app.inject({ url: `/me/permissions?x=1&${session.access_token}` })
  // Or in the path, where no route reads it: neither logged nor named in the 404.
  for (const token of [login.access_token, session.refresh_token]) {
    const notFound = await app.inject({ url: `/auth/me/${token}` })
    t.equal(notFound.json().message, 'Route GET /auth/me/[redacted] not found', 'the 404 names the path with the token masked')
  }
  // Percent-encoded, in part or whole, it is the same token to whoever reads the log.
  const encodedWhole = (text: string) => [...text].map((char) => `%${char.charCodeAt(0).toString(16).toUpperCase()}`).join('')
  // One character escaped in the middle: each half, 21 characters, is half the secret.
  const escapedMidway = (text: string) => {
    const middle = Math.floor(text.length / 2)
    return { path: `${text.slice(0, middle)}${encodedWhole(text[middle]!)}${text.slice(middle + 1)}`, secrets: [text.slice(0, middle), text.slice(middle + 1)] }
  }
  const [header, payload, signature] = login.access_token.split('.') as [string, string, string]
  const signatureEscaped = escapedMidway(signature)
  const refreshEscaped = escapedMidway(session.refresh_token)
  const encodedPaths = [
    { path: `${header}.${payload}.${signatureEscaped.path}`, secrets: signatureEscaped.secrets },
    { path: `%65${header.slice(1)}.${payload}.${signatureEscaped.path}`, secrets: signatureEscaped.secrets },
    { path: login.access_token.split('.').map(encodedWhole).join('.'), secrets: [encodedWhole(signature)] },
    { path: encodedWhole(login.access_token), secrets: [encodedWhole(signature)] },
    { path: refreshEscaped.path, secrets: refreshEscaped.secrets },
    { path: encodedWhole(session.refresh_token), secrets: [encodedWhole(session.refresh_token)] }
  ]
  for (const { path, secrets } of encodedPaths) {
    const notFound = await app.inject({ url: `/auth/me/${path}` })
    t.equal(notFound.statusCode, 404)
    for (const secret of secrets) {
      t.notOk(notFound.json().message.includes(secret), `the 404 masks ${path.slice(0, 12)}…`)
      t.notOk(log.text.includes(secret), `the log masks ${path.slice(0, 12)}…`)
    }
  }
  // A password as a path parameter, or in a query percent-encoded into the path: no route reads
  // either, and neither the 404 nor the log shows it.
  const pathPassword = 'hunter2-in-a-path'
  for (const [path, shown] of [
    [`/auth/login;password=${pathPassword}`, '/auth/login;password=[redacted]'],
    [`/auth/token%3Fpassword%3D${pathPassword}`, '/auth/token%3Fpassword%3D[redacted]'],
    // Longer, the same text is a run of 40 token characters and more: masked whole.
    [`/auth/token%3Fgrant_type%3Dpassword%26password%3D${pathPassword}`, '/auth/[redacted]'],
    // To the end of the path: a password may hold a `/`.
    [`/auth/login;password%3d${pathPassword}/more`, '/auth/login;password%3d[redacted]'],
    // Encoded twice.
    [`/auth/token%253Fpassword%253D${pathPassword}`, '/auth/token%253Fpassword%253D[redacted]']
  ] as const) {
    const notFound = await app.inject({ url: `${path}?next=1` })
    t.equal(notFound.json().message, `Route GET ${shown} not found`, `the 404 masks ${shown}`)
    t.ok(log.text.includes(`"url":"${shown}?next=[redacted]"`), `the log masks ${shown}`)
  }
  // A fragment sent on the wire (inject drops it) is the query to the router: masked as one.
  await app.listen({ port: 0, host: '127.0.0.1' })
  const fragment = parseAnswer(await exchange((app.server.address() as { port: number }).port,
    `GET /auth/nowhere#password=${pathPassword}&next=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`))
  t.same(fragment.body, { statusCode: 404, error: 'Not Found', message: 'Route GET /auth/nowhere not found', code: 'not_found' }, 'the 404 names the path alone')
  t.ok(log.text.includes('"url":"/auth/nowhere#password=[redacted]&next=[redacted]"'), 'the log masks a fragment\'s values')
  t.notOk(log.text.includes(pathPassword), 'no password from a path in the log')
  await app.inject({ method: 'POST', url: '/auth/token', payload: `grant_type=password&username=${email}&password=${TEST_PASSWORD}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })
  await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })
  await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(login.access_token) })

  const { password_hash: hash } = await dbGet(app, 'select password_hash from users') as { password_hash: string }
  assertNoSecrets(t, log.text, [TEST_PASSWORD, session.access_token, session.refresh_token, login.access_token, login.refresh_token, hash, TEST_ENV.JWT_SECRET])
  t.match(log.text, /access_token=\[redacted\]&other=\[redacted\]/, 'query values are masked, their names kept')
  t.match(log.text, /authorization=\[redacted\]&jwt=\[redacted\]/, 'whatever the name')
  t.match(log.text, /"url":"\/me\/permissions\?x=\[redacted\]&\[redacted\]"/, 'or with no name')

  const lines = logLines(log.text)
  const event = (name: string) => lines.find((line) => line.event === name)
  for (const name of ['signup', 'login_failed', 'login', 'refresh_token_reuse', 'session_revoked']) {
    const line = event(name)
    t.ok(line, `a ${name} line`)
    t.equal(line?.userId, session.user.id, `${name} names the user`)
    t.match(line?.reqId, REQUEST_ID, `${name} names the request`)
  }
})

t.test('a disabled account\'s right password is logged as a failed sign-in', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const email = uniqueEmail()
  const session = await signup(app, email)
  await dbRun(app, 'update users set disabled = ? where id = ?', true, session.user.id)
  const response = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(response.statusCode, 403)
  const lines = logLines(log.text)
  t.match(lines.find((line) => line.event === 'login_failed'), { userId: session.user.id, reason: 'account_disabled', reqId: REQUEST_ID })
})

t.test('a sign-in whose account changed after its password check is logged with the reason its answer gives', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const cases: Array<[string, string, number, string]> = [
    ['delete from users where id = ?', 'deleted', 401, 'account_changed'],
    ['update users set disabled = true where id = ?', 'disabled', 403, 'account_disabled']
  ]
  for (const [change, label, status, reason] of cases) {
    const email = uniqueEmail(label)
    const session = await signup(app, email)
    before(app.sessionsRepository, 'open', () => dbRun(app, change, session.user.id))
    const login = () => app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
    const response = await expectEvents(t, log, login, [{ level: 30, event: 'login_failed', userId: session.user.id, reason }])
    t.equal(response.statusCode, status, `${label} meanwhile`)
  }
})

t.test('a sign-in past the per-account limit is logged as blocked, at warn, naming the account where it exists', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', RATE_LIMIT_ACCOUNT_MAX: '2' })
  const login = (email: string, password: string) => app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
  const email = uniqueEmail()
  const session = await signup(app, email)
  const blocked = [{ level: 40, event: 'login_blocked', userId: session.user.id }]
  for (let attempt = 0; attempt < 2; attempt++) await login(email, WRONG_PASSWORD)
  t.equal((await expectEvents(t, log, () => login(email, TEST_PASSWORD), blocked)).statusCode, 429, 'the right password is refused too')
  const grant = () => app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: email, password: TEST_PASSWORD } })
  t.equal((await expectEvents(t, log, grant, blocked)).statusCode, 429, 'and the password grant, on the same count')

  // Unknown emails are counted too: the line has no account to name.
  const ghost = uniqueEmail('ghost')
  for (let attempt = 0; attempt < 2; attempt++) await login(ghost, WRONG_PASSWORD)
  await expectEvents(t, log, () => login(ghost, WRONG_PASSWORD), [{ level: 40, event: 'login_blocked', userId: undefined }])

  const { password_hash: hash } = await dbGet(app, 'select password_hash from users') as { password_hash: string }
  assertNoSecrets(t, log.text, [TEST_PASSWORD, WRONG_PASSWORD, session.access_token, session.refresh_token, hash, TEST_ENV.JWT_SECRET])
})

t.test('a password change is logged, refused, blocked or done, with the number of other sessions it revoked', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', RATE_LIMIT_ACCOUNT_MAX: '2' })
  const newPassword = 'a brand new passphrase 7'
  const email = uniqueEmail()
  const session = await signup(app, email)
  const login = async () => (await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).json()
  const others = [await login(), await login()]
  const change = (current: string) => () => app.inject({
    method: 'POST', url: '/auth/password', headers: bearer(session.access_token), payload: { current_password: current, new_password: newPassword }
  })
  const hashOf = async () => (await dbGet(app, 'select password_hash from users where id = ?', session.user.id))!.password_hash as string
  const oldHash = await hashOf()

  const failed = await expectEvents(t, log, change(WRONG_PASSWORD), [{ level: 30, event: 'password_change_failed', userId: session.user.id }])
  t.equal(failed.statusCode, 401)
  await change(WRONG_PASSWORD)()
  // Past the per-account limit: a stolen access token must not become a silent password oracle.
  const blocked = await expectEvents(t, log, change(TEST_PASSWORD), [{ level: 40, event: 'password_change_blocked', userId: session.user.id }])
  t.equal(blocked.statusCode, 429)
  t.equal(await hashOf(), oldHash, 'the blocked change changed nothing')
  await app.signInFailures.reset(email)
  const changed = await expectEvents(t, log, change(TEST_PASSWORD), [{ level: 30, event: 'password_changed', userId: session.user.id, revokedSessions: 2 }])
  t.equal(changed.statusCode, 204)
  t.equal(await dbCount(app, 'select count(*) from sessions where user_id = ? and revoked_at is null', session.user.id), 1, 'only the changing session is left')

  assertNoSecrets(t, log.text, [TEST_PASSWORD, WRONG_PASSWORD, newPassword, session.access_token, session.refresh_token,
    ...others.flatMap((other) => [other.access_token, other.refresh_token]), oldHash, await hashOf(), TEST_ENV.JWT_SECRET])
})

t.test('an admin\'s role change, disable and delete are logged with the user, the admin and the sessions revoked', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const login = (email: string) => app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const email = uniqueEmail()
  const target = await signup(app, email)
  const second = (await login(email)).json()
  const url = `/admin/users/${target.user.id}`
  const patch = (payload: Record<string, unknown>) => () => app.inject({ method: 'PATCH', url, headers: bearer(admin.access_token), payload })
  const audit = { level: 30, userId: target.user.id, adminId: admin.user.id }
  const hashes = (await dbAll(app, 'select password_hash from users')).map((row) => row.password_hash as string)

  await expectEvents(t, log, patch({ roles: ['member'] }), [
    { ...audit, event: 'role_change', roles: ['user', 'member'] },
    { ...audit, event: 'session_revoked', count: 2, reason: 'admin_change' }
  ])
  const third = (await login(email)).json()
  await expectEvents(t, log, patch({ disabled: true }), [
    { ...audit, event: 'user_disabled' },
    { ...audit, event: 'session_revoked', count: 1, reason: 'admin_change' }
  ])
  // Disabled, the user has no session left to revoke: no line for none.
  await expectEvents(t, log, patch({ roles: ['developer'], name: 'Ada' }), [{ ...audit, event: 'role_change', roles: ['user', 'developer'] }])
  await expectEvents(t, log, patch({ name: 'Ada Lovelace' }), [])
  const deleted = await expectEvents(t, log, () => app.inject({ method: 'DELETE', url, headers: bearer(admin.access_token) }), [{ ...audit, event: 'user_deleted' }])
  t.equal(deleted.statusCode, 204)

  assertNoSecrets(t, log.text, [TEST_PASSWORD, ...hashes, TEST_ENV.JWT_SECRET,
    ...[admin, target, second, third].flatMap((session) => [session.access_token, session.refresh_token])])
})

t.test('a Redis unreachable at start is logged at start, naming it without its password; the first sign-in logs nothing more', async (t) => {
  // Nothing listens on port 1: the connection is refused at once.
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'warn', REDIS_URL: 'redis://:redis-secret-pw@127.0.0.1:1/3' })
  const atStart = logLines(log.text)
  t.equal(atStart.length, 1, 'one line')
  t.match(atStart[0], { level: 50, msg: 'Redis unreachable: rate limits fall back to per-instance memory', redis: 'redis://127.0.0.1:1/3', err: { message: /ECONNREFUSED 127\.0\.0\.1:1/ } })
  const session = await signup(app)
  const signIn = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: TEST_PASSWORD } })
  t.equal(signIn.statusCode, 200)
  t.same(logLines(log.text).filter((line) => line.level >= 40), atStart, 'the sign-in adds no line: the outage is known')
  assertNoSecrets(t, log.text, ['redis-secret-pw'])
})

t.test('the admin made from ADMIN_EMAIL at start-up is logged once, with no request', async (t) => {
  const adminPassword = 'an uncommon admin passphrase'
  const database = await testDatabase(`file:${join(t.testdir(), 'gatehouse.db')}`)
  const env = { LOG_LEVEL: 'info', DATABASE_URL: database, ADMIN_EMAIL: 'Boss@Example.com', ADMIN_PASSWORD: adminPassword }
  const first = await appWithLog(t, env)
  const admin = await dbGet(first.app, 'select id, password_hash from users where email = ?', 'boss@example.com') as { id: string, password_hash: string }
  assertEvents(t, logLines(first.log.text), [{ level: 30, event: 'admin_bootstrapped', userId: admin.id, reqId: undefined }], 'logged at the first start')
  assertNoSecrets(t, first.log.text, [adminPassword, admin.password_hash, TEST_ENV.JWT_SECRET])
  await first.app.close()

  const restarted = await appWithLog(t, env)
  assertEvents(t, logLines(restarted.log.text), [{ level: 30, event: 'admin_bootstrap_skipped', reqId: undefined }], 'a restart finds the admin and says so')
  t.same(logLines(restarted.log.text).filter((line) => line.level >= 40), [], 'with no warning')
})

t.test('ADMIN_EMAIL of an existing account is not promoted, and the operator is warned', async (t) => {
  const adminPassword = 'an uncommon admin passphrase'
  const database = await testDatabase(`file:${join(t.testdir(), 'gatehouse.db')}`)
  const before = await appWithLog(t, { DATABASE_URL: database })
  const email = uniqueEmail('taken')
  const squatter = await signup(before.app, email)
  await before.app.close()

  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', DATABASE_URL: database, ADMIN_EMAIL: email.toUpperCase(), ADMIN_PASSWORD: adminPassword })
  const lines = logLines(log.text)
  const warnings = lines.filter((line) => line.level >= 40)
  t.equal(warnings.length, 1, 'one warning')
  // At start-up, so no request id (undefined: absent).
  t.match(warnings[0], { level: 40, msg: /^ADMIN_EMAIL belongs to an existing account, which is not promoted/, reqId: undefined })
  assertEvents(t, lines, [], 'no admin_bootstrapped')
  const row = await dbGet(app, 'select roles, password_hash from users where id = ?', squatter.user.id) as { roles: string, password_hash: string }
  t.same(JSON.parse(row.roles), ['user'], 'not promoted')
  t.equal(await app.usersRepository.hasEnabledAdmin(), false, 'and no admin made')
  assertNoSecrets(t, log.text, [adminPassword, TEST_PASSWORD, row.password_hash, TEST_ENV.JWT_SECRET])
})

t.test('a URL the router refuses is answered in the contract\'s shape and logged as completed', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const cases: Array<[string, string, string]> = [
    ['/videos/%zz', 'invalid_request', 'The URL cannot be decoded.'],
    ['/admin/users/%E0%A4%A', 'invalid_request', 'The URL cannot be decoded.'],
    // In the query too, where the parser would keep the escape as three characters to search for.
    ['/admin/users?email=%FF', 'invalid_request', 'The URL cannot be decoded.'],
    ['/auth/me?x=1&y=a%zz', 'invalid_request', 'The URL cannot be decoded.']
  ]
  for (const [url, code, message] of cases) {
    const response = await app.inject({ url })
    t.equal(response.statusCode, 400, url)
    t.same(response.json(), { statusCode: 400, error: 'Bad Request', message, code }, url)
    t.equal(response.headers['x-content-type-options'], 'nosniff', `${url}: the API's headers`)
    t.equal(response.headers['cache-control'], 'no-store', `${url}: the route is not known, so no cache keeps it`)
  }
  // Escapes that decode (UTF-8 é, a space) are served as ever.
  t.equal((await app.inject({ url: '/health?x=%C3%A9+%20' })).statusCode, 200)
  const lines = logLines(log.text)
  for (const [url] of cases.slice(0, 2)) {
    const incoming = lines.find((line) => line.msg === 'incoming request' && line.req.url === url)
    t.ok(incoming, `${url} is logged as incoming`)
    const completed = lines.find((line) => line.msg === 'request completed' && line.reqId === incoming?.reqId)
    t.equal(completed?.res.statusCode, 400, `${url} is logged as completed, with its status`)
  }
})

t.test('a client that drops an upload is not logged as a server error, whatever the body\'s type or framing', async (t) => {
  // On PostgreSQL too: the socket's ECONNRESET is the client's, not the database's.
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const framings = ['Transfer-Encoding: chunked\r\n\r\n', 'Content-Length: 50\r\n\r\n{"refresh_'] as const
  for (const type of ['application/json', 'text/plain']) {
    for (const framing of framings) {
      const socket = connect(port, '127.0.0.1')
      socket.write(`POST /auth/refresh HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\n${framing}`)
      await sleep(100)
      socket.destroy()
    }
  }
  await sleep(200)
  const lines = logLines(log.text)
  t.equal(lines.filter((line) => line.msg === 'incoming request' && line.req.url === '/auth/refresh').length, 4, 'all arrived')
  t.same(lines.filter((line) => line.level >= 50), [], 'no error line')
})

t.test('with TRUST_PROXY=true, a forwarded address of any length is logged at an address\'s length', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', TRUST_PROXY: 'true' })
  await app.inject({ url: '/health', headers: { 'x-forwarded-for': 'b'.repeat(8_000) } })
  const incoming = logLines(log.text).find((line) => line.msg === 'incoming request')
  t.equal(incoming?.req.remoteAddress, 'b'.repeat(45))
})

t.test('sign-ins whose clients left while they queued for a hash are not hashed, nor counted', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info', RATE_LIMIT_IP_MAX: '1000', RATE_LIMIT_ACCOUNT_MAX: '3' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  // Every hash slot busy with a slow but valid hash (a stronger one is kept, not upgraded).
  const slow = await Promise.all(Array.from({ length: HASH_SLOTS }, async () => {
    const { user } = await signup(app)
    await dbRun(app, 'update users set password_hash = ? where id = ?', await hash(TEST_PASSWORD, { ...HASH_OPTIONS, timeCost: 150 }), user.id)
    return user
  }))
  const slowSignIns = slow.map((user) => app.inject({ method: 'POST', url: '/auth/login', payload: { email: user.email, password: TEST_PASSWORD } }))
  // Three for one account, its whole per-account allowance, with the right password; the rest unknown.
  const { user: victim } = await signup(app)
  const body = (index: number) => JSON.stringify({ email: index < 3 ? victim.email : `gone-${index}@example.com`, password: TEST_PASSWORD })
  const sockets = Array.from({ length: 10 }, (_, index) => {
    const socket = connect(port, '127.0.0.1')
    socket.write(`POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body(index).length}\r\n\r\n${body(index)}`)
    return socket
  })
  const lines = () => logLines(log.text)
  const arrived = () => lines().filter((line) => line.msg === 'incoming request' && line.req.url === '/auth/login').length
  for (let tries = 0; tries < 100 && arrived() < HASH_SLOTS + 10; tries++) await sleep(10)
  await sleep(50)
  for (const socket of sockets) socket.destroy()
  t.same((await Promise.all(slowSignIns)).map((response) => response.statusCode), slow.map(() => 200), 'the sign-ins holding the slots')
  // Queued after the dropped ones (the queue is first come, first served): once it is answered, each had its turn.
  const after = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: 'after@example.com', password: TEST_PASSWORD } })
  t.equal(after.statusCode, 401)
  const victimSignIn = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: victim.email, password: TEST_PASSWORD } })
  t.equal(victimSignIn.statusCode, 200, 'the dropped attempts were taken back: the account is not locked')
  t.same(lines().filter((line) => line.event === 'login_failed').map((line) => line.reason), ['unknown_email'],
    'only the sign-in still waiting was checked')
  t.same(lines().filter((line) => line.level >= 50), [], 'no error line')
})

t.test('a refresh token superseded by a grace-window retry is refused with its own warning, and the session revoked', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'warn' })
  const refresh = (token: string) => app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })

  const session = await signup(app)
  const first = (await refresh(session.refresh_token)).json()
  const retry = (await refresh(session.refresh_token)).json()
  t.ok(retry.refresh_token, 'the retry within the window gets a new pair')
  const superseded = await refresh(first.refresh_token)
  t.equal(superseded.statusCode, 401)
  t.equal(superseded.json().code, 'invalid_refresh_token')
  const lines = logLines(log.text)
  t.match(lines, [{ level: 40, event: 'refresh_token_superseded', userId: session.user.id, sessionId: tokenPayload(session.access_token).sid }])
  t.notOk(lines.some((line) => line.event === 'refresh_token_reuse'), 'told apart from plain reuse')
  t.equal((await refresh(retry.refresh_token)).statusCode, 401, 'the session is over, for the retry\'s holder too')
})

t.test('secret fields are censored wherever they sit in a log object, and the logged objects stay intact', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const logged = {
    password: 'secret-top-level',
    body: { refresh_token: 'secret-in-body', email: 'kept@example.com' },
    input: { user: { passwordHash: 'secret-deep' } },
    sessions: [{ access_token: 'secret-in-array' }],
    headers: { authorization: 'Bearer secret-header', cookie: 'sid=secret-cookie' },
    form: { client_secret: 'secret-client', token: 'secret-token' },
    change: { current_password: 'secret-current', new_password: 'secret-new', password_hash: 'secret-column' },
    camel: { refreshToken: 'secret-camel', newPassword: 'secret-camel-new', tokenHash: 'secret-hash', Secret: 'secret-cased' },
    deep: { a: { b: { c: { d: { e: { f: { g: { h: { credentials: 'secret-too-deep' } } } } } } } } }
  }
  const before = JSON.stringify(logged)
  app.log.info(logged, 'careless line')
  const line = JSON.parse(log.text.trim().split('\n').find((entry) => entry.includes('careless line'))!)
  t.equal(line.password, '[redacted]')
  t.equal(line.body.refresh_token, '[redacted]')
  t.equal(line.body.email, 'kept@example.com', 'other fields stay')
  t.equal(line.input.user.passwordHash, '[redacted]', 'two levels down')
  t.equal(line.sessions[0].access_token, '[redacted]', 'inside an array')
  t.equal(line.headers.authorization, '[redacted]')
  t.equal(line.headers.cookie, '[redacted]')
  t.same(line.form, { client_secret: '[redacted]', token: '[redacted]' })
  t.same(line.change, { current_password: '[redacted]', new_password: '[redacted]', password_hash: '[redacted]' })
  t.same(line.camel, { refreshToken: '[redacted]', newPassword: '[redacted]', tokenHash: '[redacted]', Secret: '[redacted]' }, 'whatever the case and separators')
  t.equal(line.deep.a.b.c.d.e.f.g.h, '[redacted]', 'deeper than it reads: censored whole')
  t.notMatch(log.text, /secret-/)
  t.equal(JSON.stringify(logged), before, 'the caller\'s object is not changed')
})

t.test('on PostgreSQL a failed insert is logged without its parameters', {
  skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}`
}, async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'error', DATABASE_URL: await freshPostgresUrl(POSTGRES_URL) })
  // Stands in for any failure of the statement: a timeout, a dropped connection, a full disk.
  await app.database.query("create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused by test'; end $$")
  await app.database.query('create trigger refuse before insert on users for each row execute function refuse()')
  const email = uniqueEmail()
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD, name: 'Ada Lovelace' } })
  t.equal(response.statusCode, 500)
  t.match(log.text, /refused by test/, 'the failure is logged')
  t.match(log.text, /params: \[redacted\]/)
  t.notMatch(log.text, '$argon2', 'without the password hash')
  t.notMatch(log.text, email, 'or the email')
  t.notMatch(log.text, 'Lovelace', 'or the name')
})

t.test('a failed query is logged without its parameters', async (t) => {
  // node-postgres errors arrive wrapped by Drizzle, their message listing the query's parameters.
  const failure = new Error('Failed query: insert into "users" values ($1, $2)\nparams: ada@example.com,$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA',
    { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) })
  const logged = serializeError(failure)
  t.equal(logged.message, 'Failed query: insert into "users" values ($1, $2)\nparams: [redacted]')
  t.notMatch(logged.stack, '$argon2')
  t.notMatch(logged.stack, 'ada@example.com')
  t.match(logged.cause, { type: 'Error', message: 'read ECONNRESET', code: 'ECONNRESET' }, 'with its cause: an outage, not a bug')

  // Parameters run to the end of the message, and a name may hold a newline.
  const multiline = serializeError(new Error('Failed query: insert into "users" values ($1, $2, $3)\nparams: ada@example.com,Ada\nLovelace,$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA'))
  t.equal(multiline.message, 'Failed query: insert into "users" values ($1, $2, $3)\nparams: [redacted]')
  t.notMatch(multiline.stack, /argon2|ada@|Lovelace/, 'nothing of the parameters in the stack')
  t.match(multiline.stack, /^Error: Failed query: insert into "users" values \(\$1, \$2, \$3\)\nparams: \[redacted\]\n\s+at /, 'whose frames are kept')
  t.equal(startupProblem(new Error('Failed query: x\nparams: a\nb,$argon2id$')), 'Failed query: x')
  // With its cause, a failed query at start (a migration's) says why the database refused it.
  t.equal(startupProblem(new Error('Failed query: create table "notes" (…)\nparams: ', { cause: new Error('permission denied for schema public') })),
    'permission denied for schema public')

  // A message shortened after the stack was formed: the stack still holds the parameters.
  const shortened = new Error('Failed query: insert into "users" values ($1)\nparams: $argon2id$v=19$c2FsdA$aGFzaA')
  t.match(shortened.stack, 'params: $argon2id', 'V8 formed the stack')
  shortened.message = 'Failed query: insert into "users" values ($1)'
  t.notMatch(serializeError(shortened).stack, 'argon2', 'nor in a stack whose message was shortened')

  // And a real failure on the way to the database is logged, and answered with nothing inside
  // (SQLite's: its trigger syntax and closed-connection error; PostgreSQL's is the next test's).
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'error', DATABASE_URL: TEST_ENV.DATABASE_URL })
  await app.database.query("create trigger refuse before insert on users begin select raise(abort, 'refused by test'); end")
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD } })
  t.equal(response.statusCode, 500)
  t.same(response.json(), { statusCode: 500, error: 'Internal Server Error', message: 'Something went wrong on our side.', code: 'internal_error' })
  t.match(log.text, /refused by test/, 'the failure is logged')
  t.notMatch(log.text, '$argon2', 'without the password hash it tried to store')

  log.text = ''
  await app.database.close()
  t.equal((await app.inject({ url: '/health' })).statusCode, 503)
  const lines = logLines(log.text)
  t.same(lines.map((line) => line.msg), ['database health check failed'], 'one line for one failed health check')
  t.match(lines[0]?.err, { type: 'TypeError', message: /database connection is not open/ })
})

t.test('a token request that fails on our side is logged at error, with its cause', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'error' })
  const email = uniqueEmail()
  await signup(app, email)
  Object.assign(app.usersRepository, { findCredentialsByEmail: async () => { throw new Error('credentials lookup broke') } })
  const response = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: email, password: TEST_PASSWORD } })
  t.equal(response.statusCode, 500)
  t.equal(response.json().error, 'server_error')
  const failed = logLines(log.text).filter((line) => line.msg === 'token request failed')
  t.equal(failed.length, 1, 'one error line')
  t.match(failed[0], { level: 50, err: { message: 'credentials lookup broke' } })
  t.ok(failed[0]?.reqId, 'naming the request')
})

t.test('a sign-in past the open-session cap logs the one session it revoked', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const first = await signup(app)
  const now = Date.now()
  for (let index = 1; index < MAX_OPEN_SESSIONS; index++) await insertSession(app, first.user.id, { lastUsedAt: now - index * 60_000 })
  log.text = ''
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: first.user.email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  const revoked = logLines(log.text).filter((line) => line.event === 'session_revoked')
  t.equal(revoked.length, 1, 'one line')
  t.match(revoked[0], { level: 30, userId: first.user.id, count: 1, reason: 'session_limit' })
})

t.test('a logout with a refresh token logs the session it revoked; an unknown token logs none', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const session = await signup(app)
  log.text = ''
  const unknown = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: 'not-a-token-we-issued' } })
  t.equal(unknown.statusCode, 204)
  t.same(logLines(log.text).filter((line) => line.event === 'session_revoked'), [], 'nothing was revoked')
  const logout = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: session.refresh_token } })
  t.equal(logout.statusCode, 204)
  const revoked = logLines(log.text).filter((line) => line.event === 'session_revoked')
  t.equal(revoked.length, 1, 'one line')
  t.match(revoked[0], { level: 30, userId: session.user.id, sessionId: tokenPayload(session.access_token).sid, reason: 'logout', reqId: REQUEST_ID })
})

t.test('a session revoked from the sessions list is logged with its id', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  const email = uniqueEmail()
  const current = await signup(app, email)
  const other = (await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).json()
  const otherId = tokenPayload(other.access_token).sid
  log.text = ''
  t.equal((await app.inject({ method: 'DELETE', url: `/auth/sessions/${otherId}`, headers: bearer(current.access_token) })).statusCode, 204)
  const revoked = logLines(log.text).filter((line) => line.event === 'session_revoked')
  t.equal(revoked.length, 1, 'one line')
  t.match(revoked[0], { level: 30, userId: current.user.id, sessionId: otherId, reason: 'user', reqId: REQUEST_ID })
})

t.test('request ids are unique across instances and restarts, not a count each process starts again', async (t) => {
  // Two instances of one database (SQLite in memory: each its own).
  const database = await testDatabase()
  const first = await appWithLog(t, { LOG_LEVEL: 'info', DATABASE_URL: database })
  const second = await appWithLog(t, { LOG_LEVEL: 'info', DATABASE_URL: database })
  const ids: unknown[] = []
  for (const { app, log } of [first, second, first]) {
    const from = log.text.length
    t.equal((await app.inject({ url: '/health' })).statusCode, 200)
    ids.push(logLines(log.text.slice(from)).find((line) => line.msg === 'incoming request')?.reqId)
  }
  for (const id of ids) t.match(id, REQUEST_ID)
  t.equal(new Set(ids).size, 3, 'each request its own id, in either instance')
})
