import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import type { App } from '../src/app.ts'
import { MAX_OPEN_SESSIONS } from '../src/repositories/sessions.ts'
import { TEST_DATABASE_URL, TEST_PASSWORD, type SessionBody, bearer, build, dbAll, dbCount, dbGet, dbRun, freshPostgresUrl, insertSession, signup, tokenPayload, uniqueEmail, refuseSessionUpdates } from './helper.ts'

const login = async (app: App, email: string, password = TEST_PASSWORD, userAgent = 'test-agent'): Promise<SessionBody> => {
  const response = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password }, headers: { 'user-agent': userAgent } })
  if (response.statusCode !== 200) throw new Error(`login failed: ${response.body}`)
  return response.json()
}
const refreshStatus = async (app: App, token: string) =>
  (await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })).statusCode
const meStatus = async (app: App, token: string) => (await app.inject({ url: '/auth/me', headers: bearer(token) })).statusCode
const sidOf = (session: SessionBody) => tokenPayload(session.access_token).sid as string
const revokedAt = async (app: App, sessionId: string) => (await dbGet(app, 'select revoked_at from sessions where id = ?', sessionId))!.revoked_at

t.test('GET /auth/sessions lists the active sessions and marks the current one', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const phone = await login(app, email, TEST_PASSWORD, 'Phone/1.0')
  const laptop = await login(app, email, TEST_PASSWORD, 'Laptop/2.0')

  const response = await app.inject({ url: '/auth/sessions', headers: bearer(phone.access_token) })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['cache-control'], 'no-store')
  const sessions = response.json() as Array<Record<string, unknown>>
  t.equal(sessions.length, 3)
  t.same(Object.keys(sessions[0]!).sort(), ['created_at', 'current', 'id', 'ip', 'last_used_at', 'user_agent'])
  const current = sessions.filter((session) => session.current)
  t.equal(current.length, 1)
  t.equal(current[0]!.id, tokenPayload(phone.access_token).sid)
  t.equal(current[0]!.user_agent, 'Phone/1.0')
  t.equal(current[0]!.ip, '127.0.0.1')
  t.ok(sessions.some((session) => session.id === tokenPayload(laptop.access_token).sid))

  await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(laptop.access_token) })
  const after = (await app.inject({ url: '/auth/sessions', headers: bearer(phone.access_token) })).json()
  t.equal(after.length, 2, 'revoked sessions are not listed')
})

t.test(`a user keeps at most ${MAX_OPEN_SESSIONS} open sessions: a new one revokes the least recently used`, async (t) => {
  const app = await build(t)
  const first = await signup(app)
  const userId = first.user.id
  const now = Date.now()
  // The rest of the allowance, each used a minute before the last; the oldest is `${MAX_OPEN_SESSIONS - 1}`.
  for (let index = 1; index < MAX_OPEN_SESSIONS; index++) await insertSession(app, userId, { lastUsedAt: now - index * 60_000 }, `agent-${index}`)
  const other = await signup(app)
  const listed = async (session: SessionBody) => (await app.inject({ url: '/auth/sessions', headers: bearer(session.access_token) })).json()
  t.equal((await listed(first)).length, MAX_OPEN_SESSIONS, 'at the limit, nothing is revoked')

  const newest = await login(app, first.user.email)
  const sessions = await listed(newest)
  t.equal(sessions.length, MAX_OPEN_SESSIONS)
  t.notOk(sessions.some((session: { user_agent: string }) => session.user_agent === `agent-${MAX_OPEN_SESSIONS - 1}`), 'the least recently used is gone')
  t.ok(sessions.some((session: { id: string }) => session.id === tokenPayload(first.access_token).sid), 'the signup\'s, used most recently before, is kept')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is not null', userId), 1, 'revoked, one')
  t.equal((await listed(other)).length, 1, 'another user\'s sessions are their own')
})

