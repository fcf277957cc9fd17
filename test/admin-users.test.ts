import type { LightMyRequestResponse } from 'fastify'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp, type App } from '../src/app.ts'
import { hashPassword } from '../src/auth/passwords.ts'
import { loadConfig } from '../src/config.ts'
import { ADVISORY_LOCKS } from '../src/db/postgres/open.ts'
import { TEST_DATABASE_URL, TEST_ENV, TEST_PASSWORD, type SessionBody, appWithLog, before, bearer, build, freshPostgresUrl, dbAll, dbCount, dbGet, dbRun, logLines, signup, tokenPayload, uniqueEmail, signupWithRoles, refuseSessionUpdates } from './helper.ts'

const FORBIDDEN_CHALLENGE = 'Bearer realm="gatehouse", error="insufficient_scope"'
const ADMIN_USER_KEYS = ['created_at', 'disabled', 'email', 'id', 'name', 'roles', 'updated_at']
const UNKNOWN_ID = '00000000-0000-4000-8000-000000000000'

const asAdmin = (app: App, email = uniqueEmail('admin')) => signupWithRoles(app, ['user', 'admin'], email)

const login = (app: App, email: string, password = TEST_PASSWORD) =>
  app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
const refresh = (app: App, token: string) =>
  app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })
const me = (app: App, token: string) => app.inject({ url: '/auth/me', headers: bearer(token) })

interface UserRow { id: string, email: string, name: string | null, roles: string, password_hash: string, disabled: number, created_at: number, updated_at: number }
const userRow = async (app: App, id: string) => await dbGet(app, 'select * from users where id = ?', id) as UserRow | undefined
const rolesInDb = async (app: App, id: string) => JSON.parse((await userRow(app, id))!.roles) as string[]
/** Enabled users whose roles include admin; the roles are filtered here, alike on both databases. */
const enabledAdmins = async (app: App) => (await dbAll(app, 'select id, roles from users where disabled = ?', false) as Array<{ id: string, roles: string }>)
  .filter((row) => (JSON.parse(row.roles) as string[]).includes('admin'))
  .map((row) => row.id)
const activeSessions = (app: App, userId: string) =>
  dbCount(app, 'select count(*) as n from sessions where user_id = ? and revoked_at is null', userId)

function assertNoSecrets (t: Test, response: LightMyRequestResponse) {
  t.notMatch(response.body, /password_hash|passwordHash|\$argon2/, 'no password hash in the response')
}

async function assertRevoked (t: Test, app: App, session: SessionBody) {
  // Counted first: a refresh of a disabled user's token revokes its session itself.
  t.equal(await activeSessions(app, session.user.id), 0, 'the change itself revoked every session of theirs')
  const [refreshed, current] = await Promise.all([refresh(app, session.refresh_token), me(app, session.access_token)])
  t.equal(refreshed.statusCode, 401, 'their refresh token no longer works')
  t.equal(refreshed.json().code, 'invalid_refresh_token')
  t.equal(current.statusCode, 401, 'their access token no longer reaches /auth/me')
}

t.test('admin routes decide on the roles read from the database, not the token\'s', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  // Demoted outside the API (SQL, a script): the session stays open, the token still says admin.
  await dbRun(app, 'update users set roles = ? where id = ?', ['user'], admin.user.id)
  t.same(tokenPayload(admin.access_token).roles, ['user', 'admin'])
  const response = await app.inject({ url: '/admin/users', headers: bearer(admin.access_token) })
  t.equal(response.statusCode, 403)
  t.equal(response.json().code, 'forbidden')
})

t.test('admin answers hold other people\'s data: never cached', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  for (const url of ['/admin/users', `/admin/users/${admin.user.id}`, '/admin/users?cursor=nonsense']) {
    const response = await app.inject({ url, headers: bearer(admin.access_token) })
    t.equal(response.headers['cache-control'], 'no-store', `${url}: ${response.statusCode}`)
  }
})

t.test('GET /admin/users pages through every user once, in creation then id order', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const hash = await hashPassword('pagination passphrase')
  // Later inserts get earlier times and groups of three share a millisecond: the order is
  // created_at then id, not insertion order.
  const base = Date.now() - 3_600_000
  for (let i = 0; i < 25; i++) {
    const user = await app.usersRepository.create({ email: `page-${String(i).padStart(2, '0')}@example.com`, passwordHash: hash, roles: ['user'] })
    await dbRun(app, 'update users set created_at = ? where id = ?', new Date(base + Math.floor((24 - i) / 3) * 1000), user!.id)
  }
  const all = await dbAll(app, 'select id, created_at from users') as Array<{ id: string, created_at: number }>
  t.equal(all.length, 26)
  const expected = all
    .sort((a, b) => a.created_at - b.created_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((row) => row.id)
  t.equal(expected.at(-1), admin.user.id, 'the admin signed up last')

  const pageThrough = async (limit: number, query = '') => {
    const seen: string[] = []
    const sizes: number[] = []
    let cursor: string | null = null
    for (let i = 0; i < 30; i++) {
      const url: string = `/admin/users?limit=${limit}${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`
      const response = await app.inject({ url, headers: bearer(admin.access_token) })
      t.equal(response.statusCode, 200, url)
      assertNoSecrets(t, response)
      const body = response.json() as { users: Array<Record<string, unknown>>, next_cursor: string | null }
      t.same(Object.keys(body).sort(), ['next_cursor', 'users'])
      for (const user of body.users) t.same(Object.keys(user).sort(), ADMIN_USER_KEYS)
      seen.push(...body.users.map((user) => user.id as string))
      sizes.push(body.users.length)
      cursor = body.next_cursor
      if (cursor === null) break
      t.type(cursor, 'string')
    }
    return { seen, sizes }
  }

  const bySeven = await pageThrough(7)
  t.same(bySeven.sizes, [7, 7, 7, 5], 'full pages, then the rest; next_cursor null on the last')
  t.same(bySeven.seen, expected, 'every user exactly once, in created_at then id order')
  t.equal(new Set(bySeven.seen).size, 26)

  const byThirteen = await pageThrough(13)
  t.same(byThirteen.sizes, [13, 13], 'an exactly full last page still ends with next_cursor null, no empty page')
  t.same(byThirteen.seen, expected)

  const firstPage = await app.inject({ url: '/admin/users', headers: bearer(admin.access_token) })
  t.equal(firstPage.json().users.length, 20, 'default limit 20')
  t.type(firstPage.json().next_cursor, 'string')
  t.same(firstPage.json().users.map((user: { id: string }) => user.id), expected.slice(0, 20))
  const whole = await app.inject({ url: '/admin/users?limit=100', headers: bearer(admin.access_token) })
  t.equal(whole.json().users.length, 26)
  t.equal(whole.json().next_cursor, null)
  t.match(whole.json().users.find((user: { id: string }) => user.id === admin.user.id), { roles: ['user', 'admin'], disabled: false })
})

