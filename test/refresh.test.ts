import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import type { App } from '../src/app.ts'
import { hashRefreshToken } from '../src/auth/tokens.ts'
import { TEST_DATABASE_URL, TEST_PASSWORD, type SessionBody, bearer, build, dbAll, dbCount, dbRun, dbGet, signup, tokenPayload } from './helper.ts'

const refresh = (app: App, token: string) =>
  app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })
const me = (app: App, accessToken: string) => app.inject({ url: '/auth/me', headers: bearer(accessToken) })
/** The hourly cleanup, run now. */
const cleanUp = (app: App) => app.sessionsRepository.deleteExpired({ now: new Date(), ttl: app.config.refreshTokenTtl })

const sessionRow = async (app: App, id: unknown) =>
  await dbGet(app, 'select * from sessions where id = ?', id) as { revoked_at: number | null, user_id: string }

t.test('signup → refresh → refresh → logout → refresh refused', async (t) => {
  const app = await build(t)
  const first = await signup(app)
  t.match(first.refresh_token, /^[\w-]{43}$/, '256-bit base64url refresh token')
  const sid = tokenPayload(first.access_token).sid

  const second = await refresh(app, first.refresh_token)
  t.equal(second.statusCode, 200)
  t.equal(second.headers['cache-control'], 'no-store')
  const secondBody: SessionBody = second.json()
  t.not(secondBody.refresh_token, first.refresh_token, 'rotated')
  t.equal(tokenPayload(secondBody.access_token).sid, sid, 'same session')
  t.same(secondBody.user, first.user)

  const third: SessionBody = (await refresh(app, secondBody.refresh_token)).json()
  t.equal((await me(app, third.access_token)).statusCode, 200)

  const logout = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(third.access_token) })
  t.equal(logout.statusCode, 204)
  t.equal(logout.body, '')

  const after = await refresh(app, third.refresh_token)
  t.equal(after.statusCode, 401)
  t.equal(after.json().code, 'invalid_refresh_token')
  t.equal((await me(app, third.access_token)).statusCode, 401, 'the session-checked route refuses the old access token')
  t.ok((await sessionRow(app, sid)).revoked_at)
})

t.test('refresh tokens are stored only as hashes', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const rows = await dbAll(app, 'select token_hash from refresh_tokens') as Array<{ token_hash: string }>
  t.same(rows.map((row) => row.token_hash), [hashRefreshToken(session.refresh_token)])
  t.notMatch(JSON.stringify(await dbAll(app, 'select * from refresh_tokens')), session.refresh_token)
})

t.test('reuse after the grace window revokes the whole session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '1' })
  const first = await signup(app)
  const second: SessionBody = (await refresh(app, first.refresh_token)).json()
  await sleep(1200)

  const replay = await refresh(app, first.refresh_token)
  t.equal(replay.statusCode, 401)
  t.equal(replay.json().code, 'invalid_refresh_token')
  t.ok((await sessionRow(app, tokenPayload(first.access_token).sid)).revoked_at, 'session revoked')

  const legitimate = await refresh(app, second.refresh_token)
  t.equal(legitimate.statusCode, 401, 'the thief and the victim both lose the session')
  t.equal((await me(app, second.access_token)).statusCode, 401)
})

t.test('grace 0 turns any reuse into theft', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const first = await signup(app)
  t.equal((await refresh(app, first.refresh_token)).statusCode, 200)
  t.equal((await refresh(app, first.refresh_token)).statusCode, 401)
  t.ok((await sessionRow(app, tokenPayload(first.access_token).sid)).revoked_at)

  // Even a replay stamped with the very moment of the rotation (or queued behind its lock).
  const second = await signup(app)
  const rules = { now: new Date(), ttl: 3600, maxAge: 0, grace: 0 }
  t.equal((await app.sessionsRepository.rotate(second.refresh_token, rules)).outcome, 'rotated')
  t.equal((await app.sessionsRepository.rotate(second.refresh_token, rules)).outcome, 'reused')
})