t.test('the session a sign-in opens is never the one the cap revokes, and expired sessions take no place', async (t) => {
  const app = await build(t)
  const { user } = await signup(app)
  const now = Date.now()
  const insert = (lastUsedAt: number, expiresAt: number, agent: string) => insertSession(app, user.id, { lastUsedAt, expiresAt }, agent)
  // Used later than the sign-in's clock reads (another instance's clock, a sign-in that waited for the lock).
  for (let index = 0; index < MAX_OPEN_SESSIONS; index++) await insert(now + 5_000, now + 86_400_000, 'ahead')
  for (let index = 0; index < 5; index++) await insert(now - 7_200_000, now - 3_600_000, 'expired')

  const newest = await login(app, user.email)
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(newest.access_token) })).statusCode, 200, 'the new session works')
  t.equal((await refreshStatus(app, newest.refresh_token)), 200, 'and refreshes')
  const open = await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null and expires_at > ?', user.id, new Date())
  t.equal(open, MAX_OPEN_SESSIONS, 'the cap holds')
  t.equal(await dbCount(app, "select count(*) as n from sessions where user_id = ? and revoked_at is not null and user_agent = 'expired'", user.id), 0,
    'expired sessions were not counted, nor revoked')
})

t.test('revoked sessions take no place under the cap, even the most recently used', async (t) => {
  const app = await build(t)
  const first = await signup(app)
  const userId = first.user.id
  const now = Date.now()
  const insert = (lastUsedAt: number, revokedAt: Date | null, agent: string) => insertSession(app, userId, { lastUsedAt, revokedAt }, agent)
  // One short of the cap with the signup's, and five revoked sessions used after all of them.
  for (let index = 2; index < MAX_OPEN_SESSIONS; index++) await insert(now - index * 60_000, null, 'live')
  const revokedAtFirst = new Date(now - 30_000)
  for (let index = 0; index < 5; index++) await insert(now + 5_000, revokedAtFirst, 'revoked')
  const live = () => dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', userId)
  t.equal(await live(), MAX_OPEN_SESSIONS - 1)

  await login(app, first.user.email)
  t.equal(await live(), MAX_OPEN_SESSIONS, 'the new session fills the last place: nothing is revoked')
  t.equal(await dbCount(app, "select count(*) as n from sessions where user_id = ? and user_agent = 'live' and revoked_at is null", userId), MAX_OPEN_SESSIONS - 2)
  t.equal(await dbCount(app, "select count(*) as n from sessions where user_id = ? and user_agent = 'revoked' and revoked_at = ?", userId, revokedAtFirst), 5,
    'the revoked ones keep their revocation time')
})

t.test('sessions past SESSION_MAX_AGE take no place under the cap either', async (t) => {
  const app = await build(t, { SESSION_MAX_AGE: String(2 * 86_400) })
  const first = await signup(app)
  const userId = first.user.id
  const now = Date.now()
  // One short of the cap with the signup's (signed in a day ago), and five used after all of them
  // but signed in three days ago: ended by the maximum age, as a lowered SESSION_MAX_AGE leaves them.
  for (let index = 2; index < MAX_OPEN_SESSIONS; index++) await insertSession(app, userId, { lastUsedAt: now - index * 60_000 }, 'live')
  for (let index = 0; index < 5; index++) await insertSession(app, userId, { lastUsedAt: now + 5_000 }, 'aged')
  await dbRun(app, "update sessions set created_at = ? where user_agent = 'aged'", new Date(now - 3 * 86_400_000))

  await login(app, first.user.email)
  t.equal(await dbCount(app, "select count(*) as n from sessions where user_id = ? and user_agent = 'live' and revoked_at is null", userId), MAX_OPEN_SESSIONS - 2,
    'no open session was displaced by the ended ones')
  const listed = await app.inject({ url: '/auth/sessions', headers: bearer(first.access_token) })
  t.equal(listed.json().length, MAX_OPEN_SESSIONS, 'the cap\'s worth of open sessions, the new one among them')
})

