import Fastify, { type LightMyRequestResponse } from 'fastify'
import fp from 'fastify-plugin'
import { PassThrough } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { buildApp, type App } from '../src/app.ts'
import { hashPassword } from '../src/auth/passwords.ts'
import { loadConfig } from '../src/config.ts'
import { apiError, type ErrorCode } from '../src/errors.ts'
import { accountOf } from '../src/plugins/auth.ts'
import { accessAudit } from '../src/plugins/authorization.ts'
import clothesRoutes from '../src/routes/clothes.ts'
import videoRoutes from '../src/routes/videos.ts'
import { TEST_ENV, type SessionBody, before, bearer, build, dbCount, dbGet, dbRun, signup, tokenPayload, uniqueEmail, signupWithRoles } from './helper.ts'

type Caller = 'anonymous' | 'user' | 'member' | 'developer' | 'admin'
type SignedInCaller = Exclude<Caller, 'anonymous'>
const CALLERS: Caller[] = ['anonymous', 'user', 'member', 'developer', 'admin']
const ROLES_OF: Record<SignedInCaller, string[]> = {
  user: ['user'],
  member: ['user', 'member'],
  developer: ['user', 'developer'],
  admin: ['user', 'admin']
}

const MISSING_TOKEN_CHALLENGE = 'Bearer realm="gatehouse"'
const FORBIDDEN_CHALLENGE = 'Bearer realm="gatehouse", error="insufficient_scope"'

interface VideoRow { id: string, user_id: string | null, title: string, author: string, url: string, is_member_only: number }
const videoRow = async (app: App, id: string) =>
  await dbGet(app, 'select * from videos where id = ?', id) as VideoRow | undefined
const videoCount = (app: App) => dbCount(app, 'select count(*) as n from videos')
const clothesCount = (app: App) => dbCount(app, 'select count(*) as n from clothes')

/** A video published by the owner's session, or seeded with no owner. */
async function newVideo (app: App, owner: SessionBody | null, isMemberOnly = false, title = `Video ${uniqueEmail('v')}`) {
  const fields = { title, author: 'Someone', url: 'https://videos.example.com/x.mp4', isMemberOnly }
  if (!owner) return app.videosRepository.seed(fields)
  const video = await app.videosRepository.create({ userId: owner.user.id, sessionId: tokenPayload(owner.access_token).sid as string }, fields)
  if (typeof video === 'string') throw new Error(`video not created: ${video}`)
  return video
}

function assertUnauthenticated (t: Test, response: LightMyRequestResponse) {
  t.equal(response.statusCode, 401)
  t.equal(response.headers['www-authenticate'], MISSING_TOKEN_CHALLENGE)
  t.same(response.json(), { statusCode: 401, error: 'Unauthorized', message: response.json().message, code: 'missing_token' })
}

function assertForbidden (t: Test, response: LightMyRequestResponse) {
  t.equal(response.statusCode, 403)
  t.equal(response.headers['www-authenticate'], FORBIDDEN_CHALLENGE)
  t.equal(response.json().code, 'forbidden')
  t.equal(response.json().error, 'Forbidden')
}

interface Prepared {
  url: string
  payload?: Record<string, unknown>
  /** Checks the body on success and the database either way. */
  verify (t: Test, response: LightMyRequestResponse, allowed: boolean): void | Promise<unknown>
}
interface GuardedRoute {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE'
  path: string
  success: number
  allowed: SignedInCaller[]
  /** What the others get: 403, or 404 from a route whose refusals keep ids private (`othersSee: 'not_found'`). */
  refused?: 403 | 404
  prepare (caller: Caller): Promise<Prepared>
}