t.test('reuse revokes the session it was presented in, not the user\'s other sessions nor anyone else\'s', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const stolen = await signup(app)
  const otherDevice = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: stolen.user.email, password: TEST_PASSWORD } })
  t.equal(otherDevice.statusCode, 200)
  const bystander = await signup(app)
  t.equal((await refresh(app, stolen.refresh_token)).statusCode, 200)

  t.equal((await refresh(app, stolen.refresh_token)).statusCode, 401, 'the replay is theft')
  t.ok((await sessionRow(app, tokenPayload(stolen.access_token).sid)).revoked_at, 'its session is revoked')
  t.notOk((await sessionRow(app, tokenPayload(otherDevice.json().access_token).sid)).revoked_at, 'the same user\'s other session is not')
  t.equal((await refresh(app, otherDevice.json().refresh_token)).statusCode, 200, 'and goes on')
  t.equal((await refresh(app, bystander.refresh_token)).statusCode, 200, 'as does another user\'s')
})

t.test('a replay inside the grace window succeeds for the same session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const first = await signup(app)
  const sid = tokenPayload(first.access_token).sid
  const lost: SessionBody = (await refresh(app, first.refresh_token)).json()

  const retry = await refresh(app, first.refresh_token)
  t.equal(retry.statusCode, 200, 'the client lost our answer and retries')
  const retried: SessionBody = retry.json()
  t.equal(tokenPayload(retried.access_token).sid, sid)
  t.not(retried.refresh_token, lost.refresh_token)

  const live = await dbCount(app, 'select count(*) as n from refresh_tokens where session_id = ? and used_at is null and revoked_at is null', sid)
  t.equal(live, 1, 'one live refresh token per session, never a fork')

  const next = await refresh(app, retried.refresh_token)
  t.equal(next.statusCode, 200, 'the retried chain goes on')
  t.notOk((await sessionRow(app, sid)).revoked_at)
})

// RFC 9700 §4.14.2: a thief who replays a stolen token within the window gets the live pair and
// leaves the rightful client holding a superseded token. Its next refresh must end the session,
// or the thief keeps it while the rightful client signs in anew.
t.test('a token superseded by a grace-window retry, presented, revokes the whole session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const rightful = await signup(app)
  const sid = tokenPayload(rightful.access_token).sid
  const rotated: SessionBody = (await refresh(app, rightful.refresh_token)).json()
  const thief: SessionBody = (await refresh(app, rightful.refresh_token)).json()
  t.ok(thief.refresh_token, 'a replay within the window gets the live pair')

  const superseded = await refresh(app, rotated.refresh_token)
  t.equal(superseded.statusCode, 401)
  t.equal(superseded.json().code, 'invalid_refresh_token')
  t.ok((await sessionRow(app, sid)).revoked_at, 'the session is revoked')
  t.equal((await refresh(app, thief.refresh_token)).statusCode, 401, 'the replayed pair\'s refresh token is refused')
  const me = await app.inject({ url: '/auth/me', headers: bearer(thief.access_token) })
  t.equal(me.statusCode, 401, 'and its access token on /auth/me')
  t.equal(me.json().code, 'invalid_token')
})

t.test('a grace-window retry slides the session and records its use, as any refresh does', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s', REFRESH_TOKEN_TTL: '1h' })
  const first = await signup(app)
  const sid = tokenPayload(first.access_token).sid
  t.equal((await refresh(app, first.refresh_token)).statusCode, 200, 'the answer the client loses')
  // As if that refresh were the last use ten minutes ago, and the session ended ten minutes on.
  const now = Date.now()
  await dbRun(app, 'update sessions set last_used_at = ?, expires_at = ? where id = ?', new Date(now - 600_000), new Date(now + 600_000), sid)

  const started = Date.now()
  const retry = await refresh(app, first.refresh_token)
  t.equal(retry.statusCode, 200)
  const row = (await dbGet(app, 'select last_used_at, expires_at from sessions where id = ?', sid))!
  t.ok(new Date(row.last_used_at as string | number).getTime() >= started, 'the retry is the session\'s last use')
  t.ok(new Date(row.expires_at as string | number).getTime() >= started + 3600_000, 'and the session ends a full REFRESH_TOKEN_TTL after it')
  t.equal((await refresh(app, retry.json().refresh_token)).statusCode, 200)
})