t.test('GET /admin/users refuses bad limits and cursors', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  for (const limit of ['0', '101', 'abc', '-1', '7.5', '0x10', '1e1', '+5', '10.0', '%205', '5%20', '']) {
    const response = await app.inject({ url: `/admin/users?limit=${limit}`, headers: bearer(admin.access_token) })
    t.equal(response.statusCode, 400, `limit=${limit}`)
    t.equal(response.json().code, 'validation_error', `limit=${limit}`)
    t.match(response.json().message, /limit/)
  }
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const cursors = {
    'not base64 JSON': 'garbage',
    punctuation: '!!!!',
    'an object': b64({ created_at: 1, id: 'x' }),
    'one element': b64([1]),
    'a string time': b64(['yesterday', UNKNOWN_ID]),
    null: b64(null),
    'a time beyond the Date range': b64([Number.MAX_SAFE_INTEGER, UNKNOWN_ID]),
    'an id that is not a user id': b64([1, 'x']),
    'an id with a NUL character (PostgreSQL refuses it in text)': b64([1, '\u0000']),
    'a user id and more': b64([1, `${UNKNOWN_ID}\u0000`])
  }
  for (const [label, cursor] of Object.entries(cursors)) {
    const response = await app.inject({ url: `/admin/users?cursor=${encodeURIComponent(cursor)}`, headers: bearer(admin.access_token) })
    t.equal(response.statusCode, 400, `cursor: ${label}`)
    t.equal(response.json().code, 'invalid_cursor', `cursor: ${label}`)
  }
  const huge = await app.inject({ url: `/admin/users?cursor=${'a'.repeat(500)}`, headers: bearer(admin.access_token) })
  t.equal(huge.statusCode, 400, 'an oversized cursor')
})

t.test('GET /admin/users?email= is a case-insensitive, literal substring filter', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app, 'boss@example.com')
  const hash = await hashPassword('filter passphrase')
  const make = async (email: string) => (await app.usersRepository.create({ email, passwordHash: hash, roles: ['user'] }))!.id
  const ids = {
    underscore: await make('a_b@filter.test'),
    x: await make('axb@filter.test'),
    percent: await make('a%b@filter.test'),
    zz: await make('azzb@filter.test'),
    other: await make('someone@example.org')
  }
  const filter = async (email: string, extra = '') => {
    const response = await app.inject({ url: `/admin/users?email=${encodeURIComponent(email)}${extra}`, headers: bearer(admin.access_token) })
    t.equal(response.statusCode, 200, email)
    return response.json() as { users: Array<{ id: string, email: string }>, next_cursor: string | null }
  }

  t.same((await filter('EXAMPLE')).users.map((user) => user.id).sort(), [admin.user.id, ids.other].sort(), 'upper case matches lower-case emails')
  t.same((await filter('Filter.Test')).users.map((user) => user.id).sort(), [ids.underscore, ids.x, ids.percent, ids.zz].sort())
  t.same((await filter('a_b')).users.map((user) => user.id), [ids.underscore], '_ is literal, not a one-character wildcard')
  t.same((await filter('a%b')).users.map((user) => user.id), [ids.percent], '% is literal, not a wildcard')
  t.same((await filter('%')).users.map((user) => user.id), [ids.percent])
  const none = await filter('nobody-has-this')
  t.same(none, { users: [], next_cursor: null })

  const first = await filter('filter.test', '&limit=3')
  t.equal(first.users.length, 3)
  t.type(first.next_cursor, 'string')
  const second = await filter('filter.test', `&limit=3&cursor=${encodeURIComponent(first.next_cursor!)}`)
  t.equal(second.users.length, 1, 'the filter applies across pages')
  t.equal(second.next_cursor, null)
  t.same([...first.users, ...second.users].map((user) => user.id).sort(), [ids.underscore, ids.x, ids.percent, ids.zz].sort())
})