t.test('authorization matrix: every guarded route × every kind of caller', async (t) => {
  const app = await build(t)
  const sessions = {} as Record<SignedInCaller, SessionBody>
  for (const caller of Object.keys(ROLES_OF) as SignedInCaller[]) {
    sessions[caller] = await signupWithRoles(app, ROLES_OF[caller], uniqueEmail(caller))
  }
  // The owner of the videos PATCH/DELETE act on: a developer who is none of the callers.
  const owner = await signupWithRoles(app, ['user', 'developer'], uniqueEmail('owner'))
  const freeVideo = await newVideo(app, owner, false)
  const memberVideo = await newVideo(app, owner, true)
  const jacket = await app.clothesRepository.seed({ name: 'Jacket', color: 'red', size: 'M', price: 9900 })
  const targetHash = await hashPassword('target password 123')
  const newTarget = async () => (await app.usersRepository.create({ email: uniqueEmail('target'), passwordHash: targetHash, roles: ['user'] }))!
  const target = await newTarget()

  const routes: GuardedRoute[] = [
    {
      method: 'GET',
      path: '/videos/member',
      success: 200,
      allowed: ['member', 'developer', 'admin'],
      prepare: async () => ({
        url: '/videos/member',
        verify (t, response, allowed) {
          if (!allowed) return
          const list = response.json() as Array<{ id: string, is_member_only: boolean }>
          t.ok(list.every((video) => video.is_member_only), 'only member-only videos')
          t.ok(list.some((video) => video.id === memberVideo.id))
          t.notOk(list.some((video) => video.id === freeVideo.id))
        }
      })
    },
    {
      method: 'POST',
      path: '/videos',
      success: 201,
      allowed: ['developer', 'admin'],
      prepare: async (caller) => {
        const title = `Published by ${caller} ${uniqueEmail('p')}`
        return {
          url: '/videos',
          payload: { title, author: 'Ada', url: 'https://videos.example.com/new.mp4' },
          async verify (t, response, allowed) {
            const row = await dbGet(app, 'select * from videos where title = ?', title) as VideoRow | undefined
            if (!allowed) return t.equal(row, undefined, 'nothing was created')
            t.equal(response.json().user_id, sessions[caller as SignedInCaller].user.id)
            t.equal(row?.user_id, sessions[caller as SignedInCaller].user.id)
          }
        }
      }
    },
    {
      method: 'PATCH',
      path: '/videos/:id',
      success: 200,
      allowed: ['admin'],
      prepare: async () => {
        const video = await newVideo(app, owner)
        return {
          url: `/videos/${video.id}`,
          payload: { title: 'Changed' },
          async verify (t, response, allowed) {
            const row = (await videoRow(app, video.id))!
            t.equal(row.title, allowed ? 'Changed' : video.title)
            t.equal(row.user_id, owner.user.id, 'ownership never changes')
            if (allowed) t.equal(response.json().title, 'Changed')
          }
        }
      }
    },
    {
      method: 'DELETE',
      path: '/videos/:id',
      success: 204,
      allowed: ['admin'],
      prepare: async () => {
        const video = await newVideo(app, owner)
        return {
          url: `/videos/${video.id}`,
          async verify (t, response, allowed) {
            t.equal((await videoRow(app, video.id)) === undefined, allowed, allowed ? 'deleted' : 'still there')
            if (allowed) t.equal(response.body, '')
          }
        }
      }
    },
    {
      method: 'GET',
      path: '/clothes',
      success: 200,
      allowed: ['user', 'member', 'developer', 'admin'],
      prepare: async () => ({
        url: '/clothes',
        verify (t, response, allowed) {
          if (allowed) t.ok((response.json() as Array<{ id: string }>).some((item) => item.id === jacket.id))
        }
      })
    },
    {
      method: 'POST',
      path: '/clothes',
      success: 201,
      allowed: ['admin'],
      prepare: async (caller) => {
        const name = `Shirt for ${caller} ${uniqueEmail('c')}`
        return {
          url: '/clothes',
          payload: { name, price: 2500 },
          async verify (t, response, allowed) {
            const row = await dbGet(app, 'select * from clothes where name = ?', name)
            t.equal(row !== undefined, allowed, allowed ? 'created' : 'nothing was created')
            if (allowed) t.equal(response.json().name, name)
          }
        }
      }
    },
    {
      method: 'GET',
      path: '/admin/users',
      success: 200,
      allowed: ['admin'],
      prepare: async () => ({
        url: '/admin/users',
        verify (t, response, allowed) {
          if (!allowed) return
          t.ok(Array.isArray(response.json().users))
          t.ok(response.json().users.some((user: { id: string }) => user.id === target.id))
        }
      })
    },
    {
      method: 'GET',
      path: '/admin/users/:id',
      success: 200,
      allowed: ['admin'],
      prepare: async () => ({
        url: `/admin/users/${target.id}`,
        verify (t, response, allowed) {
          if (allowed) t.match(response.json(), { id: target.id, disabled: false })
        }
      })
    },
    {
      method: 'PATCH',
      path: '/admin/users/:id',
      success: 200,
      allowed: ['admin'],
      prepare: async (caller) => {
        const before = (await dbGet(app, 'select name from users where id = ?', target.id) as { name: string | null }).name
        const name = `Renamed by ${caller}`
        return {
          url: `/admin/users/${target.id}`,
          payload: { name },
          async verify (t, response, allowed) {
            const after = (await dbGet(app, 'select name from users where id = ?', target.id) as { name: string | null }).name
            t.equal(after, allowed ? name : before)
            if (allowed) t.equal(response.json().name, name)
          }
        }
      }
    },
    {
      method: 'DELETE',
      path: '/admin/users/:id',
      success: 204,
      allowed: ['admin'],
      prepare: async () => {
        const victim = await newTarget()
        return {
          url: `/admin/users/${victim.id}`,
          async verify (t, _response, allowed) {
            const row = await dbGet(app, 'select id from users where id = ?', victim.id)
            t.equal(row === undefined, allowed, allowed ? 'deleted' : 'still there')
          }
        }
      }
    }
  ]

  for (const route of routes) {
    for (const caller of CALLERS) {
      const allowed = caller !== 'anonymous' && route.allowed.includes(caller)
      const expected = caller === 'anonymous' ? 401 : allowed ? route.success : route.refused ?? 403
      await t.test(`${route.method} ${route.path} as ${caller} → ${expected}`, async (t) => {
        const prepared = await route.prepare(caller)
        const response = await app.inject({
          method: route.method,
          url: prepared.url,
          ...(prepared.payload ? { payload: prepared.payload } : {}),
          ...(caller === 'anonymous' ? {} : { headers: bearer(sessions[caller].access_token) })
        })
        t.equal(response.statusCode, expected, response.body)
        if (expected === 401) assertUnauthenticated(t, response)
        if (expected === 403) assertForbidden(t, response)
        if (!allowed && expected === 404) t.equal(response.json().code, 'not_found')
        t.notOk(response.headers['www-authenticate'] && allowed, 'no challenge on success')
        t.notMatch(response.body, /password_hash|passwordHash|\$argon2/)
        await prepared.verify(t, response, allowed)
      })
    }
  }

  // Guarded routes every signed-in caller may use, on their own account: auth.test.ts,
  // sessions.test.ts and me-permissions.test.ts cover them. Any other guarded route, a fork's
  // included, belongs in the matrix above.
  const OPEN_TO_EVERY_SIGNED_IN_CALLER = [
    'GET /auth/me', 'PATCH /auth/me', 'POST /auth/password', 'GET /auth/sessions', 'DELETE /auth/sessions/:id',
    'GET /me/permissions'
  ]
  await t.test('the matrix covers every guarded route', async (t) => {
    const covered = [...routes.map((route) => `${route.method} ${route.path}`), ...OPEN_TO_EVERY_SIGNED_IN_CALLER]
    for (const { method, url, access } of app.accessPolicies) {
      if (access === 'guarded' && method !== 'HEAD') t.ok(covered.includes(`${method} ${url}`), `${method} ${url} is in the matrix`)
    }
  })

  await t.test('GET /videos is public and lists only free videos, to everyone', async (t) => {
    for (const caller of CALLERS) {
      const response = await app.inject({
        url: '/videos',
        ...(caller === 'anonymous' ? {} : { headers: bearer(sessions[caller].access_token) })
      })
      t.equal(response.statusCode, 200, caller)
      const list = response.json() as Array<Record<string, unknown>>
      t.ok(list.length > 0)
      t.ok(list.every((video) => video.is_member_only === false), `${caller}: only free videos`)
      t.ok(list.some((video) => video.id === freeVideo.id))
      t.notOk(list.some((video) => video.id === memberVideo.id), `${caller}: no member-only video`)
      t.same(Object.keys(list[0]!).sort(), ['author', 'created_at', 'id', 'is_member_only', 'title', 'updated_at', 'url', 'user_id'])
    }
  })

  await t.test('PATCH/DELETE /videos/:id: unknown id 404, malformed id 400', async (t) => {
    const unknown = '00000000-0000-4000-8000-000000000000'
    for (const caller of ['developer', 'admin'] as const) {
      for (const method of ['PATCH', 'DELETE'] as const) {
        const payload = method === 'PATCH' ? { payload: { title: 'x' } } : {}
        const missing = await app.inject({ method, url: `/videos/${unknown}`, headers: bearer(sessions[caller].access_token), ...payload })
        t.equal(missing.statusCode, 404, `${method} unknown as ${caller}`)
        t.equal(missing.json().code, 'not_found')
        const malformed = await app.inject({ method, url: '/videos/not-a-uuid', headers: bearer(sessions[caller].access_token), ...payload })
        t.equal(malformed.statusCode, 400, `${method} malformed as ${caller}`)
        t.equal(malformed.json().code, 'validation_error')
      }
    }
    const anonymous = await app.inject({ method: 'DELETE', url: `/videos/${unknown}` })
    assertUnauthenticated(t, anonymous)
  })
})