// Only PostgreSQL lets a sign-in wait on a row another transaction holds; SQLite runs one writer at a time.
if (TEST_DATABASE_URL) {
  t.test('a session refreshed while the cap waits for its row keeps its place', async (t) => {
    const url = await freshPostgresUrl(TEST_DATABASE_URL!)
    const app = await build(t, { DATABASE_URL: url })
    const { user } = await signup(app)
    const now = Date.now()
    const ids: string[] = []
    // With the signup's, the cap's worth of other sessions: the next sign-in displaces the least recently used.
    for (let index = 1; index < MAX_OPEN_SESSIONS; index++) ids.push(await insertSession(app, user.id, { lastUsedAt: now - index * 60_000 }, `agent-${index}`))
    const leastRecent = ids.at(-1)!
    // A refresh of the least recently used session holds its row, as rotate() does, until it commits.
    const refresh = new pg.Client({ connectionString: url })
    await refresh.connect()
    t.teardown(() => refresh.end())
    await refresh.query('begin')
    await refresh.query('update sessions set last_used_at = $1 where id = $2', [new Date(now + 1_000), leastRecent])

    const signIn = login(app, user.email)
    const waiting = async () => (await dbGet(app, "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"))!.n
    for (let tries = 0; tries < 100 && await waiting() === 0; tries++) await sleep(20)
    t.equal(await waiting(), 1, 'the sign-in waits for the refreshed row')
    await refresh.query('commit')
    const session = await signIn

    t.equal(await revokedAt(app, leastRecent), null, 'the session refreshed meanwhile is not revoked')
    const open = () => dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', user.id)
    t.equal(await open(), MAX_OPEN_SESSIONS + 1, 'one over the cap until the next sign-in')
    t.equal(await meStatus(app, session.access_token), 200)
    await login(app, user.email)
    t.equal(await open(), MAX_OPEN_SESSIONS, 'the next sign-in brings it back to the cap')
    const revoked = await dbAll(app, 'select user_agent from sessions where user_id = ? and revoked_at is not null order by user_agent', user.id)
    t.same(revoked, [{ user_agent: `agent-${MAX_OPEN_SESSIONS - 3}` }, { user_agent: `agent-${MAX_OPEN_SESSIONS - 2}` }], 'the two least recently used went, not the refreshed one')
  })
}