t.test('GET /admin/users/:id shows one user with disabled; unknown 404, malformed 400', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const member = await signupWithRoles(app, ['user', 'member'])

  const found = await app.inject({ url: `/admin/users/${member.user.id}`, headers: bearer(admin.access_token) })
  t.equal(found.statusCode, 200)
  assertNoSecrets(t, found)
  t.same(Object.keys(found.json()).sort(), ADMIN_USER_KEYS)
  t.match(found.json(), { id: member.user.id, email: member.user.email, roles: ['user', 'member'], disabled: false, name: null })

  const unknown = await app.inject({ url: `/admin/users/${UNKNOWN_ID}`, headers: bearer(admin.access_token) })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'not_found')
  const malformed = await app.inject({ url: '/admin/users/42', headers: bearer(admin.access_token) })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'validation_error')

  const forbidden = await app.inject({ url: `/admin/users/${admin.user.id}`, headers: bearer(member.access_token) })
  t.equal(forbidden.statusCode, 403)
  t.equal(forbidden.json().code, 'forbidden')
  t.equal(forbidden.headers['www-authenticate'], FORBIDDEN_CHALLENGE)
})

t.test('PATCH /admin/users/:id roles: replaces the extra roles, keeps user, revokes the sessions', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const email = uniqueEmail('target')
  const target = await signupWithRoles(app, ['user', 'developer'], email)

  const patched = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['member'] } })
  t.equal(patched.statusCode, 200)
  assertNoSecrets(t, patched)
  t.same(Object.keys(patched.json()).sort(), ADMIN_USER_KEYS)
  t.same(patched.json().roles, ['user', 'member'], 'developer replaced by member; user kept')
  t.same(await rolesInDb(app, target.user.id), ['user', 'member'])
  await assertRevoked(t, app, target)
  t.equal(await activeSessions(app, target.user.id), 0)

  const again = await login(app, email)
  t.equal(again.statusCode, 200)
  t.same(tokenPayload(again.json().access_token).roles, ['user', 'member'], 'a new sign-in carries the new roles')

  const canonical = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['admin', 'developer', 'user'] } })
  t.same(canonical.json().roles, ['user', 'developer', 'admin'], 'stored in canonical order')
  const everyRole = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['user', 'member', 'developer', 'admin'] } })
  t.equal(everyRole.statusCode, 200, 'all four roles, user included, may be sent')
  t.same(everyRole.json().roles, ['user', 'member', 'developer', 'admin'])
  t.same(await rolesInDb(app, target.user.id), ['user', 'member', 'developer', 'admin'])
  const cleared = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { roles: [] } })
  t.equal(cleared.statusCode, 200)
  t.same(cleared.json().roles, ['user'], 'an empty list leaves just user')
  t.same(await rolesInDb(app, target.user.id), ['user'])

  const before = await userRow(app, target.user.id)
  const invalid: Array<[string, Record<string, unknown>, string?]> = [
    ['unknown role', { roles: ['superuser'] }, 'body/roles/0 must be one of "user", "member", "developer", "admin"'],
    ['duplicate roles', { roles: ['member', 'member'] }],
    ['roles not a list', { roles: 'admin' }],
    ['empty change', {}],
    ['email is not editable', { email: 'new@example.com' }],
    ['password_hash is not editable', { password_hash: 'x' }],
    ['disabled not a boolean', { disabled: 'yes' }],
    ['empty name', { name: '' }],
    ['101-character name', { name: 'n'.repeat(101) }]
  ]
  for (const [label, payload, message] of invalid) {
    const response = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'validation_error', label)
    if (message) t.equal(response.json().message, message, `${label}: the message lists the allowed values`)
  }
  t.same(await userRow(app, target.user.id), before, 'refused changes change nothing')

  const unknown = await app.inject({ method: 'PATCH', url: `/admin/users/${UNKNOWN_ID}`, headers: bearer(admin.access_token), payload: { name: 'x' } })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'not_found')
})

t.test('PATCH disabled revokes the sessions and blocks sign-in; a name change alone revokes nothing', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const email = uniqueEmail('target')
  const target = await signup(app, email)

  const renamed = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { name: 'Renamed' } })
  t.equal(renamed.statusCode, 200)
  t.equal(renamed.json().name, 'Renamed')
  t.equal((await userRow(app, target.user.id))!.name, 'Renamed')
  t.equal(await activeSessions(app, target.user.id), 1, 'a name change keeps the sessions')
  t.equal((await me(app, target.access_token)).statusCode, 200)
  const refreshed = await refresh(app, target.refresh_token)
  t.equal(refreshed.statusCode, 200)
  const live = refreshed.json() as SessionBody

  const sameRoles = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['user'] } })
  t.equal(sameRoles.statusCode, 200)
  t.equal(await activeSessions(app, target.user.id), 1, 'setting the same roles is no role change')

  const disabled = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { disabled: true } })
  t.equal(disabled.statusCode, 200)
  t.equal(disabled.json().disabled, true)
  t.equal((await userRow(app, target.user.id))!.disabled, 1)
  await assertRevoked(t, app, live)
  t.equal(await activeSessions(app, target.user.id), 0)

  const blocked = await login(app, email)
  t.equal(blocked.statusCode, 403)
  t.equal(blocked.json().code, 'user_disabled')
  const wrong = await login(app, email, 'not the password at all')
  t.equal(wrong.statusCode, 401, 'a wrong password still says nothing about the account')
  t.equal(wrong.json().code, 'invalid_credentials')
  const shown = await app.inject({ url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token) })
  t.equal(shown.json().disabled, true)

  const enabled = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload: { disabled: false } })
  t.equal(enabled.statusCode, 200)
  t.equal((await login(app, email)).statusCode, 200, 're-enabled accounts sign in again')
})