t.test('developers edit and delete only their own videos; admins anyone\'s', async (t) => {
  const app = await build(t)
  const alice = await signupWithRoles(app, ['user', 'developer'])
  const bob = await signupWithRoles(app, ['user', 'developer'])
  const admin = await signupWithRoles(app, ['user', 'admin'])

  const published = await app.inject({
    method: 'POST',
    url: '/videos',
    headers: bearer(alice.access_token),
    payload: { title: 'Alice intro', author: 'Alice', url: 'https://videos.example.com/alice.mp4' }
  })
  t.equal(published.statusCode, 201)
  const video = published.json()
  t.equal(video.user_id, alice.user.id)

  for (const [method, payload] of [['PATCH', { title: 'Bob was here' }], ['DELETE', undefined]] as const) {
    const refused = await app.inject({ method, url: `/videos/${video.id}`, headers: bearer(bob.access_token), ...(payload ? { payload } : {}) })
    assertForbidden(t, refused)
  }
  t.match(await videoRow(app, video.id), { title: 'Alice intro', user_id: alice.user.id }, 'another developer changed nothing')

  await sleep(5)
  const edited = await app.inject({
    method: 'PATCH',
    url: `/videos/${video.id}`,
    headers: bearer(alice.access_token),
    payload: { title: 'Alice intro, v2', is_member_only: true }
  })
  t.equal(edited.statusCode, 200)
  t.match(edited.json(), { id: video.id, title: 'Alice intro, v2', is_member_only: true, user_id: alice.user.id, author: 'Alice' })
  t.ok(edited.json().updated_at > video.updated_at, 'updated_at moves on')
  t.match(await videoRow(app, video.id), { title: 'Alice intro, v2', is_member_only: 1 })
  const memberList = (await app.inject({ url: '/videos/member', headers: bearer(alice.access_token) })).json()
  t.ok(memberList.some((item: { id: string }) => item.id === video.id), 'moved to the member-only list')
  t.notOk((await app.inject({ url: '/videos' })).json().some((item: { id: string }) => item.id === video.id))
  // A change that leaves is_member_only out leaves it as it is.
  const retitled = await app.inject({ method: 'PATCH', url: `/videos/${video.id}`, headers: bearer(alice.access_token), payload: { title: 'Alice intro, v3' } })
  t.match(retitled.json(), { title: 'Alice intro, v3', is_member_only: true })
  t.match(await videoRow(app, video.id), { title: 'Alice intro, v3', is_member_only: 1 }, 'still member-only')

  const empty = await app.inject({ method: 'PATCH', url: `/videos/${video.id}`, headers: bearer(alice.access_token), payload: {} })
  t.equal(empty.statusCode, 400, 'a change must change something')
  t.equal(empty.json().code, 'validation_error')
  const takeover = await app.inject({ method: 'PATCH', url: `/videos/${video.id}`, headers: bearer(alice.access_token), payload: { user_id: bob.user.id } })
  t.equal(takeover.statusCode, 400, 'the owner is not a writable field')
  t.equal((await videoRow(app, video.id))!.user_id, alice.user.id)

  const deleted = await app.inject({ method: 'DELETE', url: `/videos/${video.id}`, headers: bearer(alice.access_token) })
  t.equal(deleted.statusCode, 204)
  t.equal(deleted.body, '')
  t.equal(await videoRow(app, video.id), undefined)
  const again = await app.inject({ method: 'DELETE', url: `/videos/${video.id}`, headers: bearer(alice.access_token) })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'not_found')

  const bobs = await newVideo(app, bob, false, 'Bob free')
  const bobsMember = await newVideo(app, bob, true, 'Bob members')
  const ownerless = await newVideo(app, null, false, 'Seeded')
  const devOnOwnerless = await app.inject({ method: 'PATCH', url: `/videos/${ownerless.id}`, headers: bearer(bob.access_token), payload: { title: 'mine now' } })
  assertForbidden(t, devOnOwnerless)

  for (const item of [bobs, ownerless]) {
    const byAdmin = await app.inject({ method: 'PATCH', url: `/videos/${item.id}`, headers: bearer(admin.access_token), payload: { title: 'Moderated' } })
    t.equal(byAdmin.statusCode, 200)
    t.equal(byAdmin.json().title, 'Moderated')
    t.equal(byAdmin.json().user_id, item.userId, 'an admin edit keeps the owner')
  }
  // A DELETE takes no body: one it is sent is refused, not ignored, and nothing is deleted.
  const withBody: Array<[string, unknown, string]> = [
    ['an unknown property', { dry_run: true }, 'body/dry_run is not allowed'],
    ['an array', [], 'body must be empty: this endpoint takes none'],
    ['null', null, 'body must be empty: this endpoint takes none']
  ]
  for (const [label, body, message] of withBody) {
    const refused = await app.inject({ method: 'DELETE', url: `/videos/${bobs.id}`, headers: { ...bearer(admin.access_token), 'content-type': 'application/json' }, payload: JSON.stringify(body) })
    t.equal(refused.statusCode, 400, label)
    t.same(refused.json(), { statusCode: 400, error: 'Bad Request', message, code: 'validation_error' }, label)
    t.ok(await videoRow(app, bobs.id), `${label}: the video is still there`)
  }
  const anonymousWithBody = await app.inject({ method: 'DELETE', url: `/videos/${bobs.id}`, payload: { dry_run: true } })
  assertUnauthenticated(t, anonymousWithBody)
  const emptyObject = await app.inject({ method: 'DELETE', url: `/videos/${bobsMember.id}`, headers: bearer(admin.access_token), payload: {} })
  t.equal(emptyObject.statusCode, 204, '{} is no body')
  t.equal(await videoRow(app, bobsMember.id), undefined)
  for (const item of [bobs, ownerless]) {
    const byAdmin = await app.inject({ method: 'DELETE', url: `/videos/${item.id}`, headers: bearer(admin.access_token) })
    t.equal(byAdmin.statusCode, 204)
    t.equal(await videoRow(app, item.id), undefined)
  }
  const free = (await app.inject({ url: '/videos' })).json()
  const member = (await app.inject({ url: '/videos/member', headers: bearer(admin.access_token) })).json()
  t.same(free, [], 'deleted videos are gone from the free list')
  t.same(member, [], 'and from the member-only list')
  t.equal(await videoCount(app), 0)
})

t.test('a video\'s owner-or-admin check reads the roles and state as stored, at the guard and again in the write', async (t) => {
  // Changed by hand (an operator's SQL), which revokes no session, unlike the API's role changes.
  const app = await build(t)
  const owner = await signupWithRoles(app, ['user', 'developer'])
  const video = (await app.inject({ method: 'POST', url: '/videos', headers: bearer(owner.access_token), payload: { title: 'Mine', author: 'Owner', url: 'https://videos.example.com/mine.mp4' } })).json()
  const patch = (caller: SessionBody) => app.inject({ method: 'PATCH', url: `/videos/${video.id}`, headers: bearer(caller.access_token), payload: { title: 'Not yours' } })

  // Demoted before the request: its token still says admin, the guard reads the stored roles.
  const demoted = await signupWithRoles(app, ['user', 'admin'])
  await dbRun(app, 'update users set roles = ? where id = ?', ['user'], demoted.user.id)
  assertForbidden(t, await patch(demoted))

  // Demoted to developer (who may publish, not change others' videos), or disabled, after the
  // guard let the admin through and before the write: the transaction refuses.
  // A seeded video has no owner: only admins may change it, not a developer whose id matches nothing.
  const seeded = await app.videosRepository.seed({ title: 'Seeded', author: 'Gatehouse', url: 'https://videos.example.com/seeded.mp4', isMemberOnly: false })
  for (const [label, change, target] of [
    ['demoted to developer', (id: string) => dbRun(app, 'update users set roles = ? where id = ?', ['user', 'developer'], id), video],
    ['demoted to developer, an ownerless video', (id: string) => dbRun(app, 'update users set roles = ? where id = ?', ['user', 'developer'], id), seeded],
    ['disabled', (id: string) => dbRun(app, 'update users set disabled = ? where id = ?', true, id), video]
  ] as const) {
    const admin = await signupWithRoles(app, ['user', 'admin'])
    before(app.videosRepository, 'update', () => change(admin.user.id))
    const refused = await app.inject({ method: 'PATCH', url: `/videos/${target.id}`, headers: bearer(admin.access_token), payload: { title: 'Not yours' } })
    t.equal(refused.statusCode, 401, `${label}: ${refused.body}`)
    t.equal(refused.json().code, 'invalid_token', label)
    t.match(await videoRow(app, target.id), { title: target.title }, `${label}: nothing changed`)
  }
})

