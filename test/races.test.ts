import { hash } from '@node-rs/argon2'
import type { InjectOptions } from 'fastify'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { HASH_OPTIONS } from '../src/auth/passwords.ts'
import type { App } from '../src/app.ts'
import { TEST_DATABASE_URL, TEST_PASSWORD, before, bearer, build, dbAll, dbCount, dbGet, dbRun, freshPostgresUrl, signup, signupWithRoles, tokenPayload, uniqueEmail, type SessionBody } from './helper.ts'

t.test('50 concurrent signups with one email produce exactly one user', async (t) => {
  const app = await build(t)
  const email = uniqueEmail('race')
  const responses = await Promise.all(Array.from({ length: 50 }, (_, index) => app.inject({
    method: 'POST',
    url: '/auth/signup',
    // The same account spelled 50 ways: case and spaces differ, the normalised email does not.
    payload: { email: index % 2 ? email.toUpperCase() : ` ${email} `, password: TEST_PASSWORD }
  })))
  const statuses = responses.map((response) => response.statusCode)
  t.equal(statuses.filter((status) => status === 201).length, 1)
  t.equal(statuses.filter((status) => status === 409).length, 49)
  t.ok(responses.filter((response) => response.statusCode === 409).every((response) => response.json().code === 'email_taken'))
  t.equal(await dbCount(app, 'select count(*) as n from users where email = ?', email), 1)
  t.equal(await dbCount(app, 'select count(*) as n from sessions'), 1, 'only the winner got a session')
})

t.test('bodies over 8 KiB get 413 before any work is done', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD, name: 'x'.repeat(9000) } })
  t.equal(response.statusCode, 413)
  t.equal(response.json().code, 'payload_too_large')
  t.equal(await dbCount(app, 'select count(*) as n from users'), 0)
  await signup(app)
})

t.test('common passwords are refused with weak_password', async (t) => {
  const app = await build(t)
  for (const password of ['password', 'Password1', 'iloveyou2', '12345678', 'qwertyuiop', ' password123 ', ' '.repeat(8), ' 123456 ']) {
    const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password } })
    t.equal(response.statusCode, 400, password)
    t.equal(response.json().code, 'weak_password', password)
  }
})

const NEW_PASSWORD = 'a brand new passphrase'
const login = (app: App, email: string, password: string) =>
  app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
const changePassword = (app: App, session: SessionBody) => app.inject({
  method: 'POST',
  url: '/auth/password',
  headers: bearer(session.access_token),
  payload: { current_password: TEST_PASSWORD, new_password: NEW_PASSWORD }
})

t.test('a sign-in whose account changes after its password check opens no session', async (t) => {
  // What a sign-in started after the change would answer: the disabled user's password is still
  // right, so it learns the account is disabled (403), as the contract says.
  const changes: Record<string, [(app: App, session: SessionBody) => Promise<unknown>, number, string]> = {
    'the password is changed': [async (app, session) => t.equal((await changePassword(app, session)).statusCode, 204), 401, 'invalid_credentials'],
    'the user is disabled': [(app, session) => dbRun(app, 'update users set disabled = ? where id = ?', true, session.user.id), 403, 'user_disabled'],
    'the user is deleted': [(app, session) => dbRun(app, 'delete from users where id = ?', session.user.id), 401, 'invalid_credentials']
  }
  for (const [change, [apply, status, code]] of Object.entries(changes)) {
    await t.test(change, async (t) => {
      const app = await build(t)
      const session = await signup(app)
      before(app.sessionsRepository, 'open', () => apply(app, session))
      const response = await login(app, session.user.email, TEST_PASSWORD)
      t.equal(response.statusCode, status, 'not a session, and not a 500')
      t.equal(response.json().code, code)
      const opened = await dbCount(app, 'select count(*) as n from sessions where user_id = ? and id <> ?',
        session.user.id, tokenPayload(session.access_token).sid)
      t.equal(opened, 0, 'no session besides the signup\'s')
    })
  }
})