t.test('a demoted admin loses admin at once and in every new token', async (t) => {
  const app = await build(t)
  const keeper = await asAdmin(app)
  const email = uniqueEmail('demoted')
  const demoted = await asAdmin(app, email)
  t.equal((await app.inject({ url: '/admin/users', headers: bearer(demoted.access_token) })).statusCode, 200)

  const response = await app.inject({ method: 'PATCH', url: `/admin/users/${demoted.user.id}`, headers: bearer(keeper.access_token), payload: { roles: ['member'] } })
  t.equal(response.statusCode, 200)
  t.same(response.json().roles, ['user', 'member'])
  await assertRevoked(t, app, demoted)
  const stale = await app.inject({ url: '/admin/users', headers: bearer(demoted.access_token) })
  t.equal(stale.statusCode, 401, 'the old admin token is refused on admin routes at once')

  const again = await login(app, email)
  t.equal(again.statusCode, 200)
  const roles = tokenPayload(again.json().access_token).roles as string[]
  t.notOk(roles.includes('admin'), 'the new token lacks admin')
  t.same(roles, ['user', 'member'])
  const list = await app.inject({ url: '/admin/users', headers: bearer(again.json().access_token) })
  t.equal(list.statusCode, 403)
  t.equal(list.json().code, 'forbidden')
  t.equal(list.headers['www-authenticate'], FORBIDDEN_CHALLENGE)
  t.same(await enabledAdmins(app), [keeper.user.id])
})

t.test('the last enabled admin cannot demote, disable or delete themself', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  // A disabled admin is no admin for this rule.
  const dormant = await asAdmin(app)
  await dbRun(app, 'update users set disabled = ? where id = ?', true, dormant.user.id)
  const before = await userRow(app, admin.user.id)

  const attempts: Array<[string, 'PATCH' | 'DELETE', Record<string, unknown> | undefined]> = [
    ['demote to member', 'PATCH', { roles: ['member'] }],
    ['drop every role', 'PATCH', { roles: [] }],
    ['disable', 'PATCH', { disabled: true }],
    ['demote and rename', 'PATCH', { roles: ['user'], name: 'Nobody' }],
    ['delete', 'DELETE', undefined]
  ]
  for (const [label, method, payload] of attempts) {
    const response = await app.inject({ method, url: `/admin/users/${admin.user.id}`, headers: bearer(admin.access_token), ...(payload ? { payload } : {}) })
    t.equal(response.statusCode, 409, label)
    t.equal(response.json().code, 'last_admin', label)
    t.same(await userRow(app, admin.user.id), before, `${label}: nothing changed`)
    t.equal(await activeSessions(app, admin.user.id), 1, `${label}: the session is untouched`)
  }
  t.equal((await me(app, admin.access_token)).statusCode, 200)
  const rename = await app.inject({ method: 'PATCH', url: `/admin/users/${admin.user.id}`, headers: bearer(admin.access_token), payload: { name: 'Still admin' } })
  t.equal(rename.statusCode, 200, 'changes that keep them admin are fine')
  t.same(rename.json().roles, ['user', 'admin'])
  t.equal(await activeSessions(app, admin.user.id), 1)
})

t.test('with two admins one can demote the other; then the remaining one is protected', async (t) => {
  const app = await build(t)
  const first = await asAdmin(app)
  const second = await asAdmin(app)
  const third = await asAdmin(app)

  const deleted = await app.inject({ method: 'DELETE', url: `/admin/users/${third.user.id}`, headers: bearer(first.access_token) })
  t.equal(deleted.statusCode, 204, 'an admin may delete another admin while one remains')
  const demoted = await app.inject({ method: 'PATCH', url: `/admin/users/${second.user.id}`, headers: bearer(first.access_token), payload: { roles: [] } })
  t.equal(demoted.statusCode, 200)
  t.same(demoted.json().roles, ['user'])
  t.same(await enabledAdmins(app), [first.user.id])

  const before = await userRow(app, first.user.id)
  for (const payload of [{ roles: ['developer'] }, { disabled: true }]) {
    const response = await app.inject({ method: 'PATCH', url: `/admin/users/${first.user.id}`, headers: bearer(first.access_token), payload })
    t.equal(response.statusCode, 409, JSON.stringify(payload))
    t.equal(response.json().code, 'last_admin')
  }
  const selfDelete = await app.inject({ method: 'DELETE', url: `/admin/users/${first.user.id}`, headers: bearer(first.access_token) })
  t.equal(selfDelete.statusCode, 409)
  t.equal(selfDelete.json().code, 'last_admin')
  t.same(await userRow(app, first.user.id), before)
  t.same(await enabledAdmins(app), [first.user.id])
})

t.test('two admins demoting each other at once: exactly one wins', async (t) => {
  const scenarios: Array<[string, 'PATCH' | 'DELETE', Record<string, unknown> | undefined, number]> = [
    ['demote', 'PATCH', { roles: ['member'] }, 200],
    ['disable', 'PATCH', { disabled: true }, 200],
    ['delete', 'DELETE', undefined, 204]
  ]
  for (const [label, method, payload, success] of scenarios) {
    for (let round = 0; round < 3; round++) {
      const app = await build(t)
      const a = await asAdmin(app)
      const b = await asAdmin(app)
      const send = (caller: SessionBody, target: SessionBody) => app.inject({
        method,
        url: `/admin/users/${target.user.id}`,
        headers: bearer(caller.access_token),
        ...(payload ? { payload } : {})
      })
      const responses = await Promise.all([send(a, b), send(b, a)])
      const statuses = responses.map((response) => response.statusCode)
      t.equal(statuses.filter((status) => status === success).length, 1, `${label} round ${round}: one success (${statuses.join()})`)
      const loser = responses.find((response) => response.statusCode !== success)
      t.ok(loser && [401, 409].includes(loser.statusCode), `${label} round ${round}: the other gets 409 or 401`)
      if (loser?.statusCode === 409) t.equal(loser.json().code, 'last_admin')
      const admins = await enabledAdmins(app)
      t.equal(admins.length, 1, `${label} round ${round}: exactly one enabled admin remains`)
      const winner = responses[0]!.statusCode === success ? a : b
      t.same(admins, [winner.user.id], 'the winner is that admin')
    }
  }
})