t.test('POST /videos: the caller owns it, is_member_only defaults to false, bodies are validated', async (t) => {
  const app = await build(t)
  const developer = await signupWithRoles(app, ['user', 'developer'])
  const other = await signupWithRoles(app, ['user', 'developer'])
  const valid = { title: 'Intro', author: 'Ada', url: 'https://videos.example.com/intro.mp4' }

  const created = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: valid })
  t.equal(created.statusCode, 201)
  const video = created.json()
  t.match(video, { ...valid, is_member_only: false, user_id: developer.user.id })
  t.match(video.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  t.same(await videoRow(app, video.id), {
    id: video.id,
    user_id: developer.user.id,
    title: 'Intro',
    author: 'Ada',
    url: valid.url,
    is_member_only: 0,
    created_at: Date.parse(video.created_at),
    updated_at: Date.parse(video.updated_at)
  })

  const upperCaseScheme = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { ...valid, url: 'HTTPS://videos.example.com/a.mp4' } })
  t.equal(upperCaseScheme.statusCode, 201, 'URL schemes are case-insensitive')
  t.equal(upperCaseScheme.json().url, 'HTTPS://videos.example.com/a.mp4', 'stored as sent')
  for (const url of ['https://videos.example.com', 'http://[::1]:8080/a.mp4', 'https://videos.example.com/by/@ada?at=a@b#@', 'https://videos.example.com?list=1']) {
    const accepted = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { ...valid, url } })
    t.equal(accepted.statusCode, 201, `${url}: a host, and an @ past it, are fine`)
  }

  const memberOnly = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { ...valid, is_member_only: true } })
  t.equal(memberOnly.statusCode, 201)
  t.equal(memberOnly.json().is_member_only, true)
  t.equal((await videoRow(app, memberOnly.json().id))!.is_member_only, 1)

  const before = await videoCount(app)
  const { title: _title, ...withoutTitle } = valid
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['missing title', withoutTitle, /title/],
    ['empty title', { ...valid, title: '' }, /title/],
    ['ftp url', { ...valid, url: 'ftp://videos.example.com/intro.mp4' }, /url/],
    ['not a url', { ...valid, url: 'not a url' }, /url/],
    ['javascript url', { ...valid, url: 'javascript:alert(1)' }, /url/],
    ['url without a host', { ...valid, url: 'https:///intro.mp4' }, /url/],
    ['url with credentials, which every reader would see', { ...valid, url: 'https://ada:secret@videos.example.com/a.mp4' }, /url/],
    ['url with an empty user', { ...valid, url: 'https://@videos.example.com/a.mp4' }, /url/],
    ...['https://:443/a.mp4', 'https://%40/a', 'https://a%00b/x', 'https://videos.example.com:99999999/x', 'https://videos.example.com/a b', 'https:\\\\videos.example.com/a']
      .map((url): [string, Record<string, unknown>, RegExp] => [`url a browser cannot open: ${url}`, { ...valid, url }, /url/]),
    ['non-boolean is_member_only', { ...valid, is_member_only: 'yes' }, /is_member_only/],
    ['unknown property', { ...valid, rating: 5 }, /rating/],
    ['owner in the body', { ...valid, user_id: other.user.id }, /user_id/],
    ['201-character title', { ...valid, title: 't'.repeat(201) }, /title/],
    ['empty author', { ...valid, author: '' }, /author/],
    ['101-character author', { ...valid, author: 'a'.repeat(101) }, /author/],
    ['2049-character url', { ...valid, url: `https://videos.example.com/${'v'.repeat(2049 - 27)}` }, /url/]
  ]
  for (const [label, payload, field] of cases) {
    const response = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'validation_error', label)
    t.match(response.json().message, field, `${label}: the message names the field`)
  }
  t.equal(await videoCount(app), before, 'no invalid body created a video')

  const longest = { title: 't'.repeat(200), author: 'a'.repeat(100), url: `https://videos.example.com/${'v'.repeat(2048 - 27)}` }
  t.equal(longest.url.length, 2048)
  const atLimits = await app.inject({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: longest })
  t.equal(atLimits.statusCode, 201, 'a 200-character title, 100-character author and 2048-character url are accepted')
  t.match(await videoRow(app, atLimits.json().id), longest)
  // PATCH takes the same fields under the same limits.
  const unchanged = await videoRow(app, video.id)
  const tooLong: Array<[string, Record<string, unknown>, RegExp]> = [
    ['201-character title', { title: 't'.repeat(201) }, /title/],
    ['empty author', { author: '' }, /author/],
    ['101-character author', { author: 'a'.repeat(101) }, /author/],
    ['2049-character url', { url: `${longest.url}v` }, /url/]
  ]
  for (const [label, payload, field] of tooLong) {
    const response = await app.inject({ method: 'PATCH', url: `/videos/${video.id}`, headers: bearer(developer.access_token), payload })
    t.equal(response.statusCode, 400, `PATCH: ${label}`)
    t.equal(response.json().code, 'validation_error', `PATCH: ${label}`)
    t.match(response.json().message, field, `PATCH: ${label}`)
  }
  t.same(await videoRow(app, video.id), unchanged, 'no refused PATCH changed the video')
})