t.test('a sign-in whose roles change after its password check gets a token with the new roles', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['admin'])
  const demoted = await signupWithRoles(app, ['admin'])
  before(app.sessionsRepository, 'open', async () => {
    const changed = await app.inject({
      method: 'PATCH', url: `/admin/users/${demoted.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['user'] }
    })
    t.equal(changed.statusCode, 200, 'the demotion lands while the sign-in is between its password check and its session')
  })
  const response = await login(app, demoted.user.email, TEST_PASSWORD)
  t.equal(response.statusCode, 200)
  const body = response.json() as SessionBody
  t.same(tokenPayload(body.access_token).roles, ['user'], 'the access token carries the roles of the moment its session opened')
  t.same(body.user.roles, ['user'])
  const write = await app.inject({
    method: 'POST', url: '/clothes', headers: bearer(body.access_token), payload: { name: 'Raincoat', size: 'M', price: 9900 }
  })
  t.equal(write.statusCode, 403, 'no admin write with the new session')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', demoted.user.id), 1,
    'the new session is open, the earlier one revoked by the demotion')
})

/** A stored hash with weaker parameters than HASH_OPTIONS, which the next sign-in upgrades. */
const outdatedHash = () => hash(TEST_PASSWORD, { ...HASH_OPTIONS, memoryCost: 4096, timeCost: 1 })
const isCurrentStrength = (stored: unknown) => /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/.test(String(stored))

t.test('the password change wins over a sign-in with the old password that checked it first', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  // The stored hash has weaker parameters, so the sign-in upgrades it after the password check.
  await dbRun(app, 'update users set password_hash = ? where id = ?', await outdatedHash(), session.user.id)
  before(app.usersRepository, 'replacePasswordHash', async () => t.equal((await changePassword(app, session)).statusCode, 204))

  const raced = await login(app, session.user.email, TEST_PASSWORD)
  t.equal(raced.statusCode, 401, 'the old password opens no session')
  t.equal((await login(app, session.user.email, TEST_PASSWORD)).statusCode, 401, 'the old password stays changed')
  t.equal((await login(app, session.user.email, NEW_PASSWORD)).statusCode, 200, 'the new password works')
  const stored = await dbGet(app, 'select password_hash from users where id = ?', session.user.id)
  t.ok(isCurrentStrength(stored?.password_hash), 'the new password\'s hash, at full strength')
})

t.test('a sign-in whose hash upgrade loses to another sign-in\'s upgrade still signs in', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  await dbRun(app, 'update users set password_hash = ? where id = ?', await outdatedHash(), session.user.id)
  let other: Awaited<ReturnType<typeof login>> | undefined
  // The password grant of another device upgrades the hash between this sign-in's check and its own upgrade.
  before(app.usersRepository, 'replacePasswordHash', async () => {
    other = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: session.user.email, password: TEST_PASSWORD } })
  })
  const raced = await login(app, session.user.email, TEST_PASSWORD)
  t.equal(other?.statusCode, 200, 'the other sign-in upgraded the hash')
  t.equal(raced.statusCode, 200, 'this one, with the same right password, signs in too')
  const stored = await dbGet(app, 'select password_hash from users where id = ?', session.user.id)
  t.ok(isCurrentStrength(stored?.password_hash), 'the hash is upgraded, once')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', session.user.id), 3,
    'the signup\'s session and the two sign-ins\'')

  // Ten at once, as a load test signing one account in would send them.
  await dbRun(app, 'update users set password_hash = ? where id = ?', await outdatedHash(), session.user.id)
  const answers = await Promise.all(Array.from({ length: 10 }, () => login(app, session.user.email, TEST_PASSWORD)))
  t.same(answers.map((answer) => answer.statusCode), Array(10).fill(200), 'ten concurrent sign-ins all succeed')
})

t.test('a password change whose current hash a sign-in upgraded meanwhile goes through', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  await dbRun(app, 'update users set password_hash = ? where id = ?', await outdatedHash(), session.user.id)
  let other: Awaited<ReturnType<typeof login>> | undefined
  // The owner signs in on another device while the change hashes its new password.
  before(app.usersRepository, 'changePassword', async () => { other = await login(app, session.user.email, TEST_PASSWORD) })
  const change = await changePassword(app, session)
  t.equal(other?.statusCode, 200, 'the sign-in upgraded the hash of the unchanged password')
  t.equal(change.statusCode, 204, 'the change, with the right current password, is made')
  t.equal((await login(app, session.user.email, NEW_PASSWORD)).statusCode, 200, 'the new password works')
  t.equal((await login(app, session.user.email, TEST_PASSWORD)).statusCode, 401, 'the old one no longer does')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and id <> ? and revoked_at is null',
    session.user.id, tokenPayload(session.access_token).sid), 1, 'the other device\'s session was revoked by the change; only the new sign-in\'s is open')
})

t.test('of two password changes that both checked the current password, one wins', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  let second: Awaited<ReturnType<typeof changePassword>> | undefined
  before(app.usersRepository, 'changePassword', async () => { second = await changePassword(app, session) })
  const first = await changePassword(app, session)
  t.equal(second?.statusCode, 204, 'the one that wrote first')
  t.equal(first.statusCode, 401, 'the other finds the password changed')
  t.equal(first.json().code, 'invalid_credentials')
})

/** The backends of the app's pool (PostgreSQL): a connection it closed is missing from a later list. */
const poolConnections = async (app: App) =>
  (await dbAll(app, "select pid from pg_stat_activity where datname = current_database() and backend_type = 'client backend'")).map((row) => row.pid)

t.test('a password change whose session is signed out or disabled while it runs changes nothing', async (t) => {
  const endings: Array<[string, (app: App, session: SessionBody, admin: SessionBody) => Promise<unknown>]> = [
    ['signed out', (app, session) => app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(session.access_token), payload: {} })],
    ['disabled', (app, session, admin) => app.inject({ method: 'PATCH', url: `/admin/users/${session.user.id}`, headers: bearer(admin.access_token), payload: { disabled: true } })]
  ]
  for (const [ending, end] of endings) {
    const app = await build(t)
    const admin = await signupWithRoles(app, ['user', 'admin'])
    const session = await signup(app)
    const other = await login(app, session.user.email, TEST_PASSWORD)
    const stored = await dbGet(app, 'select password_hash from users where id = ?', session.user.id)
    // After the current password was checked and the new one hashed, before the write.
    before(app.usersRepository, 'changePassword', () => end(app, session, admin))
    const connections = TEST_DATABASE_URL ? await poolConnections(app) : []
    const changed = await changePassword(app, session)
    t.equal(changed.statusCode, 401, `${ending}: ${changed.body}`)
    t.equal(changed.json().code, 'invalid_token')
    t.same(await dbGet(app, 'select password_hash from users where id = ?', session.user.id), stored, `${ending}: the hash is unchanged`)
    if (TEST_DATABASE_URL) {
      const kept = await poolConnections(app)
      t.ok(connections.every((pid) => kept.includes(pid)), `${ending}: rolled back on purpose, its connection stays in the pool`)
    }
    if (ending === 'signed out') {
      t.equal((await refresh(app, other.json().refresh_token)).statusCode, 200, 'the other session was not revoked')
    }
  }
})

// Only PostgreSQL's row locks make the change wait for the disable to commit.
if (TEST_DATABASE_URL) {
  t.test('a password change waiting on an admin\'s disable of the account changes nothing', async (t) => {
    const app = await build(t)
    const session = await signup(app)
    const stored = await dbGet(app, 'select password_hash from users where id = ?', session.user.id)
    const admin = new pg.Client({ connectionString: app.config.databaseUrl })
    await admin.connect()
    t.teardown(() => admin.end())
    // What an admin's disable does, in its transaction: the user's row, then their sessions.
    await admin.query('begin')
    await admin.query('update users set disabled = true where id = $1', [session.user.id])
    const change = changePassword(app, session)
    const waiting = async () => (await admin.query(
      "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n
    for (let tries = 0; tries < 200 && await waiting() === 0; tries++) await sleep(20)
    t.equal(await waiting(), 1, 'the change waits for the row')
    await admin.query('update sessions set revoked_at = now() where user_id = $1', [session.user.id])
    await admin.query('commit')
    const changed = await change
    t.equal(changed.statusCode, 401, changed.body)
    t.equal(changed.json().code, 'invalid_token')
    t.same(await dbGet(app, 'select password_hash from users where id = ?', session.user.id), stored, 'the hash is unchanged')
  })
}

const refresh = (app: App, token: string) =>
  app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })
/**
 * A new user with `sessionCount` sessions, and an admin's request about them sent at once with each
 * session's refresh token twice (as a client retrying a lost answer sends it).
 */
async function adminRacingRefreshes (app: App, sessionCount: number, adminRequest: (userId: string) => InjectOptions) {
  const email = uniqueEmail('raced')
  const first = await signup(app, email)
  const sessions = [first, ...await Promise.all(Array.from({ length: sessionCount - 1 },
    async () => (await login(app, email, TEST_PASSWORD)).json() as SessionBody))]
  const [answer, ...refreshes] = await Promise.all([
    app.inject(adminRequest(first.user.id)),
    ...sessions.flatMap((session) => [refresh(app, session.refresh_token), refresh(app, session.refresh_token)])
  ])
  return { first, sessions, answer: answer!, refreshes }
}
/** A status and its error code, for messages that must not print tokens. */
const outcome = (answer: { statusCode: number, json (): { code?: string } }) =>
  `${answer.statusCode}${answer.statusCode >= 400 ? ` ${answer.json().code}` : ''}`

// On PostgreSQL these requests run on separate connections; taking their locks in different orders
// deadlocked them (500) before every writer locked the session first.
t.test('a grace-window retry of a rotated token racing a refresh of its child: one wins, never a 5xx', async (t) => {
  const app = await build(t)
  for (let round = 0; round < 12; round++) {
    const first = await signup(app)
    const child = (await refresh(app, first.refresh_token)).json() as SessionBody
    const answers = await Promise.all([refresh(app, first.refresh_token), refresh(app, child.refresh_token)])
    t.same(answers.map((answer) => answer.statusCode).sort(), [200, 401], `round ${round}: ${answers.map(outcome).join(', ')}`)
    t.ok(await dbCount(app, 'select count(*) as n from refresh_tokens where session_id = ? and used_at is null and revoked_at is null',
      tokenPayload(first.access_token).sid) <= 1, 'at most one live refresh token')
  }
})

t.test('an admin deleting a user while the user refreshes: the delete wins, never a 5xx', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  for (let round = 0; round < 10; round++) {
    const { first, answer: deleted, refreshes } = await adminRacingRefreshes(app, 3,
      (user) => ({ method: 'DELETE', url: `/admin/users/${user}`, headers: bearer(admin.access_token) }))
    t.equal(deleted.statusCode, 204, `round ${round}: ${outcome(deleted)}`)
    for (const answer of refreshes) t.ok([200, 401].includes(answer.statusCode), `round ${round}: ${outcome(answer)}`)
    t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ?', first.user.id), 0, 'no session outlives the user')
  }
})

// The role change and the revocation of the user's sessions are one transaction: however the
// refreshes interleave with it, no refresh token survives it and no access token reaches the account.
t.test('an admin changing a user\'s roles while the user refreshes: every session ends, never a 5xx', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  for (let round = 0; round < 10; round++) {
    const { first, sessions, answer: changed, refreshes } = await adminRacingRefreshes(app, 2,
      (user) => ({ method: 'PATCH', url: `/admin/users/${user}`, headers: bearer(admin.access_token), payload: { roles: ['user', 'member'] } }))
    t.equal(changed.statusCode, 200, `round ${round}: ${outcome(changed)}`)
    t.same(changed.json().roles, ['user', 'member'])
    for (const answer of refreshes) t.ok([200, 401].includes(answer.statusCode), `round ${round}: ${outcome(answer)}`)
    t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', first.user.id), 0,
      'no session outlives the change')
    const issued = refreshes.filter((answer) => answer.statusCode === 200).map((answer) => answer.json() as SessionBody)
    for (const session of [...sessions, ...issued]) {
      t.equal((await refresh(app, session.refresh_token)).statusCode, 401, `round ${round}: a refresh token from before or during the change is refused`)
      t.equal((await app.inject({ url: '/auth/me', headers: bearer(session.access_token) })).statusCode, 401,
        `round ${round}: its access token no longer reaches the account`)
    }
  }
})

t.test('a sign-in whose password changed and whose account was disabled after its check is told nothing about the account', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  before(app.sessionsRepository, 'open', async () => {
    const changed = await app.inject({
      method: 'POST',
      url: '/auth/password',
      headers: bearer(session.access_token),
      payload: { current_password: TEST_PASSWORD, new_password: 'a brand new passphrase' }
    })
    t.equal(changed.statusCode, 204)
    await dbRun(app, 'update users set disabled = ? where id = ?', true, session.user.id)
  })
  const response = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: TEST_PASSWORD } })
  // The old password is no longer the account's: user_disabled would confirm it once was.
  t.equal(response.statusCode, 401)
  t.equal(response.json().code, 'invalid_credentials')
})

t.test('an account deleted while its request is served gets the RFC 6750 invalid_token challenge', async (t) => {
  const app = await build(t)
  const challenge = 'Bearer realm="gatehouse", error="invalid_token", error_description="The account behind this access token no longer exists."'
  /** The caller deleted just before the repository method runs: after loadAccount read them. */
  const deletedBefore = async (label: string, caller: SessionBody, repository: object, method: string, request: InjectOptions) => {
    before(repository, method as never, () => dbRun(app, 'delete from users where id = ?', caller.user.id))
    const response = await app.inject({ ...request, headers: bearer(caller.access_token) })
    t.equal(response.statusCode, 401, label)
    t.equal(response.json().code, 'invalid_token', label)
    t.equal(response.headers['www-authenticate'], challenge, label)
  }
  const passwordChange: InjectOptions = { method: 'POST', url: '/auth/password', payload: { current_password: TEST_PASSWORD, new_password: 'another long passphrase' } }

  await deletedBefore('PATCH /auth/me', await signup(app), app.usersRepository, 'updateName', { method: 'PATCH', url: '/auth/me', payload: { name: 'Gone' } })
  await deletedBefore('POST /videos', await signupWithRoles(app, ['developer']), app.videosRepository, 'create',
    { method: 'POST', url: '/videos', payload: { title: 'Orphan', author: 'Nobody', url: 'https://example.com/v' } })
  t.equal(await dbCount(app, 'select count(*) as n from videos'), 0, 'no video without its owner')

  // Before the current password is read: no wrong password, none counted against the email.
  const counted: string[] = []
  const attempt = app.signInFailures.attempt.bind(app.signInFailures)
  app.signInFailures.attempt = async (account) => { counted.push(account); return attempt(account) }
  await deletedBefore('POST /auth/password, before its check', await signup(app), app.usersRepository, 'findPasswordHash', passwordChange)
  t.same(counted, [], 'and no attempt counted against the email')
  // While the new password is hashed: gone, not a wrong current password.
  await deletedBefore('POST /auth/password, before its write', await signup(app), app.usersRepository, 'changePassword', passwordChange)
})

t.test('an owner deleted while their change to a video waits is told their account is gone, on what they owned and on any other video', async (t) => {
  const app = await build(t)
  const challenge = 'Bearer realm="gatehouse", error="invalid_token", error_description="The account behind this access token no longer exists."'
  const publish = async (session: SessionBody) => (await app.inject({
    method: 'POST', url: '/videos', headers: bearer(session.access_token), payload: { title: 'Kept', author: 'Ada', url: 'https://example.com/v' }
  })).json() as { id: string }
  const other = await signupWithRoles(app, ['developer'])
  const others = await publish(other)

  for (const target of ['its former video', 'another\'s video', 'no such video']) {
    for (const [method, payload] of [['PATCH', { title: 'Changed' }], ['DELETE', undefined]] as const) {
      const owner = await signupWithRoles(app, ['developer'])
      const own = await publish(owner)
      const id = target === 'its former video' ? own.id : target === 'another\'s video' ? others.id : '00000000-0000-4000-8000-000000000000'
      // Deleted after loadAccount read the session, before the ownership check: the video outlives its owner.
      before(app.videosRepository, 'findOwner', () => dbRun(app, 'delete from users where id = ?', owner.user.id))
      const response = await app.inject({ method, url: `/videos/${id}`, headers: bearer(owner.access_token), ...(payload ? { payload } : {}) })
      t.equal(response.statusCode, 401, `${method} ${target}`)
      t.equal(response.json().code, 'invalid_token', `${method} ${target}`)
      t.equal(response.headers['www-authenticate'], challenge, `${method} ${target}`)
      t.same(await dbGet(app, 'select title, user_id from videos where id = ?', own.id), { title: 'Kept', user_id: null }, `${method} ${target}: its own video ownerless, unchanged`)
    }
  }
  t.same(await dbGet(app, 'select title from videos where id = ?', others.id), { title: 'Kept' }, 'the other\'s video unchanged')
  const owner = await signupWithRoles(app, ['developer'])
  const own = await publish(owner)
  const byOther = await app.inject({ method: 'PATCH', url: `/videos/${own.id}`, headers: bearer(other.access_token), payload: { title: 'Mine now?' } })
  t.equal(byOther.statusCode, 403, 'a live account is still refused with 403')
  t.equal(byOther.json().code, 'forbidden')
})

t.test('a video deleted between the ownership check and the change is not found, for a change and for a delete', async (t) => {
  const app = await build(t)
  const developer = await signupWithRoles(app, ['developer'])
  const publish = () => app.inject({
    method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { title: 'Soon gone', author: 'Ada', url: 'https://example.com/v' }
  })
  for (const [method, payload] of [['PATCH', { title: 'Renamed' }], ['DELETE', undefined]] as const) {
    const video = (await publish()).json() as { id: string }
    before(app.videosRepository, method === 'PATCH' ? 'update' : 'delete', () => dbRun(app, 'delete from videos where id = ?', video.id))
    const response = await app.inject({ method, url: `/videos/${video.id}`, headers: bearer(developer.access_token), ...(payload ? { payload } : {}) })
    t.equal(response.statusCode, 404, method)
    t.same(response.json().code, 'not_found')
    t.equal(response.json().message, 'No such resource.', 'what a request after the delete is told')
  }
})

t.test('a change in flight when its caller is signed out, disabled, demoted or deleted is not made: the ending is checked in the change\'s own transaction', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'], uniqueEmail('boss'))
  const asAdmin = (request: InjectOptions) => app.inject({ ...request, headers: bearer(admin.access_token) })
  const endings: Array<[string, (caller: SessionBody) => Promise<unknown>]> = [
    ['signed out', (caller) => app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(caller.access_token), payload: {} })],
    ['disabled', (caller) => asAdmin({ method: 'PATCH', url: `/admin/users/${caller.user.id}`, payload: { disabled: true } })],
    ['demoted', (caller) => asAdmin({ method: 'PATCH', url: `/admin/users/${caller.user.id}`, payload: { roles: ['user'] } })],
    ['deleted', (caller) => asAdmin({ method: 'DELETE', url: `/admin/users/${caller.user.id}` })]
  ]
  const ownVideo = async (caller: SessionBody) => (await app.inject({
    method: 'POST', url: '/videos', headers: bearer(caller.access_token), payload: { title: 'Kept', author: 'Ada', url: 'https://example.com/v' }
  })).json().id as string
  const videoTitles = async () => (await dbAll(app, 'select title from videos order by id')).map((row) => row.title)
  // Each write: its repository method, the caller's roles, the request, and what the database shows of it.
  const writes: Array<{ label: string, method: [object, string], roles: string[], send: (caller: SessionBody, video: string) => InjectOptions, state: (caller: SessionBody) => Promise<unknown> }> = [
    { label: 'PATCH /auth/me', method: [app.usersRepository, 'updateName'], roles: ['user', 'member'], send: () => ({ method: 'PATCH', url: '/auth/me', payload: { name: 'Changed' } }), state: async (caller) => (await dbGet(app, 'select name from users where id = ?', caller.user.id))?.name ?? 'gone' },
    { label: 'POST /clothes', method: [app.clothesRepository, 'create'], roles: ['user', 'admin'], send: () => ({ method: 'POST', url: '/clothes', payload: { name: 'Late', price: 100 } }), state: () => dbCount(app, 'select count(*) as n from clothes') },
    { label: 'POST /videos', method: [app.videosRepository, 'create'], roles: ['user', 'developer'], send: () => ({ method: 'POST', url: '/videos', payload: { title: 'Late', author: 'Ada', url: 'https://example.com/late' } }), state: videoTitles },
    { label: 'PATCH /videos/:id', method: [app.videosRepository, 'update'], roles: ['user', 'developer'], send: (_caller, video) => ({ method: 'PATCH', url: `/videos/${video}`, payload: { title: 'Late' } }), state: videoTitles },
    { label: 'DELETE /videos/:id', method: [app.videosRepository, 'delete'], roles: ['user', 'developer'], send: (_caller, video) => ({ method: 'DELETE', url: `/videos/${video}` }), state: videoTitles }
  ]
  for (const write of writes) {
    for (const [ending, end] of endings) {
      const caller = await signupWithRoles(app, write.roles)
      const video = await ownVideo(await signupWithRoles(app, ['user', 'developer']))
      // The caller's own video for the video changes (an owner may change it).
      await dbRun(app, 'update videos set user_id = ? where id = ?', caller.user.id, video)
      // The state a change sent after the ending would find: the ending's own effects included.
      const expected = async () => { await end(caller); return write.state(caller) }
      const [repository, name] = write.method
      let stateAfterEnding: unknown
      before(repository, name as never, async () => { stateAfterEnding = await expected() })
      const request = write.send(caller, video)
      const response = await app.inject({ ...request, headers: bearer(caller.access_token) })
      const label = `${write.label}, caller ${ending} meanwhile`
      t.equal(response.statusCode, 401, label)
      t.match(response.json(), {
        code: 'invalid_token',
        message: ending === 'deleted' ? 'The account behind this access token no longer exists.' : 'The session behind this access token has ended.'
      }, label)
      t.same(await write.state(caller), stateAfterEnding, `${label}: nothing changed after the ending`)
    }
  }
})

t.test('a change needing a permission is refused when the caller\'s stored roles lost it meanwhile, by hand', async (t) => {
  // Not through the API, whose role changes end the sessions: an operator's SQL, say.
  const app = await build(t)
  const publisher = await signupWithRoles(app, ['user', 'developer'])
  const published = await app.inject({
    method: 'POST', url: '/videos', headers: bearer(publisher.access_token), payload: { title: 'Kept', author: 'Ada', url: 'https://example.com/kept' }
  })
  const videoId: string = published.json().id
  // What each change would have changed, read before and after the refused request.
  const videoState = () => dbGet(app, 'select title, updated_at from videos where id = ?', videoId)
  const cases: Array<[string, string[], 'clothesRepository' | 'videosRepository', 'create' | 'update' | 'delete', InjectOptions, () => Promise<unknown>]> = [
    ['POST /clothes', ['user', 'admin'], 'clothesRepository', 'create', { method: 'POST', url: '/clothes', payload: { name: 'Late', price: 100 } }, () => dbCount(app, 'select count(*) as n from clothes')],
    ['POST /videos', ['user', 'developer'], 'videosRepository', 'create', { method: 'POST', url: '/videos', payload: { title: 'Late', author: 'Ada', url: 'https://example.com/late' } }, () => dbCount(app, 'select count(*) as n from videos')],
    // An admin changing someone else's video: videos:manage-any, not ownership, lets them.
    ['PATCH /videos/:id', ['user', 'admin'], 'videosRepository', 'update', { method: 'PATCH', url: `/videos/${videoId}`, payload: { title: 'Changed' } }, videoState],
    ['DELETE /videos/:id', ['user', 'admin'], 'videosRepository', 'delete', { method: 'DELETE', url: `/videos/${videoId}` }, videoState]
  ]
  for (const [label, roles, repository, method, request, state] of cases) {
    const caller = await signupWithRoles(app, roles)
    const stateBefore = await state()
    before(app[repository], method as never, () => dbRun(app, 'update users set roles = ? where id = ?', ['user'], caller.user.id))
    const response = await app.inject({ ...request, headers: bearer(caller.access_token) })
    t.equal(response.statusCode, 401, label)
    t.equal(response.json().code, 'invalid_token', label)
    t.same(await state(), stateBefore, `${label}: nothing changed`)
  }
})

t.test('an owner changes their video after their roles lost videos:publish, by hand', async (t) => {
  // Ownership, not a role, lets an owner change and delete what they published.
  const app = await build(t)
  const owner = await signupWithRoles(app, ['user', 'developer'])
  const published = await app.inject({
    method: 'POST', url: '/videos', headers: bearer(owner.access_token), payload: { title: 'Mine', author: 'Ada', url: 'https://example.com/mine' }
  })
  const url = `/videos/${published.json().id}`
  const demote = () => dbRun(app, 'update users set roles = ? where id = ?', ['user'], owner.user.id)
  before(app.videosRepository, 'update', demote)
  const changed = await app.inject({ method: 'PATCH', url, headers: bearer(owner.access_token), payload: { title: 'Still mine' } })
  t.equal(changed.statusCode, 200)
  t.equal(changed.json().title, 'Still mine')
  before(app.videosRepository, 'delete', demote)
  t.equal((await app.inject({ method: 'DELETE', url, headers: bearer(owner.access_token) })).statusCode, 204)
  t.equal(await dbCount(app, 'select count(*) as n from videos'), 0)
})

// Only PostgreSQL lets a change wait on a row another transaction holds; SQLite runs one writer at a time.
if (TEST_DATABASE_URL) {
  t.test('on PostgreSQL, a change waits for its caller\'s sign-out or disable in progress, and is refused once that commits', async (t) => {
    const url = await freshPostgresUrl(TEST_DATABASE_URL!)
    const app = await build(t, { DATABASE_URL: url })
    const ending = new pg.Client({ connectionString: url })
    await ending.connect()
    t.teardown(() => ending.end())
    const endings: Array<[string, (caller: SessionBody) => [string, unknown[]]]> = [
      ['a sign-out', (caller) => ['update sessions set revoked_at = now() where id = $1', [tokenPayload(caller.access_token).sid]]],
      ['a disable', (caller) => ['update users set disabled = true where id = $1', [caller.user.id]]]
    ]
    for (const [label, statement] of endings) {
      const caller = await signupWithRoles(app, ['user', 'developer'])
      await ending.query('begin')
      await ending.query(...statement(caller))
      let answered = false
      const publishing = app.inject({
        method: 'POST', url: '/videos', headers: bearer(caller.access_token), payload: { title: 'Late', author: 'Ada', url: 'https://example.com/late' }
      }).then((response) => { answered = true; return response })
      await sleep(300)
      t.notOk(answered, `${label} in progress: the change waits for it`)
      await ending.query('commit')
      const response = await publishing
      t.equal(response.statusCode, 401, `${label} committed: the change is refused`)
      t.equal(response.json().code, 'invalid_token')
      t.equal(await dbCount(app, 'select count(*) as n from videos where user_id = ?', caller.user.id), 0, 'and not made')
    }
  })
}

if (TEST_DATABASE_URL) {
  t.test('on PostgreSQL, one user\'s changes at once do not deadlock: each takes the user\'s row before its sessions\'', async (t) => {
    const url = await freshPostgresUrl(TEST_DATABASE_URL!)
    const app = await build(t, { DATABASE_URL: url })
    const user = await signupWithRoles(app, ['user', 'admin'])
    // Profile changes and the admin's own changes at once: each holds the user's row in turn.
    for (let round = 0; round < 10; round++) {
      const answers = await Promise.all([
        ...Array.from({ length: 4 }, (_, index) => app.inject({ method: 'PATCH', url: '/auth/me', headers: bearer(user.access_token), payload: { name: `Name ${round}-${index}` } })),
        app.inject({ method: 'PATCH', url: `/admin/users/${user.user.id}`, headers: bearer(user.access_token), payload: { name: `Admin ${round}` } })
      ])
      t.same(answers.map((answer) => answer.statusCode), [200, 200, 200, 200, 200], `round ${round}: every change made, none a deadlock's 503`)
    }

    // A global sign-out while a password change of another session holds its own session and
    // revokes the others (as changePassword does, here by hand so the moment is certain).
    const email = uniqueEmail('pw')
    const first = await signup(app, email)
    const second = (await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).json() as SessionBody
    const change = new pg.Client({ connectionString: url })
    await change.connect()
    t.teardown(() => change.end())
    await change.query('begin')
    await change.query('update users set updated_at = now() where id = $1', [first.user.id])
    await change.query('select id from sessions where id = $1 for no key update', [tokenPayload(second.access_token).sid])
    const logout = app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(first.access_token), payload: { scope: 'global' } })
    await sleep(300)
    await change.query('update sessions set revoked_at = now() where user_id = $1 and id <> $2 and revoked_at is null', [first.user.id, tokenPayload(second.access_token).sid])
    await change.query('commit')
    t.equal((await logout).statusCode, 204, 'the sign-out waited for the change and then ended every session')
    t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', first.user.id), 0)
  })
}