t.test('an admin demoted, disabled, deleted or signed out while their change waits cannot make it', async (t) => {
  // Three admins, so last_admin never decides: the acting admin's own state does.
  const endings: Array<[string, (app: App, other: SessionBody, actor: SessionBody) => Promise<LightMyRequestResponse>]> = [
    ['demoted', (app, other, actor) => app.inject({ method: 'PATCH', url: `/admin/users/${actor.user.id}`, headers: bearer(other.access_token), payload: { roles: ['member'] } })],
    ['disabled', (app, other, actor) => app.inject({ method: 'PATCH', url: `/admin/users/${actor.user.id}`, headers: bearer(other.access_token), payload: { disabled: true } })],
    ['deleted', (app, other, actor) => app.inject({ method: 'DELETE', url: `/admin/users/${actor.user.id}`, headers: bearer(other.access_token) })],
    ['signed out', (app, _other, actor) => app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(actor.access_token), payload: {} })]
  ]
  const changes: Array<['PATCH' | 'DELETE', 'adminUpdate' | 'adminDelete']> = [['PATCH', 'adminUpdate'], ['DELETE', 'adminDelete']]
  for (const [ending, end] of endings) {
    for (const [method, repositoryMethod] of changes) {
      const app = await build(t)
      const [actor, other] = [await asAdmin(app), await asAdmin(app)]
      await asAdmin(app)
      const target = await signup(app)
      // After the request's own checks passed (loadAccount, the permission), before its transaction.
      before(app.usersRepository, repositoryMethod, async () => {
        const ended = await end(app, other, actor)
        t.ok([200, 204].includes(ended.statusCode), `${ending}: ${ended.body}`)
      })
      const response = await app.inject({
        method,
        url: `/admin/users/${target.user.id}`,
        headers: bearer(actor.access_token),
        ...(method === 'PATCH' ? { payload: { roles: ['admin'] } } : {})
      })
      t.equal(response.statusCode, 401, `${method} by an admin ${ending} meanwhile`)
      t.equal(response.json().code, 'invalid_token')
      const description = ending === 'deleted' ? 'The account behind this access token no longer exists.' : 'The session behind this access token has ended.'
      t.equal(response.headers['www-authenticate'], `Bearer realm="gatehouse", error="invalid_token", error_description="${description}"`)
      const stored = await dbGet(app, 'select roles from users where id = ?', target.user.id)
      t.ok(stored, `${method} by an admin ${ending} meanwhile: the user is still there`)
      t.same(JSON.parse(String(stored?.roles)), ['user'], `${method} by an admin ${ending} meanwhile: their roles are unchanged`)
    }
  }
})

t.test('an admin whose roles lose admin while their change waits cannot make it, though their session stays open', async (t) => {
  // Not through the API, whose role changes revoke the sessions too: an operator's SQL, say. The
  // transaction re-reads the acting admin's roles, not only whether their session is open.
  for (const [method, repositoryMethod] of [['PATCH', 'adminUpdate'], ['DELETE', 'adminDelete']] as const) {
    const app = await build(t)
    const [actor] = [await asAdmin(app), await asAdmin(app)]
    const target = await signup(app)
    before(app.usersRepository, repositoryMethod, () => dbRun(app, 'update users set roles = ? where id = ?', ['user', 'member'], actor.user.id))
    const response = await app.inject({
      method,
      url: `/admin/users/${target.user.id}`,
      headers: bearer(actor.access_token),
      ...(method === 'PATCH' ? { payload: { roles: ['admin'] } } : {})
    })
    t.equal(response.statusCode, 401, `${method}: ${response.body}`)
    t.equal(response.json().code, 'invalid_token')
    t.equal(await activeSessions(app, actor.user.id), 1, `${method}: the actor's session was left open`)
    const stored = await dbGet(app, 'select roles from users where id = ?', target.user.id)
    t.ok(stored, `${method}: the user is still there`)
    t.same(JSON.parse(String(stored?.roles)), ['user'], `${method}: their roles are unchanged`)
  }
})