t.test('the text of videos and clothes, shown to anyone, follows the rule of names: something visible, no controls, line breaks or reordering', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const video = { title: 'Intro', author: 'Ada', url: 'https://videos.example.com/intro.mp4' }
  const clothing = { name: 'Tee', color: 'navy', size: 'M', price: 1999 }
  const { id: videoId } = (await app.inject({ method: 'POST', url: '/videos', headers: bearer(admin.access_token), payload: video })).json()
  const writes: Array<[string, string, (field: string, text: string) => Record<string, unknown>, string[]]> = [
    ['POST', '/videos', (field, text) => ({ ...video, [field]: text }), ['title', 'author']],
    ['PATCH', `/videos/${videoId}`, (field, text) => ({ [field]: text }), ['title', 'author']],
    ['POST', '/clothes', (field, text) => ({ ...clothing, [field]: text }), ['name', 'color', 'size']]
  ]
  const refused = [['spaces only', '   '], ['a zero-width space only', '\u200b'], ['a newline', 'Intro\nPart 2'],
    ['a terminal escape', '\u001b[31mred'], ['a bell', 'a\u0007'], ['a right-to-left override', 'a\u202eb'], ['a line separator', 'a\u2028b']]
  const [videos, clothes] = [await videoCount(app), await clothesCount(app)]
  for (const [method, url, body, fields] of writes) {
    for (const field of fields) {
      for (const [label, text] of refused) {
        const response = await app.inject({ method: method as 'POST' | 'PATCH', url, headers: bearer(admin.access_token), payload: body(field, text!) })
        t.equal(response.statusCode, 400, `${method} ${url} ${field}: ${label}`)
        t.same(response.json(), { statusCode: 400, error: 'Bad Request', message: `body/${field} must match format "display-text"`, code: 'validation_error' }, `${method} ${url} ${field}: ${label}`)
      }
    }
  }
  t.same([await videoCount(app), await clothesCount(app)], [videos, clothes], 'nothing was stored')
  t.match(await videoRow(app, videoId), { title: 'Intro', author: 'Ada' }, 'nor changed')
  for (const text of ['Zoë', '李 小龙', '👩\u200d💻 Live', 'مرحبا']) {
    const created = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { ...clothing, name: text, color: text } })
    t.equal(created.statusCode, 201, text)
    const changed = await app.inject({ method: 'PATCH', url: `/videos/${videoId}`, headers: bearer(admin.access_token), payload: { title: text } })
    t.equal(changed.json().title, text)
  }
})

t.test('clothes: price in integer cents, optional color and size', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const shopper = await signup(app)

  const plain = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Tee', price: 1999 } })
  t.equal(plain.statusCode, 201)
  t.match(plain.json(), { name: 'Tee', price: 1999, color: null, size: null })
  t.same(Object.keys(plain.json()).sort(), ['color', 'created_at', 'id', 'name', 'price', 'size', 'updated_at'])
  const row = await dbGet(app, 'select name, color, size, price from clothes where id = ?', plain.json().id)
  t.same(row, { name: 'Tee', color: null, size: null, price: 1999 })

  // What an answer shows, sent back as it came: null is no color, no size.
  const { id: _id, created_at: _created, updated_at: _updated, ...shown } = plain.json()
  const resent = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: shown })
  t.equal(resent.statusCode, 201, 'an item sent back with color and size null')
  t.same(await dbGet(app, 'select name, color, size, price from clothes where id = ?', resent.json().id), { name: 'Tee', color: null, size: null, price: 1999 })
  await dbRun(app, 'delete from clothes where id = ?', resent.json().id)

  const full = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Hoodie', color: 'navy', size: 'XL', price: 0 } })
  t.equal(full.statusCode, 201)
  t.match(full.json(), { name: 'Hoodie', color: 'navy', size: 'XL', price: 0 })

  const before = await clothesCount(app)
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['fractional price', { name: 'Tee', price: 19.99 }, /price/],
    ['negative price', { name: 'Tee', price: -1 }, /price/],
    ['price as a string', { name: 'Tee', price: '1999' }, /price/],
    ['missing price', { name: 'Tee' }, /price/],
    ['empty name', { name: '', price: 1999 }, /name/],
    ['unknown property', { name: 'Tee', price: 1999, currency: 'EUR' }, /currency/],
    ['price over 1,000,000.00', { name: 'Tee', price: 100_000_001 }, /price/],
    ['201-character name', { name: 'n'.repeat(201), price: 1999 }, /name/],
    ['empty color', { name: 'Tee', color: '', price: 1999 }, /color/],
    ['51-character color', { name: 'Tee', color: 'c'.repeat(51), price: 1999 }, /color/],
    ['empty size', { name: 'Tee', size: '', price: 1999 }, /size/],
    ['21-character size', { name: 'Tee', size: 's'.repeat(21), price: 1999 }, /size/]
  ]
  for (const [label, payload, field] of cases) {
    const response = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'validation_error', label)
    t.match(response.json().message, field, label)
  }
  t.equal(await clothesCount(app), before, 'nothing invalid was stored')

  const list = await app.inject({ url: '/clothes', headers: bearer(shopper.access_token) })
  t.equal(list.statusCode, 200)
  t.same(list.json().map((item: { name: string, price: number }) => [item.name, item.price]), [['Hoodie', 0], ['Tee', 1999]], 'by name, prices as integers')

  const longest = { name: 'n'.repeat(200), color: 'c'.repeat(50), size: 's'.repeat(20), price: 100_000_000 }
  const atLimits = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: longest })
  t.equal(atLimits.statusCode, 201, 'every field at its limit is accepted')
  t.match(atLimits.json(), longest)
  t.same(await dbGet(app, 'select name, color, size, price from clothes where id = ?', atLimits.json().id), longest)
})

t.test('deny by default: a route without an access policy stops the start', async (t) => {
  /** Builds an app, lets `register` add routes, and returns the start-up error (sync throw or ready rejection). */
  async function startWith (register: (app: App) => void): Promise<{ app: App, error: Error | undefined }> {
    const app = await buildApp(loadConfig(TEST_ENV))
    t.teardown(() => app.close())
    try {
      register(app)
      await app.ready()
    } catch (error) {
      return { app, error: error as Error }
    }
    return { app, error: undefined }
  }
  const policy = /must declare one access policy/

  const unguarded = await startWith((app) => { app.get('/unguarded', async () => 'x') })
  t.ok(unguarded.error, 'a route with neither public access nor authenticate refuses to start')
  t.match(unguarded.error?.message, /GET \/unguarded/, 'the message names the route')
  t.match(unguarded.error?.message, policy)

  const inPlugin = await startWith((app) => {
    app.register(async (scope) => { scope.post('/forgotten', async () => 'x') }, { prefix: '/extra' })
  })
  t.match(inPlugin.error?.message, /POST \/extra\/forgotten/, 'a route in a plugin fails app.ready() naming it')

  const authenticateNotFirst = await startWith((app) => {
    app.get('/late-auth', { preHandler: [app.requirePermission('clothes:read'), app.authenticate] }, async () => 'x')
  })
  t.match(authenticateNotFirst.error?.message, /GET \/late-auth/, 'authenticate must come first')

  const both = await startWith((app) => {
    app.get('/both', { config: { access: 'public' }, preHandler: [app.authenticate] }, async () => 'x')
  })
  t.match(both.error?.message, /GET \/both/, 'public and authenticate together is refused')
  t.match(both.error?.message, policy)

  // A write on the token's roles alone would serve a demoted or disabled caller until the token expires.
  const fresh = /may change data: its preHandler list must run app\.loadAccount right after app\.authenticate/
  for (const [label, method, preHandler] of [
    ['a write without loadAccount', 'POST', (app: App) => [app.authenticate, app.requirePermission('clothes:write')]],
    ['loadAccount after the permission check, which then read the token\'s roles', 'DELETE', (app: App) => [app.authenticate, app.requirePermission('clothes:write'), app.loadAccount]],
    ['a PUT, written in no route of ours', 'PUT', (app: App) => [app.authenticate]]
  ] as const) {
    const stale = await startWith((app) => { app.route({ method, url: '/stale', preHandler: preHandler(app), handler: async () => 'x' }) })
    t.match(stale.error?.message, new RegExp(`^Route ${method} /stale `), `${label}: the message names the route`)
    t.match(stale.error?.message, fresh, `${label}: refused at start`)
  }

  const guarded = await startWith((app) => {
    app.post('/fresh', { preHandler: [app.authenticate, app.loadAccount, app.requirePermission('clothes:write')] }, async () => 'x')
    app.get('/guarded', { preHandler: [app.authenticate, app.requirePermission('clothes:read')] }, async () => 'x')
    app.get('/open', { config: { access: 'public' } }, async () => 'open')
  })
  t.equal(guarded.error, undefined, 'a guarded read, a write that re-reads the caller and a declared-public route start fine')
  const anonymous = await guarded.app.inject({ url: '/guarded' })
  assertUnauthenticated(t, anonymous)
  const session = await signup(guarded.app)
  const signedIn = await guarded.app.inject({ url: '/guarded', headers: bearer(session.access_token) })
  t.equal(signedIn.statusCode, 200)
  t.equal(signedIn.body, 'x')
  t.equal((await guarded.app.inject({ url: '/open' })).body, 'open')
})