t.test('DELETE /auth/sessions/:id revokes own sessions only; others answer 404', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const first = await signup(app, email)
  const second = await login(app, email)
  const stranger = await signup(app)

  const foreign = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(stranger.access_token).sid}`, headers: bearer(first.access_token) })
  t.equal(foreign.statusCode, 404, 'another user\'s session is not found, never forbidden')
  t.equal(foreign.json().code, 'not_found')
  t.equal(await refreshStatus(app, stranger.refresh_token), 200, 'and it was not revoked')

  const unknown = await app.inject({ method: 'DELETE', url: '/auth/sessions/00000000-0000-4000-8000-000000000000', headers: bearer(first.access_token) })
  t.equal(unknown.statusCode, 404)
  const malformed = await app.inject({ method: 'DELETE', url: '/auth/sessions/not-a-uuid', headers: bearer(first.access_token) })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'validation_error')

  const withBody = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(second.access_token).sid}`, headers: bearer(first.access_token), payload: { all: true } })
  t.equal(withBody.statusCode, 400, 'a body the route does not take is refused')
  t.equal(withBody.json().message, 'body/all is not allowed')
  t.equal(await meStatus(app, second.access_token), 200, 'and the session was not revoked')

  const own = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(second.access_token).sid}`, headers: bearer(first.access_token) })
  t.equal(own.statusCode, 204)
  t.equal(await refreshStatus(app, second.refresh_token), 401)
  t.equal(await meStatus(app, second.access_token), 401)
  t.equal(await meStatus(app, first.access_token), 200)

  const again = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(second.access_token).sid}`, headers: bearer(first.access_token) })
  t.equal(again.statusCode, 404, 'an already revoked session is gone')

  const anonymous = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(first.access_token).sid}` })
  t.equal(anonymous.statusCode, 401)
})

t.test('a session that has ended (expired, or past SESSION_MAX_AGE) is not found by DELETE, as it is not listed; a global logout still revokes it', async (t) => {
  // Sessions of insertSession start a day ago: past a 12-hour maximum age.
  for (const [label, env, times] of [
    ['expired', {}, { expiresAt: Date.now() - 1000 }],
    ['past SESSION_MAX_AGE', { SESSION_MAX_AGE: '12h' }, {}]
  ] as const) {
    const app = await build(t, env)
    const current = await signup(app)
    const ended = await insertSession(app, current.user.id, times)
    t.same((await app.inject({ url: '/auth/sessions', headers: bearer(current.access_token) })).json().map((session: { id: string }) => session.id),
      [tokenPayload(current.access_token).sid], `${label}: not listed`)
    const deleted = await app.inject({ method: 'DELETE', url: `/auth/sessions/${ended}`, headers: bearer(current.access_token) })
    t.equal(deleted.statusCode, 404, `${label}: DELETE finds none`)
    t.equal(deleted.json().code, 'not_found')
    const another = await insertSession(app, current.user.id, times)
    const global = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(current.access_token), payload: { scope: 'global' } })
    t.equal(global.statusCode, 204)
    t.ok((await dbGet(app, 'select revoked_at from sessions where id = ?', another))!.revoked_at, `${label}: the other ended session too`)
    // Else a SESSION_MAX_AGE raised or unset later would let the ended session's refresh token work again.
    t.equal(await dbCount(app, 'select count(*) as n from sessions where revoked_at is null'), 0, `${label}: a global logout revokes it too`)
  }
})

t.test('an ended session\'s still-valid access token gets nothing from the account routes', async (t) => {
  const app = await build(t)
  const refusedEverywhere = async (t: Test, token: string, other: SessionBody, name: string | null) => {
    const renamed = await app.inject({ method: 'PATCH', url: '/auth/me', headers: bearer(token), payload: { name: 'Mallory' } })
    t.equal(renamed.statusCode, 401, 'PATCH /auth/me')
    t.equal(renamed.json().code, 'invalid_token')
    t.equal((await dbGet(app, 'select name from users where id = ?', other.user.id))!.name, name, 'the name is unchanged')
    const listed = await app.inject({ url: '/auth/sessions', headers: bearer(token) })
    t.equal(listed.statusCode, 401, 'GET /auth/sessions')
    t.equal(listed.json().code, 'invalid_token')
    const deleted = await app.inject({ method: 'DELETE', url: `/auth/sessions/${sidOf(other)}`, headers: bearer(token) })
    t.equal(deleted.statusCode, 401, 'DELETE /auth/sessions/:id')
    t.equal(deleted.json().code, 'invalid_token')
    const loggedOut = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(token), payload: { scope: 'global' } })
    t.equal(loggedOut.statusCode, 401, 'POST /auth/logout with the bearer token')
    t.equal(loggedOut.json().code, 'invalid_token')
    t.equal(await revokedAt(app, sidOf(other)), null, 'the other session is still open')
  }

  await t.test('signed out', async (t) => {
    const email = uniqueEmail()
    const signedOut = await signup(app, email)
    const other = await login(app, email)
    const logout = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: signedOut.refresh_token } })
    t.equal(logout.statusCode, 204)
    await refusedEverywhere(t, signedOut.access_token, other, null)
    t.equal(await meStatus(app, other.access_token), 200, 'and works')
  })

  await t.test('disabled', async (t) => {
    const email = uniqueEmail()
    const disabled = await signup(app, email)
    const other = await login(app, email)
    await dbRun(app, 'update users set disabled = ? where id = ?', true, disabled.user.id)
    await refusedEverywhere(t, disabled.access_token, other, null)
  })
})

t.test('global logout kills every session of the user and no one else\'s', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const sessions = [await signup(app, email), await login(app, email), await login(app, email)]
  const other = await signup(app)

  const response = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(sessions[0]!.access_token), payload: { scope: 'global' } })
  t.equal(response.statusCode, 204)
  for (const session of sessions) {
    t.equal(await refreshStatus(app, session.refresh_token), 401)
    t.equal(await meStatus(app, session.access_token), 401)
  }
  t.equal(await meStatus(app, other.access_token), 200)
})

t.test('local logout ends only this session', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const first = await signup(app, email)
  const second = await login(app, email)
  const response = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(first.access_token), payload: { scope: 'local' } })
  t.equal(response.statusCode, 204)
  t.equal(await refreshStatus(app, first.refresh_token), 401)
  t.equal(await refreshStatus(app, second.refresh_token), 200)
})

t.test('logout with a refresh token needs no access token', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const response = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: session.refresh_token } })
  t.equal(response.statusCode, 204)
  t.equal(response.headers['cache-control'], 'no-store')
  t.equal(await refreshStatus(app, session.refresh_token), 401)
  t.equal(await meStatus(app, session.access_token), 401)

  const unknown = await app.inject({ method: 'POST', url: '/auth/logout', payload: { refresh_token: 'never-issued' } })
  t.equal(unknown.statusCode, 204, 'an unknown token also answers 204')
})

t.test('logout failure paths', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const anonymous = await app.inject({ method: 'POST', url: '/auth/logout' })
  t.equal(anonymous.statusCode, 401)
  t.equal(anonymous.json().code, 'missing_token')
  t.equal(anonymous.headers['www-authenticate'], 'Bearer realm="gatehouse"')
  const badScope = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(session.access_token), payload: { scope: 'everything' } })
  t.equal(badScope.statusCode, 400)
  t.equal(badScope.json().code, 'validation_error')
  const both = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(session.access_token), payload: { scope: 'global', refresh_token: session.refresh_token } })
  t.equal(both.statusCode, 400, 'scope and refresh_token together are ambiguous')
  t.equal(both.json().code, 'validation_error')
  // JSON null is a body, and not the object the schema asks for; it is not "no body".
  const nullBody = await app.inject({ method: 'POST', url: '/auth/logout', headers: { ...bearer(session.access_token), 'content-type': 'application/json' }, payload: 'null' })
  t.equal(nullBody.statusCode, 400, nullBody.body)
  t.equal(nullBody.json().code, 'validation_error')
  t.equal(await meStatus(app, session.access_token), 200, 'a refused logout changes nothing')
})

t.test('an empty request with a JSON Content-Type is a bodiless call, as fetch() clients send them', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const [first, second, third, fourth] = [await login(app, email), await login(app, email), await login(app, email), await login(app, email)]
  const json = (token: string) => ({ ...bearer(token), 'content-type': 'application/json' })

  // Content-Length: 0, no Content-Length at all, and an empty chunked body: nothing in any (RFC 9112 §6.3).
  const deleted = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(second.access_token).sid}`, headers: json(first.access_token), payload: '' })
  t.equal(deleted.statusCode, 204, deleted.body)
  t.equal(await meStatus(app, second.access_token), 401, 'that session ended')
  const loggedOut = await app.inject({ method: 'POST', url: '/auth/logout', headers: json(third.access_token) })
  t.equal(loggedOut.statusCode, 204, loggedOut.body)
  t.equal(await meStatus(app, third.access_token), 401, 'logged out')
  const chunked = await app.inject({ method: 'POST', url: '/auth/logout', headers: { ...json(fourth.access_token), 'transfer-encoding': 'chunked' }, payload: Readable.from([]) })
  t.equal(chunked.statusCode, 204, chunked.body)
  t.equal(await meStatus(app, fourth.access_token), 401, 'logged out by an empty chunked request')

  const anonymous = await app.inject({ method: 'POST', url: '/auth/logout', headers: { 'content-type': 'application/json' }, payload: '' })
  t.equal(anonymous.statusCode, 401, 'still needs a bearer token or a refresh token')
  t.equal(anonymous.json().code, 'missing_token')
  const signupWithoutBody = await app.inject({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: '' })
  t.equal(signupWithoutBody.statusCode, 400, 'a route that needs a body still refuses the empty one')
  t.equal(signupWithoutBody.json().code, 'invalid_body')
  t.equal(await meStatus(app, first.access_token), 200)
})