// Only PostgreSQL lets two transactions wait on one another; SQLite runs one writer at a time.
if (TEST_DATABASE_URL) {
  t.test('an admin signed out while their change waits for the admins lock cannot make it, whatever the default isolation', async (t) => {
    const base = await freshPostgresUrl(TEST_DATABASE_URL!)
    // The database's default as an operator may set it: repeatable read would read from before the wait.
    for (const isolation of ['read committed', 'repeatable read']) {
      const url = new URL(base)
      url.searchParams.set('options', `-c default_transaction_isolation=${isolation.replace(' ', '\\ ')}`)
      const app = await build(t, { DATABASE_URL: url.toString() })
      t.same(await dbAll(app, 'show default_transaction_isolation'), [{ default_transaction_isolation: isolation }])
      const [actor] = [await asAdmin(app), await asAdmin(app)]
      const target = await signup(app)
      const holder = new pg.Client({ connectionString: base })
      await holder.connect()
      t.teardown(() => holder.end())
      await holder.query('begin')
      await holder.query('select pg_advisory_xact_lock($1)', [ADVISORY_LOCKS.admins])
      const change = app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(actor.access_token), payload: { roles: ['admin'] } })
      const waiting = async () => (await holder.query(
        "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event = 'advisory'")).rows[0].n
      for (let tries = 0; tries < 100 && await waiting() === 0; tries++) await sleep(20)
      t.equal(await waiting(), 1, `${isolation}: the change waits for the lock`)
      const logout = await app.inject({ method: 'POST', url: '/auth/logout', headers: bearer(actor.access_token), payload: {} })
      t.equal(logout.statusCode, 204)
      await holder.query('commit')
      const response = await change
      t.equal(response.statusCode, 401, `${isolation}: ${response.body}`)
      t.same(JSON.parse(String((await dbGet(app, 'select roles from users where id = ?', target.user.id))?.roles)), ['user'], `${isolation}: not promoted`)
    }
  })
}

t.test('DELETE /admin/users/:id removes the user and their sessions; their videos stay, ownerless', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const email = uniqueEmail('leaving')
  const developer = await signupWithRoles(app, ['user', 'developer'], email)
  const second = (await login(app, email)).json() as SessionBody
  const published = await app.inject({
    method: 'POST',
    url: '/videos',
    headers: bearer(developer.access_token),
    payload: { title: 'Legacy', author: 'Leaver', url: 'https://videos.example.com/legacy.mp4' }
  })
  t.equal(published.statusCode, 201)
  const videoId = published.json().id
  const sessionIds = (await dbAll(app, 'select id from sessions where user_id = ?', developer.user.id) as Array<{ id: string }>).map((row) => row.id)
  t.equal(sessionIds.length, 2)

  const response = await app.inject({ method: 'DELETE', url: `/admin/users/${developer.user.id}`, headers: bearer(admin.access_token) })
  t.equal(response.statusCode, 204)
  t.equal(response.body, '')
  t.equal(await userRow(app, developer.user.id), undefined, 'the row is gone')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ?', developer.user.id), 0, 'sessions gone')
  const tokens = await dbCount(app, `select count(*) as n from refresh_tokens where session_id in (${sessionIds.map(() => '?').join()})`, ...sessionIds)
  t.equal(tokens, 0, 'refresh tokens gone')
  t.same(await dbGet(app, 'select user_id, title from videos where id = ?', videoId), { user_id: null, title: 'Legacy' }, 'the video survives with user_id null')
  const listed = (await app.inject({ url: '/videos' })).json().find((video: { id: string }) => video.id === videoId)
  t.match(listed, { id: videoId, user_id: null })

  for (const session of [developer, second]) await assertRevoked(t, app, session)
  const signIn = await login(app, email)
  t.equal(signIn.statusCode, 401)
  t.equal(signIn.json().code, 'invalid_credentials')

  const again = await app.inject({ method: 'DELETE', url: `/admin/users/${developer.user.id}`, headers: bearer(admin.access_token) })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'not_found')
  const malformed = await app.inject({ method: 'DELETE', url: '/admin/users/not-a-uuid', headers: bearer(admin.access_token) })
  t.equal(malformed.statusCode, 400)
})