t.test('deny by default holds for routes added before the authorization plugin, in any plugin', async (t) => {
  // A fork that bundles a repository and its routes in one plugin, registered early.
  const early = Fastify()
  t.teardown(() => early.close())
  await early.register(accessAudit)
  await early.register(fp(async (scope) => { scope.get('/fixture-unguarded', async () => 'open?') }))
  early.decorate('authenticate', async () => {})
  await t.rejects(async () => { await early.ready() }, /Route GET \/fixture-unguarded must declare one access policy/)

  // Gatehouse's own early routes: the docs pages and the CORS preflight are declared public.
  const app = await build(t, { CORS_ORIGINS: 'https://app.example.com' })
  const policyOf = (method: string, url: string) => app.accessPolicies.find((route) => route.method === method && route.url === url)?.access
  t.equal(policyOf('GET', '/docs/json'), 'public', 'the docs, added before the authorization plugin, were audited')
  t.equal(policyOf('OPTIONS', '*'), 'public', 'and so was the CORS preflight route')
  t.equal(policyOf('GET', '/auth/me'), 'guarded')
})

t.test('a route module registered without the repository it uses stops the start, naming it', async (t) => {
  for (const [routes, module, repository] of [[clothesRoutes, 'clothes-routes', 'clothes-repository'], [videoRoutes, 'video-routes', 'videos-repository']] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    // A stand-in by name: the check runs before the module does.
    await app.register(fp(async () => {}, { name: 'authorization' }))
    await t.rejects(async () => { await app.register(routes) }, { message: `The dependency '${repository}' of plugin '${module}' is not registered` })
  }
})

t.test('every guarded answer is kept by no cache, errors included; public ones may be', async (t) => {
  const app = await build(t)
  const member = await signupWithRoles(app, ['user', 'member'])
  for (const [url, token, status] of [
    ['/clothes', member.access_token, 200], ['/videos/member', member.access_token, 200],
    ['/clothes', undefined, 401], ['/admin/users', member.access_token, 403]
  ] as const) {
    const response = await app.inject({ url, headers: token ? bearer(token) : {} })
    t.equal(response.statusCode, status, url)
    t.equal(response.headers['cache-control'], 'no-store', `${url}: ${status}`)
    t.equal(response.headers.pragma, 'no-cache', `${url}: ${status}`)
  }
  const catalogue = await app.inject({ url: '/videos' })
  t.equal(catalogue.statusCode, 200)
  t.equal(catalogue.headers['cache-control'], undefined, 'the public video list says nothing against caching')
})

t.test('errors a route module throws its own way keep the contract\'s shape, code and challenge', async (t) => {
  const app = await buildApp(loadConfig(TEST_ENV))
  t.teardown(() => app.close())
  const guard = { preHandler: [app.authenticate] }
  app.get('/sensible-forbidden', guard, async () => { throw app.httpErrors.forbidden() })
  // A fork's own code, which it adds to ERROR_CODES (errors.ts) for its OpenAPI document.
  app.get('/own-code', guard, async () => { throw apiError(409, 'note_v2_conflict' as ErrorCode, 'That note changed meanwhile.') })
  app.get('/no-code', guard, async () => { throw app.httpErrors.unprocessableEntity('Not like this.') })
  app.get('/public-forbidden', { config: { access: 'public' } }, async () => { throw app.httpErrors.forbidden() })
  await app.ready()
  const session = await signup(app)
  const get = (url: string) => app.inject({ url, headers: bearer(session.access_token) })

  const forbidden = await get('/sensible-forbidden')
  assertForbidden(t, forbidden)
  const own = await get('/own-code')
  t.equal(own.statusCode, 409)
  t.same(own.json(), { statusCode: 409, error: 'Conflict', message: 'That note changed meanwhile.', code: 'note_v2_conflict' })
  const named = await get('/no-code')
  t.equal(named.statusCode, 422)
  t.same(named.json(), { statusCode: 422, error: 'Unprocessable Entity', message: 'Not like this.', code: 'unprocessable_entity' })
  // RFC 6750 §3.1's insufficient_scope speaks of a token: a public route's 403 has none to speak of.
  for (const headers of [{}, bearer(session.access_token)]) {
    const publicForbidden = await app.inject({ url: '/public-forbidden', headers })
    t.equal(publicForbidden.statusCode, 403)
    t.equal(publicForbidden.json().code, 'forbidden')
    t.equal(publicForbidden.headers['www-authenticate'], undefined, 'no challenge on a public route\'s 403')
  }
})

t.test('who may ask is answered before whether the request is well-formed: 401, then 403, then 400', async (t) => {
  const app = await build(t)
  const user = await signup(app)
  const developer = await signupWithRoles(app, ['user', 'developer'])
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const call = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, token?: string, payload?: object) =>
    app.inject({ method, url, ...(token ? { headers: bearer(token) } : {}), ...(payload !== undefined ? { payload } : {}) })
  const cases: Array<[string, () => Promise<LightMyRequestResponse>, number, string]> = [
    ['anonymous, invalid body', () => call('POST', '/videos', undefined, { title: '' }), 401, 'missing_token'],
    ['anonymous, malformed id', () => call('DELETE', '/auth/sessions/not-a-uuid'), 401, 'missing_token'],
    // Longer than Fastify's router takes by default (100 characters): it still reaches the route.
    ['anonymous, over-long id', () => call('DELETE', `/auth/sessions/${'a'.repeat(101)}`), 401, 'missing_token'],
    ['not allowed, over-long id', () => call('PATCH', `/admin/users/${'a'.repeat(5000)}`, user.access_token, { disabled: true }), 403, 'forbidden'],
    ['allowed, over-long id', () => call('DELETE', `/auth/sessions/${'a'.repeat(101)}`, user.access_token), 400, 'validation_error'],
    ['anonymous, NUL in the body', () => call('PATCH', '/auth/me', undefined, { name: 'a\u0000b' }), 401, 'missing_token'],
    ['anonymous, malformed query', () => call('GET', '/admin/users?limit=abc'), 401, 'missing_token'],
    ['invalid token, invalid body', () => call('POST', '/clothes', 'not.a.token', { price: 'free' }), 401, 'invalid_token'],
    ['not allowed, invalid body', () => call('POST', '/videos', user.access_token, { title: '' }), 403, 'forbidden'],
    ['not allowed, malformed query', () => call('GET', '/admin/users?limit=abc', user.access_token), 403, 'forbidden'],
    ['allowed, invalid body', () => call('POST', '/videos', developer.access_token, { title: '' }), 400, 'validation_error'],
    ['allowed, malformed query', () => call('GET', '/admin/users?limit=abc', admin.access_token), 400, 'validation_error'],
    ['allowed, NUL in the body', () => call('PATCH', '/auth/me', user.access_token, { name: 'a\u0000b' }), 400, 'validation_error'],
    // Ownership needs the validated id, so it comes after: a malformed id is 400, not a failed lookup.
    ['owner check, malformed id', () => call('PATCH', '/videos/not-a-uuid', developer.access_token, { title: 'x' }), 400, 'validation_error']
  ]
  for (const [label, send, status, code] of cases) {
    const response = await send()
    t.equal(response.statusCode, status, label)
    t.equal(response.json().code, code, label)
    if (status === 401) t.match(response.headers['www-authenticate'], /^Bearer realm="gatehouse"/, `${label}: a challenge`)
    t.equal(response.headers['cache-control'], 'no-store', `${label}: a guarded route's answer`)
  }
})