t.test('a Content-Length of 00 is no body, whatever Content-Type it names: no 415 for a bodiless call', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const [first, second] = [await login(app, email), await login(app, email)]
  // Node keeps the header as sent; Fastify reads `00` as an empty body, and so must the 415 check.
  const deleted = await app.inject({
    method: 'DELETE',
    url: `/auth/sessions/${sidOf(second)}`,
    headers: { ...bearer(first.access_token), 'content-type': 'text/plain', 'content-length': '00' }
  })
  t.equal(deleted.statusCode, 204, deleted.body)
  t.equal(await meStatus(app, second.access_token), 401, 'that session ended')
  t.equal(await meStatus(app, first.access_token), 200)
})

t.test('an empty request to a route that needs a body is invalid_body, whatever Content-Type it names', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  // Content-Length: 0, or an empty chunked body (a stream: light-my-request then sends no Content-Length).
  const framings = [
    { name: 'Content-Length: 0', headers: {}, payload: () => '' },
    // Node keeps the header as sent; a length of 00 is still 0.
    { name: 'Content-Length: 00', headers: { 'content-length': '00' }, payload: () => undefined },
    { name: 'chunked', headers: { 'transfer-encoding': 'chunked' }, payload: () => Readable.from([]) }
  ]
  for (const framing of framings) {
    for (const contentType of [undefined, 'application/json', 'text/plain', 'application/x-www-form-urlencoded']) {
      const headers = { ...framing.headers, ...contentType ? { 'content-type': contentType } : {} }
      const named = `${framing.name}, ${contentType}`
      for (const [method, url, token] of [['POST', '/auth/login', undefined], ['PATCH', '/auth/me', session.access_token]] as const) {
        const response = await app.inject({ method, url, headers: { ...headers, ...token ? bearer(token) : {} }, payload: framing.payload() })
        t.equal(response.statusCode, 400, `${method} ${url}, ${named}`)
        t.same(response.json(), { statusCode: 400, error: 'Bad Request', message: 'This endpoint needs a body.', code: 'invalid_body' }, `${method} ${url}, ${named}`)
      }
      const anonymous = await app.inject({ method: 'PATCH', url: '/auth/me', headers, payload: framing.payload() })
      t.equal(anonymous.json().code, 'missing_token', `${named}: who asks is answered first`)
      const token = await app.inject({ method: 'POST', url: '/auth/token', headers, payload: framing.payload() })
      t.equal(token.statusCode, 400, `token endpoint, ${named}`)
      t.same(token.json(), { error: 'invalid_request', error_description: 'This endpoint needs a body.' }, `token endpoint, ${named}`)
    }
  }
  // Answered from the type alone, before the body is read: a large one is not 413.
  const otherTypes = [['text/plain', 'hi'], [undefined, Readable.from(['hi'])], ['application/xml', '<a/>'], ['text/plain', 'x'.repeat(20_000)]] as const
  for (const [contentType, payload] of otherTypes) {
    const response = await app.inject({ method: 'POST', url: '/auth/login', headers: contentType ? { 'content-type': contentType } : { 'transfer-encoding': 'chunked' }, payload })
    t.equal(response.statusCode, 415, `a body of type ${contentType} is still 415`)
    t.equal(response.json().code, 'unsupported_media_type')
  }
})