t.test('ADMIN_EMAIL and ADMIN_PASSWORD bootstrap the first admin', async (t) => {
  const adminPassword = 'a long admin passphrase'

  t.test('creates the admin at start when none exists', async (t) => {
    const app = await build(t, { ADMIN_EMAIL: '  Boss@Example.COM ', ADMIN_PASSWORD: adminPassword })
    const rows = await dbAll(app, 'select * from users') as unknown as UserRow[]
    t.equal(rows.length, 1)
    t.equal(rows[0]!.email, 'boss@example.com', 'the email is normalised')
    t.same(JSON.parse(rows[0]!.roles), ['user', 'admin'])
    t.match(rows[0]!.password_hash, /^\$argon2id\$/)
    const session = await login(app, 'boss@example.com', adminPassword)
    t.equal(session.statusCode, 200)
    t.ok(session.json().user.roles.includes('admin'))
    t.ok((tokenPayload(session.json().access_token).roles as string[]).includes('admin'))
    t.equal((await app.inject({ url: '/admin/users', headers: bearer(session.json().access_token) })).statusCode, 200)
  })

  t.test('does not create a second admin when one exists; a disabled one does not count', async (t) => {
    const databaseUrl = `file:${join(t.testdir(), 'gatehouse.db')}`
    const first = await buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: databaseUrl, ADMIN_EMAIL: 'first@example.com', ADMIN_PASSWORD: adminPassword }))
    await first.ready()
    t.same((await enabledAdmins(first)).length, 1)
    await first.close()

    const { app: second, log } = await appWithLog(t, { LOG_LEVEL: 'info', DATABASE_URL: databaseUrl, ADMIN_EMAIL: 'second@example.com', ADMIN_PASSWORD: adminPassword })
    const emails = (await dbAll(second, 'select email from users') as Array<{ email: string }>).map((row) => row.email)
    t.same(emails, ['first@example.com'], 'no second admin')
    t.match(logLines(log.text).find((line) => line.event === 'admin_bootstrap_skipped'),
      { level: 30, msg: 'ADMIN_EMAIL is not used: an enabled admin exists' }, 'and the log says why')
    t.equal((await login(second, 'second@example.com', adminPassword)).statusCode, 401)
    await dbRun(second, 'update users set disabled = ?', true)
    await second.close()

    const third = await build(t, { DATABASE_URL: databaseUrl, ADMIN_EMAIL: 'third@example.com', ADMIN_PASSWORD: adminPassword })
    const third_ = await dbGet(third, 'select roles from users where email = ?', 'third@example.com') as { roles: string } | undefined
    t.ok(third_, 'with only a disabled admin, a new one is created')
    t.same(JSON.parse(third_!.roles), ['user', 'admin'])
  })

  t.test('instances starting at once with different ADMIN_EMAILs make one admin, not one each', async (t) => {
    const databaseUrl = TEST_DATABASE_URL ? await freshPostgresUrl(TEST_DATABASE_URL) : `file:${join(t.testdir(), 'gatehouse.db')}`
    // Migrated first, so the starts below race only to bootstrap.
    await (await buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: databaseUrl }))).close()
    for (let round = 0; round < 3; round++) {
      const emails = ['a', 'b', 'c'].map((name) => `${name}${round}@example.com`)
      const started = await Promise.all(emails.map((email) => appWithLog(t, { LOG_LEVEL: 'info', DATABASE_URL: databaseUrl, ADMIN_EMAIL: email, ADMIN_PASSWORD: adminPassword })))
      const apps = started.map(({ app }) => app)
      const admins = await enabledAdmins(apps[0]!)
      t.equal(admins.length, 1, `round ${round}: one admin`)
      const events = started.map(({ log }) => logLines(log.text).map((line) => line.event).filter((event) => event?.startsWith('admin_')))
      t.same(events.map((ofOne) => ofOne.join(' ')).sort(), ['admin_bootstrap_skipped', 'admin_bootstrap_skipped', 'admin_bootstrapped'],
        'the instance that made it says so, and each other one that an admin exists')
      t.ok(emails.includes(String((await dbGet(apps[0]!, 'select email from users where id = ?', admins[0]))!.email)), 'made from one of the ADMIN_EMAILs')
      t.equal(await dbCount(apps[0]!, 'select count(*) as n from users'), 1, 'and no other account')
      for (const app of apps) await app.close()
      const cleaner = await buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: databaseUrl }))
      await dbRun(cleaner, 'delete from users')
      await cleaner.close()
    }
  })

  t.test('never promotes an existing account with that email', async (t) => {
    const databaseUrl = `file:${join(t.testdir(), 'gatehouse.db')}`
    const before = await buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: databaseUrl }))
    await before.ready()
    const squatter = await signup(before, 'taken@example.com')
    await before.close()

    let log = ''
    const logStream = new PassThrough().on('data', (chunk) => { log += chunk })
    const app = await buildApp(loadConfig({ ...TEST_ENV, LOG_LEVEL: 'warn', DATABASE_URL: databaseUrl, ADMIN_EMAIL: 'TAKEN@example.com', ADMIN_PASSWORD: adminPassword }), { logStream })
    t.teardown(() => app.close())
    await app.ready()
    const warning = log.split('\n').filter(Boolean).map((line) => JSON.parse(line)).find((line) => line.level === 40)
    t.match(warning?.msg, /ADMIN_EMAIL belongs to an existing account, which is not promoted: create the first admin with another email .*\(PATCH \/admin\/users\/\{id\}\)/, 'the operator is told the way out')
    t.same(await rolesInDb(app, squatter.user.id), ['user'], 'not promoted')
    t.same(await enabledAdmins(app), [], 'and no admin was made')
    t.equal(await dbCount(app, 'select count(*) as n from users'), 1)
    t.equal((await login(app, 'taken@example.com', adminPassword)).statusCode, 401, 'ADMIN_PASSWORD does not open the account')
    const own = await login(app, 'taken@example.com')
    t.same(tokenPayload(own.json().access_token).roles, ['user'])
  })

  t.test('a weak ADMIN_PASSWORD stops the start', async (t) => {
    for (const [label, password] of [['too short', 'short'], ['equal to the email', 'Boss@Example.com']]) {
      let error: Error | undefined
      try {
        await build(t, { ADMIN_EMAIL: 'boss@example.com', ADMIN_PASSWORD: password! })
      } catch (caught) {
        error = caught as Error
      }
      t.ok(error, `${label}: the start fails`)
      t.match(error?.message, /ADMIN_PASSWORD/, `${label}: the message names the variable`)
      t.notMatch(error?.message ?? '', password!, `${label}: without echoing the password`)
    }
  })
})

// GET routes with only :id params must also answer access before validation.
t.test('GET /admin/users/:id answers who may ask before it judges the id', async (t) => {
  const app = await build(t)
  const anonymous = await app.inject({ url: '/admin/users/not-a-uuid' })
  t.equal(anonymous.statusCode, 401, 'no token: 401, not a lesson in the schema')
  t.equal(anonymous.json().code, 'missing_token')
  const user = await signup(app)
  const forbidden = await app.inject({ url: '/admin/users/not-a-uuid', headers: bearer(user.access_token) })
  t.equal(forbidden.statusCode, 403, 'not an admin: 403')
  t.equal(forbidden.json().code, 'forbidden')
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const malformed = await app.inject({ url: '/admin/users/not-a-uuid', headers: bearer(admin.access_token) })
  t.equal(malformed.statusCode, 400, 'an admin learns the id is malformed')
  t.equal(malformed.json().code, 'validation_error')
})