t.test('requireOwnerOr: someone else\'s resource is 403, or with othersSee: not_found the same 404 as none', async (t) => {
  const app = await buildApp(loadConfig(TEST_ENV))
  t.teardown(() => app.close())
  // A fork's resource: note id → owner id.
  const owners = new Map<string, string>()
  const ownerOf = async (request: { params: unknown }) => {
    const ownerId = owners.get((request.params as { id: string }).id)
    return ownerId === undefined ? undefined : { ownerId }
  }
  for (const othersSee of ['forbidden', 'not_found'] as const) {
    app.delete(`/${othersSee}/:id`, {
      preHandler: [app.authenticate, app.loadAccount, app.requireOwnerOr('videos:manage-any', ownerOf, { othersSee })]
    }, async (_request, reply) => reply.code(204).send())
  }
  await app.ready()
  const [alice, bob, admin] = [await signup(app), await signup(app), await signupWithRoles(app, ['user', 'admin'])]
  owners.set('alices', alice.user.id)

  const remove = (othersSee: string, id: string, session: SessionBody) =>
    app.inject({ method: 'DELETE', url: `/${othersSee}/${id}`, headers: bearer(session.access_token) })
  const forbidden = await remove('forbidden', 'alices', bob)
  t.equal(forbidden.statusCode, 403)
  t.equal(forbidden.json().code, 'forbidden')
  t.equal((await remove('forbidden', 'missing', bob)).statusCode, 404)

  const hidden = await remove('not_found', 'alices', bob)
  const missing = await remove('not_found', 'missing', bob)
  t.equal(hidden.statusCode, 404)
  t.same(hidden.json(), missing.json(), 'someone else\'s note reads exactly as no note')
  t.equal(hidden.headers['www-authenticate'], undefined, 'and carries no insufficient_scope challenge')
  for (const othersSee of ['forbidden', 'not_found']) {
    t.equal((await remove(othersSee, 'alices', alice)).statusCode, 204, `${othersSee}: the owner may`)
    t.equal((await remove(othersSee, 'alices', admin)).statusCode, 204, `${othersSee}: so may a holder of the permission`)
  }
})

t.test('accountOf: a route that reads the account without loadAccount fails closed, and the log names it', async (t) => {
  let log = ''
  const logStream = new PassThrough().on('data', (chunk) => { log += chunk })
  const app = await buildApp(loadConfig({ ...TEST_ENV, LOG_LEVEL: 'warn' }), { logStream })
  t.teardown(() => app.close())
  let reached = false
  app.get('/forgot-load-account', { preHandler: app.authenticate }, async (request) => {
    const { user } = accountOf(request)
    reached = true
    return { email: user.email }
  })
  app.get('/loads-account', { preHandler: [app.authenticate, app.loadAccount] }, async (request) => ({ email: accountOf(request).user.email }))
  await app.ready()
  const session = await signup(app)

  const forgot = await app.inject({ url: '/forgot-load-account', headers: bearer(session.access_token) })
  t.equal(forgot.statusCode, 500)
  t.same(forgot.json(), { statusCode: 500, error: 'Internal Server Error', code: 'internal_error', message: 'Something went wrong on our side.' }, 'the generic 500 body, nothing of the cause')
  t.notOk(reached, 'the handler stops at accountOf')
  t.match(log, 'GET /forgot-load-account reads the account without the loadAccount preHandler')

  const loaded = await app.inject({ url: '/loads-account', headers: bearer(session.access_token) })
  t.equal(loaded.statusCode, 200)
  t.same(loaded.json(), { email: session.user.email })
})

t.test('GET /videos and /videos/member list newest first', async (t) => {
  const app = await build(t)
  const developer = await signupWithRoles(app, ['user', 'developer'])
  const publish = async (title: string, isMemberOnly: boolean) => {
    const response = await app.inject({
      method: 'POST',
      url: '/videos',
      headers: bearer(developer.access_token),
      payload: { title, author: 'Ada', url: 'https://videos.example.com/x.mp4', is_member_only: isMemberOnly }
    })
    t.equal(response.statusCode, 201)
    await sleep(5)
  }
  for (const title of ['first', 'second', 'third']) {
    await publish(`free ${title}`, false)
    await publish(`member ${title}`, true)
  }
  const free = (await app.inject({ url: '/videos' })).json() as Array<{ title: string }>
  t.same(free.map((video) => video.title), ['free third', 'free second', 'free first'])
  const member = (await app.inject({ url: '/videos/member', headers: bearer(developer.access_token) })).json() as Array<{ title: string }>
  t.same(member.map((video) => video.title), ['member third', 'member second', 'member first'])

  // Published at the same moment (db:seed does): by id, the same on every database.
  await dbRun(app, 'update videos set created_at = ?', new Date())
  const tied = (await app.inject({ url: '/videos' })).json() as Array<{ id: string }>
  t.same(tied.map((video) => video.id), tied.map((video) => video.id).sort().reverse(), 'then by id')
})