t.test('password change needs the current password and keeps only the current session', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const current = await signup(app, email)
  const other = await login(app, email)
  const newPassword = 'a brand new passphrase'

  const wrong = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(current.access_token), payload: { current_password: 'not my password', new_password: newPassword } })
  t.equal(wrong.statusCode, 401)
  t.equal(wrong.json().code, 'invalid_credentials')
  t.equal(await refreshStatus(app, other.refresh_token), 200, 'a failed change revokes nothing')
  const other2 = await login(app, email)

  const weak = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(current.access_token), payload: { current_password: TEST_PASSWORD, new_password: email.toUpperCase() } })
  t.equal(weak.statusCode, 400)
  t.equal(weak.json().code, 'weak_password')
  const short = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(current.access_token), payload: { current_password: TEST_PASSWORD, new_password: 'short' } })
  t.equal(short.json().code, 'validation_error')

  const changed = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(current.access_token), payload: { current_password: TEST_PASSWORD, new_password: newPassword } })
  t.equal(changed.statusCode, 204)
  t.equal(await refreshStatus(app, other2.refresh_token), 401, 'other sessions are revoked')
  t.equal(await meStatus(app, current.access_token), 200, 'the current session stays')
  t.equal(await refreshStatus(app, current.refresh_token), 200)

  const oldPassword = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(oldPassword.statusCode, 401)
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: newPassword } })).statusCode, 200)
})