t.test('a second grace-window retry replaces the live token again: still one live token, never a fork', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const first = await signup(app)
  const sid = tokenPayload(first.access_token).sid
  t.equal((await refresh(app, first.refresh_token)).statusCode, 200, 'the answer the client loses')
  const retried = await refresh(app, first.refresh_token)
  t.equal(retried.statusCode, 200, 'a retry, whose answer is lost too')
  const again = await refresh(app, first.refresh_token)
  t.equal(again.statusCode, 200, 'and a second retry')
  const live = await dbAll(app, 'select token_hash from refresh_tokens where session_id = ? and used_at is null and revoked_at is null', sid)
  t.same(live.map((row) => row.token_hash), [hashRefreshToken(again.json().refresh_token)], 'the newest answer holds the one live token')
  t.equal((await refresh(app, again.json().refresh_token)).statusCode, 200, 'which goes on')
})

t.test('inside the window, only the newest rotated token may be replayed', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const first = await signup(app)
  const second: SessionBody = (await refresh(app, first.refresh_token)).json()
  t.equal((await refresh(app, second.refresh_token)).statusCode, 200)

  const older = await refresh(app, first.refresh_token)
  t.equal(older.statusCode, 401, 'an older token is theft even inside the window')
  t.ok((await sessionRow(app, tokenPayload(first.access_token).sid)).revoked_at)
})

t.test('20 parallel refreshes of one token with grace 0 yield exactly one success', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const first = await signup(app)
  const responses = await Promise.all(Array.from({ length: 20 }, () => refresh(app, first.refresh_token)))
  const statuses = responses.map((response) => response.statusCode)
  t.equal(statuses.filter((status) => status === 200).length, 1)
  t.equal(statuses.filter((status) => status === 401).length, 19)
  t.equal(await dbCount(app, 'select count(*) as n from refresh_tokens'), 2, 'one chain: the original and one child')
})

t.test('an expired refresh token is refused', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '1', REFRESH_TOKEN_TTL: '1' })
  const first = await signup(app)
  await sleep(1100)
  const response = await refresh(app, first.refresh_token)
  t.equal(response.statusCode, 401)
  t.equal(response.json().code, 'invalid_refresh_token')
  t.equal(response.headers['www-authenticate'], 'Bearer realm="gatehouse"')
})

t.test('refresh re-reads the user: roles and disabled take effect at the next refresh', async (t) => {
  const app = await build(t)
  const first = await signup(app)
  await dbRun(app, 'update users set roles = ? where id = ?', ['user', 'member'], first.user.id)
  const promoted: SessionBody = (await refresh(app, first.refresh_token)).json()
  t.same(tokenPayload(promoted.access_token).roles, ['user', 'member'])
  t.same(promoted.user.roles, ['user', 'member'])

  await dbRun(app, 'update users set disabled = ? where id = ?', true, first.user.id)
  const refused = await refresh(app, promoted.refresh_token)
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'invalid_refresh_token')
  t.ok((await sessionRow(app, tokenPayload(first.access_token).sid)).revoked_at, 'the refusal ended the session')
  // Enabled again (outside the API, which would have revoked it): the old session stays ended.
  await dbRun(app, 'update users set disabled = ? where id = ?', false, first.user.id)
  t.equal((await me(app, promoted.access_token)).statusCode, 401)
  t.equal((await refresh(app, promoted.refresh_token)).statusCode, 401)
})

t.test('each refresh moves the session\'s end a full REFRESH_TOKEN_TTL on', async (t) => {
  const app = await build(t, { REFRESH_TOKEN_TTL: '1h' })
  const first = await signup(app)
  const sid = tokenPayload(first.access_token).sid
  const endOf = async () => new Date((await dbGet(app, 'select expires_at from sessions where id = ?', sid))!.expires_at as string | number).getTime()
  const opened = await endOf()
  await sleep(50)
  const started = Date.now()
  const next = await refresh(app, first.refresh_token)
  t.equal(next.statusCode, 200)
  const finished = Date.now()
  const moved = await endOf()
  t.ok(moved > opened, 'later than the end set at sign-in')
  t.ok(moved >= started + 3600_000 && moved <= finished + 3600_000, 'an hour from the refresh, not the default 30 days')
  const tokenEnd = await dbGet(app, 'select expires_at from refresh_tokens where token_hash = ?', hashRefreshToken(next.json().refresh_token))
  const tokenEndsAt = new Date(tokenEnd!.expires_at as string | number).getTime()
  t.ok(tokenEndsAt >= started + 3600_000 && tokenEndsAt <= finished + 3600_000, 'the new refresh token lives an hour too')
})