t.test('PATCH /videos/:id changes author and url too, and keeps created_at', async (t) => {
  const app = await build(t)
  const developer = await signupWithRoles(app, ['user', 'developer'])
  const created = (await app.inject({
    method: 'POST',
    url: '/videos',
    headers: bearer(developer.access_token),
    payload: { title: 'Intro', author: 'Ada', url: 'https://videos.example.com/intro.mp4' }
  })).json()
  const sibling = await newVideo(app, developer, false, 'Outro')
  const siblingBefore = await videoRow(app, sibling.id)
  await sleep(5)
  const edited = await app.inject({
    method: 'PATCH',
    url: `/videos/${created.id}`,
    headers: bearer(developer.access_token),
    payload: { author: 'Grace', url: 'https://videos.example.com/intro-v2.mp4' }
  })
  t.equal(edited.statusCode, 200)
  t.same(await videoRow(app, sibling.id), siblingBefore, 'the same developer\'s other video is unchanged')
  t.match(edited.json(), { title: 'Intro', author: 'Grace', url: 'https://videos.example.com/intro-v2.mp4', is_member_only: false })
  t.equal(edited.json().created_at, created.created_at, 'created_at does not move')
  t.ok(edited.json().updated_at > created.updated_at, 'updated_at does')
  t.match(await dbGet(app, 'select author, url, created_at from videos where id = ?', created.id),
    { author: 'Grace', url: 'https://videos.example.com/intro-v2.mp4', created_at: Date.parse(created.created_at) })
})

t.test('GET /clothes is by name, ASCII letters of either case alike, then by code point, then id, on every database', async (t) => {
  const app = await build(t)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  // A database whose locale orders text otherwise (en_US: `apple` before `Zebra`, `Äpfel` first).
  if (app.database.dialect.name === 'postgres') await dbRun(app, 'alter table clothes alter column name type text collate "en-x-icu"')
  // Inserted out of order, so neither insertion order nor the random ids can pass for name order.
  const names = ['Tee', 'zebra', 'Cap', 'Socks', 'Äpfel', 'hoodie', 'Beanie', 'Scarf', 'Cap', 'cap', 'Zebra', 'Cap', 'Cap', 'Cap']
  const ids: Record<string, string[]> = {}
  for (const name of names) {
    const response = await app.inject({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name, price: 100 } })
    t.equal(response.statusCode, 201)
    ;(ids[name] ??= []).push(response.json().id)
  }
  const list = (await app.inject({ url: '/clothes', headers: bearer(admin.access_token) })).json() as Array<{ id: string, name: string }>
  t.same(list.map((item) => item.name),
    ['Beanie', 'Cap', 'Cap', 'Cap', 'Cap', 'Cap', 'cap', 'hoodie', 'Scarf', 'Socks', 'Tee', 'Zebra', 'zebra', 'Äpfel'], 'by name')
  t.same(list.filter((item) => item.name === 'Cap').map((item) => item.id), [...ids.Cap!].sort(), 'one name: by id')
})

t.test('ids in paths are read case-insensitively (RFC 9562): an upper-case id finds what the lower-case one does', async (t) => {
  const app = await build(t)
  const developer = await signupWithRoles(app, ['user', 'developer'])
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const video = await newVideo(app, developer)
  const upper = (id: string) => id.toUpperCase()

  const renamed = await app.inject({ method: 'PATCH', url: `/videos/${upper(video.id)}`, headers: bearer(developer.access_token), payload: { title: 'Renamed' } })
  t.equal(renamed.statusCode, 200, 'the owner edits their video by its upper-case id')
  t.equal(renamed.json().id, video.id, 'answered with the id as stored')
  t.equal((await videoRow(app, video.id))?.title, 'Renamed')

  const user = await app.inject({ url: `/admin/users/${upper(developer.user.id)}`, headers: bearer(admin.access_token) })
  t.equal(user.statusCode, 200, 'an admin reads a user by the upper-case id')
  t.equal(user.json().id, developer.user.id)
  // ajv's uuid format also takes a `urn:uuid:` prefix, which no stored id has: refused, not a 404.
  for (const prefix of ['urn:uuid:', 'URN:UUID:']) {
    const urn = await app.inject({ url: `/admin/users/${prefix}${developer.user.id}`, headers: bearer(admin.access_token) })
    t.equal(urn.statusCode, 400, `${prefix}: refused`)
    t.equal(urn.json().code, 'validation_error')
  }

  const sid = String(tokenPayload(developer.access_token).sid)
  const revoked = await app.inject({ method: 'DELETE', url: `/auth/sessions/${upper(sid)}`, headers: bearer(admin.access_token) })
  t.equal(revoked.statusCode, 404, 'someone else\'s session stays out of reach in any case')
  const own = await app.inject({ method: 'DELETE', url: `/auth/sessions/${upper(sid)}`, headers: bearer(developer.access_token) })
  t.equal(own.statusCode, 204, 'the user revokes their own session by the upper-case id')
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(developer.access_token) })).statusCode, 401, 'and it is revoked')
})

t.test('writes re-read the caller\'s account: a demotion, a disable or a sign-out applies to them at once, while reads go on until the token expires', async (t) => {
  const app = await build(t)
  const call = (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, token: string, payload?: object) =>
    app.inject({ method, url, headers: bearer(token), ...(payload ? { payload } : {}) })
  const item = { name: 'Scarf', price: 1500 }
  const video = { title: 'Fresh', author: 'Ada', url: 'https://videos.example.com/fresh.mp4' }

  // Demoted in the database; the access token still names the old roles.
  const admin = await signupWithRoles(app, ['user', 'admin'])
  await dbRun(app, 'update users set roles = ? where id = ?', ['user'], admin.user.id)
  assertForbidden(t, await call('POST', '/clothes', admin.access_token, item))
  t.equal(await clothesCount(app), 0, 'nothing added')
  t.equal((await call('GET', '/clothes', admin.access_token)).statusCode, 200, 'reading the catalogue stays stateless')

  const developer = await signupWithRoles(app, ['user', 'developer'])
  const own = await newVideo(app, developer)
  const others = await newVideo(app, await signupWithRoles(app, ['user', 'developer']))
  await dbRun(app, 'update users set roles = ? where id = ?', ['user'], developer.user.id)
  assertForbidden(t, await call('POST', '/videos', developer.access_token, video))
  assertForbidden(t, await call('PATCH', `/videos/${others.id}`, developer.access_token, { title: 'Taken' }))
  t.equal((await call('PATCH', `/videos/${own.id}`, developer.access_token, { title: 'Still mine' })).statusCode, 200, 'an owner still changes their own video')
  t.equal(await videoCount(app), 2, 'nothing published')
  t.equal((await videoRow(app, others.id))?.title, others.title)

  // A disabled user, and a session signed out, are refused as on the account endpoints.
  const disabled = await signupWithRoles(app, ['user', 'admin'])
  await dbRun(app, 'update users set disabled = ? where id = ?', true, disabled.user.id)
  const signedOut = await signupWithRoles(app, ['user', 'admin'])
  t.equal((await call('POST', '/auth/logout', signedOut.access_token)).statusCode, 204)
  for (const [label, session] of [['disabled', disabled], ['signed out', signedOut]] as const) {
    for (const [method, url, payload] of [['POST', '/clothes', item], ['POST', '/videos', video], ['PATCH', `/videos/${own.id}`, { title: 'No' }], ['DELETE', `/videos/${own.id}`, undefined]] as const) {
      const response = await call(method, url, session.access_token, payload)
      t.equal(response.statusCode, 401, `${label}: ${method} ${url}`)
      t.equal(response.json().code, 'invalid_token', `${label}: ${method} ${url}`)
    }
  }
  t.equal(await clothesCount(app), 0)
  t.equal(await videoCount(app), 2)
  t.equal((await videoRow(app, own.id))?.title, 'Still mine')
})