t.test('a password change revokes no other user\'s sessions', async (t) => {
  const app = await build(t)
  const changer = await signup(app)
  const bystander = await signup(app)
  const changed = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(changer.access_token), payload: { current_password: TEST_PASSWORD, new_password: 'a brand new passphrase' } })
  t.equal(changed.statusCode, 204)
  t.equal(await revokedAt(app, sidOf(bystander)), null, 'the other user\'s session is not revoked')
  t.equal(await meStatus(app, bystander.access_token), 200)
  t.equal(await refreshStatus(app, bystander.refresh_token), 200)
})

t.test('a password change that fails halfway changes nothing', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const current = await signup(app, email)
  const other = await login(app, email)
  // Revoking the other sessions, the change's second write, fails.
  const allowSessionUpdates = await refuseSessionUpdates(app)
  const failed = await app.inject({ method: 'POST', url: '/auth/password', headers: bearer(current.access_token), payload: { current_password: TEST_PASSWORD, new_password: 'a brand new passphrase' } })
  t.equal(failed.statusCode, 500)
  await allowSessionUpdates()
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).statusCode, 200, 'the old password still works')
  t.equal(await refreshStatus(app, other.refresh_token), 200, 'the other session is still open')
})

t.test('PATCH /auth/me changes the name', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const other = await signup(app)
  const otherRow = await dbGet(app, 'select name, updated_at from users where id = ?', other.user.id)
  await sleep(5)
  const renamed = await app.inject({ method: 'PATCH', url: '/auth/me', headers: bearer(session.access_token), payload: { name: 'Grace Hopper' } })
  t.equal(renamed.statusCode, 200)
  t.same(await dbGet(app, 'select name, updated_at from users where id = ?', other.user.id), otherRow, 'another user\'s row is unchanged')
  t.equal(renamed.json().name, 'Grace Hopper')
  t.ok(renamed.json().updated_at > session.user.updated_at, 'updated_at moves on')
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(session.access_token) })).json().name, 'Grace Hopper')

  const cleared = await app.inject({ method: 'PATCH', url: '/auth/me', headers: bearer(session.access_token), payload: { name: null } })
  t.equal(cleared.json().name, null)

  for (const payload of [{ name: '' }, { name: 'x'.repeat(101) }, { email: 'new@example.com' }, { roles: ['admin'] }]) {
    const refused = await app.inject({ method: 'PATCH', url: '/auth/me', headers: bearer(session.access_token), payload })
    t.equal(refused.statusCode, 400, JSON.stringify(payload))
    t.equal(refused.json().code, 'validation_error')
  }
  t.same((await app.inject({ url: '/auth/me', headers: bearer(session.access_token) })).json().roles, ['user'])
})