t.test('SESSION_MAX_AGE ends a session that long after its sign-in, however often it is refreshed', async (t) => {
  const app = await build(t, { SESSION_MAX_AGE: '2h', REFRESH_TOKEN_TTL: '1h', ACCESS_TOKEN_TTL: '1h' })
  const first = await signup(app)
  const sid = tokenPayload(first.access_token).sid
  const times = async () => {
    const row = (await dbGet(app, 'select created_at, expires_at from sessions where id = ?', sid))!
    return { createdAt: new Date(row.created_at as string | number).getTime(), expiresAt: new Date(row.expires_at as string | number).getTime() }
  }
  const signedIn = await times()
  t.equal(signedIn.expiresAt - signedIn.createdAt, 3600_000, 'within its maximum age the window slides as before: an hour')

  // An hour and a half after sign-in (moved back in the database): the window stops at two hours.
  const halfPast = (await times()).createdAt - 90 * 60_000
  await dbRun(app, 'update sessions set created_at = ? where id = ?', new Date(halfPast), sid)
  const second = await refresh(app, first.refresh_token)
  t.equal(second.statusCode, 200)
  const capped = await times()
  t.equal(capped.expiresAt, halfPast + 2 * 3600_000, 'the session ends two hours after sign-in, not an hour after this refresh')
  const token = await dbGet(app, 'select expires_at from refresh_tokens where token_hash = ?', hashRefreshToken(second.json().refresh_token))
  t.equal(new Date(token!.expires_at as string | number).getTime(), halfPast + 2 * 3600_000, 'and so does its new refresh token')
  const { expires_in: expiresIn, access_token: access } = second.json() as { expires_in: number, access_token: string }
  t.ok(expiresIn > 1790 && expiresIn <= 1800, `its access token lives the half hour left, not ACCESS_TOKEN_TTL (expires_in ${expiresIn})`)
  const claims = tokenPayload(access) as { exp: number, iat: number }
  t.ok(Math.abs(claims.exp - claims.iat - expiresIn) <= 1, 'exp says the same')
  t.equal((await me(app, access)).statusCode, 200, 'and it is a valid token')

  // Past two hours, even with a refresh token that has not expired (say SESSION_MAX_AGE was lowered).
  await dbRun(app, 'update sessions set created_at = ? where id = ?', new Date(Date.now() - 2 * 3600_000 - 1000), sid)
  const third = await refresh(app, second.json().refresh_token)
  t.equal(third.statusCode, 401)
  t.equal(third.json().code, 'invalid_refresh_token')
  t.equal((await me(app, access)).statusCode, 401, 'the account endpoints refuse its access token too')
  const again = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: first.user.email, password: TEST_PASSWORD } })
  const listed = await app.inject({ url: '/auth/sessions', headers: bearer(again.json().access_token) })
  t.same((listed.json() as Array<{ id: string }>).map((session) => session.id), [tokenPayload(again.json().access_token).sid],
    'the list of active sessions leaves it out')

  // Without SESSION_MAX_AGE (the default) a session slides for as long as it is refreshed.
  const unlimited = await build(t, { REFRESH_TOKEN_TTL: '1h' })
  const old = await signup(unlimited)
  await dbRun(unlimited, 'update sessions set created_at = ? where id = ?', new Date(Date.now() - 400 * 86_400_000), tokenPayload(old.access_token).sid)
  t.equal((await refresh(unlimited, old.refresh_token)).statusCode, 200, 'a session signed in 400 days ago')
})

t.test('refresh and access tokens cannot stand in for each other', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const asAccess = await me(app, session.refresh_token)
  t.equal(asAccess.statusCode, 401)
  t.equal(asAccess.json().code, 'invalid_token')
  const asRefresh = await refresh(app, session.access_token)
  t.equal(asRefresh.statusCode, 401)
  t.equal(asRefresh.json().code, 'invalid_refresh_token')
})

t.test('refresh validates its body', async (t) => {
  const app = await build(t)
  for (const payload of [{}, { refresh_token: '' }, { refresh_token: 42 }, { refresh_token: 'x', extra: 1 }]) {
    const response = await app.inject({ method: 'POST', url: '/auth/refresh', payload })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.equal(response.json().code, 'validation_error')
  }
  t.equal((await refresh(app, 'no-such-token')).json().code, 'invalid_refresh_token')
})