t.test('GET /admin/users refuses cursors it never issued, an empty email filter and unknown parameters', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const list = (query: string) => app.inject({ url: `/admin/users?${query}`, headers: bearer(admin.access_token) })
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const id = admin.user.id
  for (const [label, cursor] of [['a time before 1970', b64([-1, id])], ['a time before any calendar (PostgreSQL cannot store it)', b64([-8.64e15, id])],
    ['a fractional millisecond', b64([1.5, id])],
    // Past 9999-12-31: a Date holds it, PostgreSQL's timestamp does not.
    ['a time after the year 9999', b64([253_402_300_800_000, id])]] as const) {
    const response = await list(`cursor=${cursor}`)
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'invalid_cursor', label)
  }
  for (const blank of ['', '%20', '%C2%A0%09']) {
    const empty = await list(`email=${blank}`)
    t.equal(empty.statusCode, 400, `a blank email filter: "${blank}" (trimmed, it would filter nothing)`)
    t.equal(empty.json().code, 'validation_error')
    t.match(empty.json().message, /email/)
  }
  const emptyCursor = await list('cursor=')
  t.equal(emptyCursor.statusCode, 400, 'an empty cursor is no position either')
  t.equal(emptyCursor.json().code, 'invalid_cursor')

  // The next_cursor of a real page, then other spellings of it and of the same position.
  await signup(app)
  const page = await list('limit=1')
  t.equal(page.statusCode, 200)
  const issued = page.json().next_cursor as string
  t.equal((await list(`cursor=${issued}`)).statusCode, 200, 'the cursor as issued')
  const [ms, next] = JSON.parse(Buffer.from(issued, 'base64url').toString()) as [number, string]
  for (const [label, cursor] of [['padded', `${issued}==`], ['with a space after it', `${issued} `], ['with an element more', b64([ms, next, 'extra'])],
    ['with the id in upper case', b64([ms, next.toUpperCase()])]] as const) {
    const response = await list(`cursor=${encodeURIComponent(cursor)}`)
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'invalid_cursor', label)
  }
  const unknown = await list('limit=5&sort=email')
  t.equal(unknown.statusCode, 400, 'an unknown parameter is refused, not ignored')
  t.same(unknown.json(), { statusCode: 400, error: 'Bad Request', message: 'querystring/sort is not allowed', code: 'validation_error' })
  const huge = await list(`cursor=${'a'.repeat(500)}`)
  t.equal(huge.json().code, 'validation_error', 'an oversized cursor is refused by the schema, before decoding')
})

t.test('PATCH /admin/users/:id changes only the fields sent; name null clears the name; updated_at moves', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const target = await signupWithRoles(app, ['user', 'member', 'developer'])
  const patch = (payload: Record<string, unknown>) =>
    app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload })

  t.equal((await patch({ disabled: true })).statusCode, 200)
  const disabled = (await app.inject({ url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token) })).json()
  await sleep(5)
  const named = await patch({ name: 'Ada' })
  t.equal(named.statusCode, 200)
  t.match(named.json(), { name: 'Ada', roles: ['user', 'member', 'developer'], disabled: true }, 'a name change leaves roles and disabled alone')
  t.ok(named.json().updated_at > disabled.updated_at, 'updated_at moves on')
  t.equal(named.json().created_at, disabled.created_at)
  t.match(await dbGet(app, 'select name, disabled, updated_at from users where id = ?', target.user.id),
    { name: 'Ada', disabled: 1, updated_at: Date.parse(named.json().updated_at) })

  const enabledNamed = await patch({ disabled: false })
  t.equal(enabledNamed.statusCode, 200)
  t.match(enabledNamed.json(), { name: 'Ada', disabled: false }, 'disabled alone leaves a name that is set')
  t.equal((await dbGet(app, 'select name from users where id = ?', target.user.id))!.name, 'Ada')
  const promoted = await patch({ roles: ['member', 'developer', 'admin'] })
  t.equal(promoted.statusCode, 200)
  t.match(promoted.json(), { name: 'Ada', roles: ['user', 'member', 'developer', 'admin'] }, 'roles alone leave the name')
  t.equal((await dbGet(app, 'select name from users where id = ?', target.user.id))!.name, 'Ada')
  t.equal((await patch({ roles: ['member', 'developer'] })).json().name, 'Ada')

  const cleared = await patch({ name: null })
  t.equal(cleared.statusCode, 200)
  t.equal(cleared.json().name, null, 'null clears the name')
  t.equal((await dbGet(app, 'select name from users where id = ?', target.user.id))!.name, null)

  const enabled = await patch({ disabled: false })
  t.match(enabled.json(), { name: null, roles: ['user', 'member', 'developer'], disabled: false }, 'disabled alone leaves the name and roles')
})

t.test('a role change or a disable whose session revocation fails changes nothing: one transaction', async (t) => {
  const app = await build(t)
  const admin = await asAdmin(app)
  const target = await signup(app)
  const before = await dbGet(app, 'select roles, disabled, updated_at from users where id = ?', target.user.id)
  // The change's revocation of the target's sessions fails; the admin's own session is only read.
  const allowSessionUpdates = await refuseSessionUpdates(app)
  for (const payload of [{ roles: ['member'] }, { disabled: true }]) {
    const failed = await app.inject({ method: 'PATCH', url: `/admin/users/${target.user.id}`, headers: bearer(admin.access_token), payload })
    t.equal(failed.statusCode, 500, JSON.stringify(payload))
  }
  await allowSessionUpdates()
  t.same(await dbGet(app, 'select roles, disabled, updated_at from users where id = ?', target.user.id), before, 'the user is as before')
  t.equal((await refresh(app, target.refresh_token)).statusCode, 200, 'and their session is still open')
})