t.test('an expired session is refused on account routes while its access token is still valid', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  await dbRun(app, 'update sessions set expires_at = ? where id = ?', new Date(Date.now() - 1000), tokenPayload(session.access_token).sid)
  const response = await app.inject({ url: '/auth/me', headers: bearer(session.access_token) })
  t.equal(response.statusCode, 401)
  t.equal(response.json().code, 'invalid_token')
})

t.test('GET /auth/sessions lists unexpired sessions only, most recently used first', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const first = await signup(app, email)
  const second = await login(app, email)
  const third = await login(app, email)
  const sid = (session: { access_token: string }) => tokenPayload(session.access_token).sid as string
  const now = Date.now()
  await dbRun(app, 'update sessions set last_used_at = ? where id = ?', new Date(now - 3000), sid(first))
  await dbRun(app, 'update sessions set last_used_at = ? where id = ?', new Date(now - 1000), sid(second))
  await dbRun(app, 'update sessions set last_used_at = ? where id = ?', new Date(now - 2000), sid(third))
  const listed = await app.inject({ url: '/auth/sessions', headers: bearer(first.access_token) })
  t.same(listed.json().map((session: { id: string }) => session.id), [sid(second), sid(third), sid(first)], 'most recently used first')

  await dbRun(app, 'update sessions set expires_at = ? where id = ?', new Date(now - 1000), sid(third))
  const after = await app.inject({ url: '/auth/sessions', headers: bearer(first.access_token) })
  t.same(after.json().map((session: { id: string }) => session.id), [sid(second), sid(first)], 'an expired session is not active')

  await dbRun(app, 'update sessions set last_used_at = ?', new Date(now - 1000))
  const tied = await app.inject({ url: '/auth/sessions', headers: bearer(first.access_token) })
  t.same(tied.json().map((session: { id: string }) => session.id), [sid(first), sid(second)].sort().reverse(), 'used at the same moment: by id, the same on every database')
})

t.test('a refresh marks its session used: GET /auth/sessions lists it first, with the refresh as its last use', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  await sleep(20)
  const older = await login(app, email)
  await sleep(20)
  const newer = await login(app, email)
  const listed = async () => (await app.inject({ url: '/auth/sessions', headers: bearer(newer.access_token) })).json() as Array<{ id: string, created_at: string, last_used_at: string }>
  t.same((await listed()).map((session) => session.id).slice(0, 2), [sidOf(newer), sidOf(older)], 'before: the later sign-in first')

  await sleep(20)
  const before = Date.now()
  t.equal(await refreshStatus(app, older.refresh_token), 200)
  const after = await listed()
  t.equal(after[0]!.id, sidOf(older), 'the refreshed session is now the most recently used')
  t.ok(Date.parse(after[0]!.last_used_at) >= before, 'its last use is the refresh')
  t.ok(Date.parse(after[0]!.last_used_at) > Date.parse(after[0]!.created_at), 'later than its sign-in')
})

t.test('a session keeps at most 512 characters of the User-Agent', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const agent = `Agent/1.0 ${'x'.repeat(2000)}`
  const session = await login(app, email, TEST_PASSWORD, agent)
  const listed = (await app.inject({ url: '/auth/sessions', headers: bearer(session.access_token) })).json() as Array<{ id: string, user_agent: string }>
  t.equal(listed.find((row) => row.id === sidOf(session))!.user_agent, agent.slice(0, 512))
  t.equal((await dbGet(app, 'select user_agent from sessions where id = ?', sidOf(session)))!.user_agent, agent.slice(0, 512), 'as stored')
})