t.test('cleanup removes expired sessions and tokens, keeps live ones', async (t) => {
  const app = await build(t)
  const live = await signup(app)
  const old = await signup(app)
  const oldSid = tokenPayload(old.access_token).sid
  await dbRun(app, 'update sessions set expires_at = ? where id = ?', new Date(0), oldSid)
  await dbRun(app, 'update refresh_tokens set expires_at = ? where session_id = ?', new Date(0), oldSid)
  await cleanUp(app)
  t.notOk(await sessionRow(app, oldSid), 'expired session deleted')
  t.ok(await sessionRow(app, tokenPayload(live.access_token).sid), 'live session kept')
  t.equal((await refresh(app, live.refresh_token)).statusCode, 200)
})

t.test('cleanup keeps a revoked session for a day, then removes it; a live session keeps its expired tokens for a refresh lifetime more', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const hour = 3600_000
  const revokedSince = async (ago: number) => {
    const session = await signup(app)
    const sid = tokenPayload(session.access_token).sid
    t.equal((await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(session.access_token) })).statusCode, 204)
    await dbRun(app, 'update sessions set revoked_at = ? where id = ?', new Date(Date.now() - ago), sid)
    return sid
  }
  const recentlyRevoked = await revokedSince(hour)
  const longRevoked = await revokedSince(25 * hour)

  // A live session refreshed twice: its first token expired more than REFRESH_TOKEN_TTL ago, its
  // second a moment ago; its live token has not.
  const live = await signup(app)
  const liveSid = tokenPayload(live.access_token).sid
  const second = await refresh(app, live.refresh_token)
  t.equal(second.statusCode, 200)
  const third = await refresh(app, second.json().refresh_token)
  t.equal(third.statusCode, 200)
  const expire = (token: string, ago: number) =>
    dbRun(app, 'update refresh_tokens set expires_at = ? where token_hash = ?', new Date(Date.now() - ago), hashRefreshToken(token))
  await expire(live.refresh_token, app.config.refreshTokenTtl * 1000 + hour)
  await expire(second.json().refresh_token, 1000)

  await cleanUp(app)
  t.ok(await sessionRow(app, recentlyRevoked), 'a session revoked an hour ago is kept')
  t.notOk(await sessionRow(app, longRevoked), 'one revoked more than a day ago is deleted')
  t.equal(await dbCount(app, 'select count(*) as n from refresh_tokens where session_id = ?', longRevoked), 0, 'with its tokens')
  t.same((await dbAll(app, 'select token_hash from refresh_tokens where session_id = ? order by issued_at', liveSid)).map((row) => row.token_hash),
    [hashRefreshToken(second.json().refresh_token), hashRefreshToken(third.json().refresh_token)],
    'the live session keeps its token expired a moment ago beside its live one; the one long expired is gone')
  const replay = await refresh(app, second.json().refresh_token)
  t.equal(replay.statusCode, 401, 'the expired rotated token, presented again, is reuse')
  t.equal(replay.json().code, 'invalid_refresh_token')
  t.not((await sessionRow(app, liveSid))!.revoked_at, null, 'and ends the session')
})

t.test('a rotated token presented after its own expiry ends the session, whoever holds its live token', async (t) => {
  // A thief rotated a stolen token, and the rightful client comes back with it only after it expired.
  const app = await build(t)
  const rightful = await signup(app)
  const sid = tokenPayload(rightful.access_token).sid
  const thief = await refresh(app, rightful.refresh_token)
  t.equal(thief.statusCode, 200)
  const longAgo = new Date(Date.now() - 60_000)
  await dbRun(app, 'update refresh_tokens set used_at = ?, expires_at = ? where token_hash = ?', longAgo, longAgo, hashRefreshToken(rightful.refresh_token))
  const replay = await refresh(app, rightful.refresh_token)
  t.equal(replay.statusCode, 401)
  t.equal(replay.json().code, 'invalid_refresh_token')
  t.not((await sessionRow(app, sid))!.revoked_at, null, 'the session is revoked')
  t.equal((await refresh(app, thief.json().refresh_token)).statusCode, 401, 'the thief\'s live token is refused')
})

t.test('an app removes expired sessions as it starts', async (t) => {
  const databaseUrl = TEST_DATABASE_URL ? undefined : `file:${join(t.testdir(), 'gatehouse.db')}`
  const first = await build(t, databaseUrl ? { DATABASE_URL: databaseUrl } : {})
  const expired = await signup(first)
  const live = await signup(first)
  const expiredSid = tokenPayload(expired.access_token).sid
  await dbRun(first, 'update sessions set expires_at = ? where id = ?', new Date(Date.now() - 1000), expiredSid)
  await dbRun(first, 'update refresh_tokens set expires_at = ? where session_id = ?', new Date(Date.now() - 1000), expiredSid)

  // Another instance on the same database, started now: its start-up cleans up before the first hour.
  const second = await build(t, { DATABASE_URL: first.config.databaseUrl })
  t.notOk(await sessionRow(second, expiredSid), 'the expired session is gone at start')
  t.equal(await dbCount(second, 'select count(*) as n from refresh_tokens where session_id = ?', expiredSid), 0)
  t.ok(await sessionRow(second, tokenPayload(live.access_token).sid), 'a live one is kept')
  t.equal((await refresh(second, live.refresh_token)).statusCode, 200)
})

// One writer at a time on SQLite: only PostgreSQL's row locks can deadlock.
if (TEST_DATABASE_URL) {
  t.test('cleanup leaves the rows another transaction holds for the next one, and never waits for them', async (t) => {
    const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
    const expire = async (sid: unknown) => {
      await dbRun(app, 'update sessions set expires_at = ? where id = ?', new Date(0), sid)
      await dbRun(app, 'update refresh_tokens set expires_at = ? where session_id = ?', new Date(0), sid)
    }
    const heldSid = tokenPayload((await signup(app)).access_token).sid
    const freeSid = tokenPayload((await signup(app)).access_token).sid
    await expire(heldSid)
    await expire(freeSid)
    // A live session whose first token, used by a refresh, expired long ago.
    const live = await signup(app)
    t.equal((await refresh(app, live.refresh_token)).statusCode, 200)
    const usedToken = hashRefreshToken(live.refresh_token)
    await dbRun(app, 'update refresh_tokens set expires_at = ? where token_hash = ?', new Date(0), usedToken)
    const tokenCount = () => dbCount(app, 'select count(*) as n from refresh_tokens where token_hash = ?', usedToken)

    // A writer holds an expired session and an expired token, as a sign-in's cap, a refresh or a
    // user's deletion may while they expire: a cleanup that waited for them could deadlock with it.
    const writer = new pg.Client({ connectionString: app.config.databaseUrl })
    await writer.connect()
    t.teardown(() => writer.end())
    await writer.query('begin')
    await writer.query('select id from sessions where id = $1 for update', [heldSid])
    await writer.query('select id from refresh_tokens where token_hash = $1 for update', [usedToken])
    const cleanup = cleanUp(app)
    t.equal(await Promise.race([cleanup.then(() => 'done'), sleep(5000, 'waited', { ref: false })]), 'done', 'the cleanup did not wait for the held rows')
    t.equal(await dbCount(app, 'select count(*) as n from sessions where id = ?', freeSid), 0, 'an expired session no one holds is deleted')
    // The writer goes on with the session's tokens after the cleanup, as a deletion's cascade does.
    await writer.query('delete from refresh_tokens where session_id = $1', [heldSid])
    await writer.query('commit')
    await cleanup
    t.equal(await dbCount(app, 'select count(*) as n from sessions where id = ?', heldSid), 1, 'the held session is left')
    t.equal(await tokenCount(), 1, 'and the held token')

    await cleanUp(app)
    t.equal(await dbCount(app, 'select count(*) as n from sessions where id = ?', heldSid), 0, 'the next cleanup deletes the session')
    t.equal(await tokenCount(), 0, 'and the token')
  })
}

t.test('refresh: an expired token in a live session, and a live token in an expired session, are both refused', async (t) => {
  const app = await build(t)
  const past = () => new Date(Date.now() - 1000)
  const refresh = (token: string) => app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })
  const a = await signup(app)
  await dbRun(app, 'update refresh_tokens set expires_at = ? where session_id = ?', past(), tokenPayload(a.access_token).sid)
  const expiredToken = await refresh(a.refresh_token)
  t.equal(expiredToken.statusCode, 401)
  t.equal(expiredToken.json().code, 'invalid_refresh_token')

  const b = await signup(app)
  await dbRun(app, 'update sessions set expires_at = ? where id = ?', past(), tokenPayload(b.access_token).sid)
  const expiredSession = await refresh(b.refresh_token)
  t.equal(expiredSession.statusCode, 401)
  t.equal(expiredSession.json().code, 'invalid_refresh_token')
})
