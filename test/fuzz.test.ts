/**
 * Property-based fuzzing of every route: junk bodies, params, query strings and headers, with and
 * without real credentials, must never get a 5xx, a stack trace, an off-contract error shape or a
 * secret. `npm test` runs FUZZ_RUNS (default 60) cases per route; `npm run fuzz` runs 2000.
 * Replay a failure with the seed fast-check prints: FUZZ_SEED=<seed> npx tap test/fuzz.test.ts
 */
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import fc from 'fast-check'
import t from 'tap'
import { ROLES } from '../src/auth/permissions.ts'
import { kidFor } from '../src/auth/tokens.ts'
import type { App } from '../src/app.ts'
import { TEST_PASSWORD, TEST_SECRET, type SessionBody, bearer, build, forgeToken, signup, tokenPayload, uniqueEmail, validClaims } from './helper.ts'

const numRuns = Number(process.env.FUZZ_RUNS ?? 60)
const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined
// includeErrorInReport: the failed assertion (status and body) is printed next to the seed.
const fuzzOptions = { numRuns, includeErrorInReport: true, ...(seed === undefined ? {} : { seed }) }

// ---------------------------------------------------------------------------------------------
// The app under test: one user, one admin (roles set in the database, then refreshed), one video
// and one clothing item, so guarded handlers and real ids are reached. The database is restored
// after every request, so no case depends on what an earlier one deleted, revoked or rotated.
// ---------------------------------------------------------------------------------------------

const app = await build(t)
/** Raw SQL on the test database (SQLite in memory, `?` parameters). */
const sql = (text: string, params: unknown[] = []) => app.database.query(text, params)

const user = await signup(app, uniqueEmail('fuzz-user'))
const adminSignup = await signup(app, uniqueEmail('fuzz-admin'))
await sql('update users set roles = ? where id = ?', [JSON.stringify(['user', 'admin']), adminSignup.user.id])
const adminRefresh = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: adminSignup.refresh_token } })
if (adminRefresh.statusCode !== 200) throw new Error(`admin refresh failed: ${adminRefresh.body}`)
const admin: SessionBody = adminRefresh.json()

const video = await app.inject({
  method: 'POST',
  url: '/videos',
  headers: bearer(admin.access_token),
  payload: { title: 'Fuzzing 101', author: 'Ada', url: 'https://videos.example.com/fuzz.mp4', is_member_only: true }
})
const clothing = await app.inject({
  method: 'POST',
  url: '/clothes',
  headers: bearer(admin.access_token),
  payload: { name: 'Fuzzy jumper', color: 'grey', size: 'M', price: 1999 }
})
if (video.statusCode !== 201 || clothing.statusCode !== 201) throw new Error(`fixtures failed: ${video.body} ${clothing.body}`)

const idsOf = {
  users: [user.user.id, admin.user.id],
  sessions: [String(tokenPayload(user.access_token).sid), String(tokenPayload(admin.access_token).sid)],
  videos: [String(video.json().id)],
  clothes: [String(clothing.json().id)]
}
const knownIds = Object.values(idsOf).flat()
/** The ids that exist behind a route's `:id`, so its handler finds something. */
const idsFor = (url: string) =>
  url.startsWith('/admin/users') ? idsOf.users : url.startsWith('/auth/sessions') ? idsOf.sessions : url.startsWith('/videos') ? idsOf.videos : knownIds

type Row = Record<string, unknown>
const tables = (await sql("select name from sqlite_master where type = 'table' and name not like 'sqlite_%' and name not like '\\_\\_%' escape '\\'"))
  .map(({ name }) => String(name))
const snapshot = new Map<string, Row[]>()
for (const table of tables) snapshot.set(table, await sql(`select * from "${table}"`))
const restoreSteps = [...snapshot].flatMap(([table, rows]): Array<[string, unknown[]]> => [
  [`delete from "${table}"`, []],
  ...rows.map((row): [string, unknown[]] => {
    const columns = Object.keys(row)
    return [`insert into "${table}" (${columns.map((c) => `"${c}"`).join(', ')}) values (${columns.map(() => '?').join(', ')})`, Object.values(row)]
  })
])

/** Back to the fixtures: whatever a case deleted, disabled, revoked or rotated is undone. */
async function restoreDatabase (): Promise<void> {
  await sql('pragma foreign_keys = off')
  await sql('begin')
  for (const [text, params] of restoreSteps) await sql(text, params)
  await sql('commit')
  await sql('pragma foreign_keys = on')
}

const initialSecrets = [...snapshot.get('refresh_tokens') ?? [], ...snapshot.get('users') ?? []]
  .flatMap((row) => [row.token_hash, row.password_hash])
  .filter((value): value is string => typeof value === 'string')

/** Every refresh-token hash and password hash the database holds now or held at the start. */
async function storedSecrets (): Promise<string[]> {
  const hashes = (await sql('select token_hash as s from refresh_tokens union select password_hash from users')).map(({ s }) => String(s))
  return [...new Set([...hashes, ...initialSecrets, TEST_SECRET])]
}

// ---------------------------------------------------------------------------------------------
// Routes: read from the router itself, so a route added later is fuzzed too (generically).
// ---------------------------------------------------------------------------------------------

interface Route { method: string, url: string }

/** Parses `printRoutes({ commonPrefix: false })`: one line per node, children indented by 4. */
function listRoutes (server: App): Route[] {
  const routes: Route[] = []
  const parents: string[] = []
  for (const line of server.printRoutes({ commonPrefix: false }).split('\n')) {
    const match = /^(.*?)[├└]── (\S+)(?: \(([^)]*)\))?$/.exec(line)
    if (!match) continue
    const depth = match[1]!.length / 4
    const path = (parents[depth - 1] ?? '') + match[2]!
    parents[depth] = path
    parents.length = depth + 1
    for (const method of (match[3] ?? '').split(',').map((m) => m.trim()).filter(Boolean)) {
      if (method !== 'HEAD') routes.push({ method, url: path })
    }
  }
  return routes
}

const routes = listRoutes(app)
const EXPECTED_ROUTES = [
  'GET /health',
  'POST /auth/signup', 'POST /auth/login', 'POST /auth/refresh', 'POST /auth/token', 'POST /auth/logout',
  'GET /auth/me', 'PATCH /auth/me', 'POST /auth/password', 'GET /auth/sessions', 'DELETE /auth/sessions/:id',
  'GET /videos', 'POST /videos', 'GET /videos/member', 'PATCH /videos/:id', 'DELETE /videos/:id',
  'GET /clothes', 'POST /clothes',
  'GET /admin/users', 'GET /admin/users/:id', 'PATCH /admin/users/:id', 'DELETE /admin/users/:id'
]

// ---------------------------------------------------------------------------------------------
// Arbitraries
// ---------------------------------------------------------------------------------------------

/** Characters a real HTTP parser lets through in a header value. */
const headerChar = fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code))
const headerText = (maxLength = 60) => fc.string({ unit: headerChar, maxLength })
/** Characters that survive in a request target (no space, no fragment). */
const urlChar = fc.integer({ min: 0x21, max: 0x7e }).filter((code) => code !== 0x23).map((code) => String.fromCharCode(code))

const hugeString = fc.tuple(fc.constantFrom('a', 'é', '🦄', '\u0000', '%', '"', '\\', '<'), fc.integer({ min: 300, max: 3000 }))
  .map(([c, n]) => c.repeat(n))
const text = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'grapheme', maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 30 }),
  { weight: 1, arbitrary: hugeString }
)
const trickyKey = fc.oneof(
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf', 'password_hash', 'roles', 'id', 'user_id', 'disabled', ''),
  fc.string({ maxLength: 12 })
)
/** Objects built with Object.fromEntries, so `__proto__` is an own key and reaches the wire. */
const protoObject = fc.array(fc.tuple(trickyKey, fc.jsonValue({ maxDepth: 2 })), { maxLength: 4 })
  .map((entries) => Object.fromEntries([['__proto__', { isAdmin: true, roles: ['admin'] }], ...entries]))
const junkValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  text,
  fc.constantFrom(null, true, false, 0, -1, 1.5, 1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, '', ' ', 'null', '{}', '[]', [], {}),
  protoObject
)

const pick = <T>(plausible: fc.Arbitrary<T>) => fc.oneof({ weight: 3, arbitrary: plausible }, { weight: 1, arbitrary: junkValue })

const email = fc.oneof(
  fc.constantFrom(user.user.email, admin.user.email, ` ${user.user.email.toUpperCase()} `, 'a@b', 'not-an-email', `${'a'.repeat(250)}@example.com`),
  fc.emailAddress(),
  text
)
const password = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(TEST_PASSWORD, 'password', 'password123', 'short', '', 'x'.repeat(129), '🦄'.repeat(128)) },
  { weight: 2, arbitrary: fc.string({ maxLength: 7 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', minLength: 8, maxLength: 40 }) },
  { weight: 2, arbitrary: hugeString }
)
const refreshToken = fc.oneof(fc.constantFrom(user.refresh_token, admin.refresh_token, adminSignup.refresh_token, user.access_token), text)
const name = fc.oneof(fc.string({ unit: 'grapheme', maxLength: 120 }), fc.constant(null))
const roles = fc.uniqueArray(fc.oneof(fc.constantFrom(...ROLES), fc.string({ maxLength: 10 })), { maxLength: 6 })
const httpUrl = fc.oneof(fc.webUrl(), fc.constantFrom('https://', 'http://x', 'javascript:alert(1)', 'ftp://x.io/a', `https://x.io/${'a'.repeat(3000)}`))
const price = fc.oneof(fc.integer(), fc.integer({ min: 0, max: 100_000_000 }), fc.double(), fc.constantFrom(1e21, -0, 1999, '1999'))
const cursor = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }).map((value) => Buffer.from(JSON.stringify(value) ?? '').toString('base64url')),
  fc.tuple(fc.oneof(fc.integer(), fc.double(), fc.constant(Number.MAX_SAFE_INTEGER)), fc.oneof(fc.uuid(), fc.string())).map((pair) => Buffer.from(JSON.stringify(pair)).toString('base64url')),
  text
)

/** The real field names of each route's body and query string, with plausible values. */
const BODY_FIELDS: Record<string, Record<string, fc.Arbitrary<unknown>>> = {
  'POST /auth/signup': { email, password, name },
  'POST /auth/login': { email, password },
  'POST /auth/refresh': { refresh_token: refreshToken },
  'POST /auth/token': {
    grant_type: fc.constantFrom('password', 'refresh_token', '', 'client_credentials', 'authorization_code', 'PASSWORD'),
    username: email,
    password,
    refresh_token: refreshToken,
    client_id: text,
    client_secret: text,
    scope: text
  },
  'POST /auth/logout': { scope: fc.constantFrom('local', 'global', 'all'), refresh_token: refreshToken },
  'PATCH /auth/me': { name },
  'POST /auth/password': { current_password: password, new_password: password },
  'POST /videos': { title: text, author: text, url: httpUrl, is_member_only: fc.boolean() },
  'PATCH /videos/:id': { title: text, author: text, url: httpUrl, is_member_only: fc.boolean() },
  'POST /clothes': { name: text, color: text, size: text, price },
  'PATCH /admin/users/:id': { roles, disabled: fc.boolean(), name }
}
const QUERY_FIELDS: Record<string, Record<string, fc.Arbitrary<string>>> = {
  'GET /admin/users': {
    limit: fc.oneof(fc.integer({ min: -5, max: 200 }).map(String), fc.constantFrom('', 'abc', '1.5', '1e2', '20&limit=30')),
    cursor,
    email: fc.oneof(email, fc.string({ maxLength: 5 }))
  }
}

const str = (minLength: number, maxLength: number) => fc.oneof(
  { weight: 3, arbitrary: fc.string({ minLength, maxLength }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', minLength, maxLength: Math.min(maxLength, 20) }) }
)
const goodPassword = fc.oneof(fc.constant(TEST_PASSWORD), fc.string({ minLength: 8, maxLength: 30 }), fc.constantFrom('password123', 'Tr0ub4dor&3 staple'))
const knownEmail = fc.constantFrom(user.user.email, admin.user.email, ` ${user.user.email.toUpperCase()} `)
const goodVideo = { title: str(1, 200), author: str(1, 100), url: fc.webUrl(), is_member_only: fc.boolean() }
const optional = { requiredKeys: [] as never[] }
const nonEmpty = (arb: fc.Arbitrary<Record<string, unknown>>) => arb.filter((value) => Object.keys(value).length > 0)

/**
 * Bodies that pass validation, so the handlers behind it run (sign-ins hash: a minority of cases).
 * Every route not listed here gets only the mutated and junk bodies.
 */
const VALID_BODIES: Record<string, fc.Arbitrary<unknown>> = {
  'POST /auth/signup': fc.record({ email: fc.oneof(fc.emailAddress(), knownEmail), password: goodPassword, name: str(1, 100) }, { requiredKeys: ['email', 'password'] }),
  'POST /auth/login': fc.record({ email: fc.oneof(knownEmail, fc.emailAddress()), password: goodPassword }),
  'POST /auth/refresh': fc.record({ refresh_token: refreshToken }),
  'POST /auth/token': fc.oneof(
    fc.record({ grant_type: fc.constant('password'), username: fc.oneof(knownEmail, fc.emailAddress()), password: goodPassword, client_id: str(0, 20), client_secret: str(0, 20), scope: str(0, 20) }, { requiredKeys: ['grant_type', 'username', 'password'] }),
    fc.record({ grant_type: fc.constant('refresh_token'), refresh_token: refreshToken, client_id: str(0, 20) }, { requiredKeys: ['grant_type', 'refresh_token'] })
  ),
  'POST /auth/logout': fc.oneof(fc.constant({}), fc.record({ scope: fc.constantFrom('local', 'global') }), fc.record({ refresh_token: refreshToken })),
  'PATCH /auth/me': fc.record({ name: fc.oneof(str(1, 100), fc.constant(null)) }),
  'POST /auth/password': fc.record({ current_password: goodPassword, new_password: goodPassword }),
  'POST /videos': fc.record(goodVideo, { requiredKeys: ['title', 'author', 'url'] }),
  'PATCH /videos/:id': nonEmpty(fc.record(goodVideo, optional)),
  'POST /clothes': fc.record({ name: str(1, 200), color: str(1, 50), size: str(1, 20), price: fc.integer({ min: 0, max: 100_000_000 }) }, { requiredKeys: ['name', 'price'] }),
  'PATCH /admin/users/:id': nonEmpty(fc.record({
    roles: fc.uniqueArray(fc.constantFrom(...ROLES), { maxLength: 4 }),
    disabled: fc.boolean(),
    name: fc.oneof(str(1, 100), fc.constant(null))
  }, optional))
}

/** A body object: some of the real fields (plausible or junk values), sometimes junk keys too. */
function fieldObject (fields: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
  const known = fc.subarray(Object.keys(fields)).chain((keys) =>
    fc.tuple(...keys.map((key) => pick(fields[key]!).map((value) => [key, value] as const))))
  const extra = fc.oneof({ weight: 3, arbitrary: fc.constant([]) }, { weight: 1, arbitrary: fc.array(fc.tuple(trickyKey, junkValue), { minLength: 1, maxLength: 3 }) })
  return fc.tuple(known, extra).map(([a, b]) => Object.fromEntries([...a, ...b]))
}

const formEncode = (body: unknown): string => {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return String(body)
  return new URLSearchParams(Object.entries(body).map(([key, value]): [string, string] =>
    [key, typeof value === 'string' ? value : JSON.stringify(value) ?? ''])).toString()
}

const jsonTypes = fc.constantFrom('application/json', 'application/json', 'application/json', 'application/json; charset=utf-8', 'Application/JSON', 'application/json;charset=UTF-8', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'application/json;')
const otherTypes = fc.constantFrom('text/plain', 'text/html', 'multipart/form-data; boundary=x', 'application/xml', 'application/json-patch+json', 'application/vnd.api+json', 'application/octet-stream', '', 'junk', ';;', '*/*', 'application/x-www-form-urlencoded; charset=utf-8')
const formType = fc.constantFrom('application/x-www-form-urlencoded', 'application/x-www-form-urlencoded; charset=utf-8')
const rawBody = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom('{', '{"a":', '[', 'null', 'true', '""', '1e309', '{"__proto__":{"roles":["admin"]}}', '{"constructor":{"prototype":{"isAdmin":true}}}', '\uFEFF{}', '{"email":"a@b.io","email":"c@d.io"}', '\u0000'),
  hugeString,
  fc.integer({ min: 8 * 1024 - 10, max: 12 * 1024 }).map((n) => JSON.stringify({ name: 'x'.repeat(n) }))
)

interface Wire { payload?: string, contentType?: string }

function wireArb (body: fc.Arbitrary<unknown>): fc.Arbitrary<Wire> {
  const json = fc.tuple(body, jsonTypes).map(([value, type]) => ({ payload: JSON.stringify(value) ?? '', contentType: type }))
  const form = fc.tuple(body, formType).map(([value, type]) => ({ payload: formEncode(value), contentType: type }))
  const anyType = fc.option(fc.oneof(jsonTypes, otherTypes, formType), { nil: undefined })
  const mismatched = fc.tuple(fc.oneof(body.map((value) => JSON.stringify(value) ?? ''), rawBody), anyType)
    .map(([payload, type]) => ({ payload, ...(type === undefined ? {} : { contentType: type }) }))
  const none = anyType.map((type) => (type === undefined ? {} : { contentType: type }))
  return fc.oneof({ weight: 7, arbitrary: json }, { weight: 1, arbitrary: form }, { weight: 2, arbitrary: mismatched }, { weight: 1, arbitrary: none })
}

const now = () => Math.floor(Date.now() / 1000)
/** Any claim may be junk; `validClaims` fills in the rest with what Gatehouse would issue. */
const junkClaims = fc.record({
  sub: fc.oneof(fc.constantFrom(user.user.id, admin.user.id), fc.uuid(), junkValue),
  sid: fc.oneof(fc.constantFrom(...knownIds), fc.uuid(), junkValue),
  roles: fc.oneof(roles, junkValue),
  jti: fc.oneof(fc.uuid(), junkValue),
  iss: fc.oneof(fc.constantFrom('gatehouse', 'evil'), junkValue),
  aud: fc.oneof(fc.constantFrom('gatehouse', ['gatehouse', 'x'], 'other'), junkValue),
  iat: fc.oneof(fc.integer({ min: -100_000, max: 100_000 }).map((d) => now() + d), fc.constant(now() + 0.5), junkValue),
  exp: fc.oneof(fc.integer({ min: -100_000, max: 100_000 }).map((d) => now() + d), junkValue),
  nbf: fc.oneof(fc.integer({ min: -1000, max: 1000 }).map((d) => now() + d), junkValue)
}, { requiredKeys: [] })
/**
 * Well-formed tokens signed with the real secret for someone else: any roles, and a `sub` or
 * `sid` that may name no user or session (a user deleted within the access-token lifetime).
 */
const wellFormedClaims = fc.record({
  sub: fc.oneof(fc.constantFrom(user.user.id, admin.user.id), fc.uuid(), fc.string({ maxLength: 10 })),
  sid: fc.oneof(fc.constantFrom(...idsOf.sessions), fc.uuid()),
  roles: fc.uniqueArray(fc.constantFrom(...ROLES), { maxLength: 4 })
}, { requiredKeys: [] })
const junkHeader = fc.record({
  alg: fc.constantFrom('HS256', 'HS384', 'HS512', 'none', 'RS256', 'hs256', ''),
  typ: fc.constantFrom('at+jwt', 'JWT', 'refresh', ''),
  kid: fc.oneof(fc.constant(kidFor(TEST_SECRET)), fc.constant(kidFor('another-secret-that-is-at-least-32-bytes')), junkValue),
  crit: fc.constant(['exp'])
}, { requiredKeys: [] })
const forgedToken = fc.oneof(
  fc.tuple(fc.constantFrom(user, admin), wellFormedClaims)
    .map(([session, overrides]) => forgeToken(validClaims(session, { jti: 'fuzz', ...overrides }))),
  fc.tuple(
    fc.constantFrom(user, admin),
    junkClaims,
    junkHeader,
    fc.constantFrom(TEST_SECRET, 'another-secret-that-is-at-least-32-bytes', ''),
    fc.constantFrom('sha256', 'sha384', 'sha512')
  ).map(([session, overrides, header, secret, hmac]) => forgeToken(validClaims(session, overrides), { header, secret, hmac }))
)
const tamperedToken = fc.tuple(fc.constantFrom(user.access_token, admin.access_token), fc.nat(), fc.constantFrom('a', '.', '=', '')).map(([token, index, c]) => {
  const i = index % token.length
  return token.slice(0, i) + c + token.slice(i + 1)
})

const authorization: fc.Arbitrary<string | undefined> = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 7, arbitrary: fc.constantFrom(user, admin).map((session) => `Bearer ${session.access_token}`) },
  { weight: 3, arbitrary: forgedToken.map((token) => `Bearer ${token}`) },
  { weight: 1, arbitrary: tamperedToken.map((token) => `Bearer ${token}`) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('Bearer', 'bearer', 'BEARER', 'Bearer  ', 'Basic', 'Token', 'JWT', ''), headerText()).map(([scheme, rest]) => `${scheme} ${rest}`) },
  { weight: 1, arbitrary: fc.tuple(headerText(20), headerText(20)).map(([id, secret]) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`) },
  { weight: 1, arbitrary: fc.constantFrom('Bearer', 'Bearer ', `Bearer ${user.access_token} ${user.access_token}`, `Bearer ${user.refresh_token}`, `Bearer ${'a'.repeat(10_000)}`, `Bearer ${'a'.repeat(3000)}.${'b'.repeat(3000)}.${'c'.repeat(3000)}`, 'Bearer a.b.c', 'Bearer ..', 'Bearer e30.e30.', `bearer\t${user.access_token}`) },
  { weight: 1, arbitrary: headerText(200) }
)

const extraHeaders = fc.record({
  'user-agent': fc.oneof(headerText(), fc.integer({ min: 1000, max: 8000 }).map((n) => 'U'.repeat(n))),
  'x-forwarded-for': fc.oneof(fc.ipV4(), fc.ipV6(), headerText()),
  accept: fc.constantFrom('application/json', 'text/html', '*/*', 'junk', ''),
  'accept-encoding': fc.constantFrom('gzip', 'br', 'identity', 'junk'),
  origin: fc.oneof(fc.webUrl(), headerText())
}, { requiredKeys: [] })
const junkHeaders = fc.dictionary(fc.stringMatching(/^x-[a-z0-9-]{1,20}$/), headerText(), { maxKeys: 3 })

const paramValue = (ids: string[]) => fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...ids) },
  { weight: 1, arbitrary: fc.constantFrom(...knownIds) },
  { weight: 2, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.uuid().map((id) => id.toUpperCase()) },
  { weight: 1, arbitrary: fc.oneof(text, fc.uuid().map((id) => `${id}x`)).map((value) => encodeURIComponent(value)) },
  { weight: 1, arbitrary: fc.string({ unit: urlChar, maxLength: 20 }).map((value) => value.replaceAll('?', '%3F')) },
  { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '%E0%A4%A', '%00', '..', '.', '%2F', '%2e%2e', 'a/b', '', 'member', '%C0%AF', 'a'.repeat(5000), '00000000-0000-0000-0000-000000000000') }
)

function queryArb (fields: Record<string, fc.Arbitrary<string>> | undefined): fc.Arbitrary<string> {
  const keys = fc.oneof(fc.constantFrom(...Object.keys(fields ?? {}), 'access_token', '__proto__', 'constructor', 'limit'), fc.string({ maxLength: 8 }))
  const pairs = fc.array(fc.tuple(keys, fc.string({ maxLength: 20 })), { maxLength: 4 })
    .map((entries) => entries.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&'))
  const known = fields
    ? fc.tuple(...Object.entries(fields).map(([key, value]) => fc.option(value.map((v) => `${key}=${encodeURIComponent(v)}`), { nil: undefined })))
      .map((entries) => entries.filter((entry) => entry !== undefined).join('&'))
    : fc.constant('')
  const raw = fc.string({ unit: urlChar, maxLength: 60 })
  return fc.oneof({ weight: 3, arbitrary: fc.constant('') }, { weight: 3, arbitrary: known }, { weight: 2, arbitrary: pairs }, { weight: 1, arbitrary: raw }, { weight: 1, arbitrary: fc.constant(`access_token=${user.access_token}`) })
    .map((query) => (query === '' ? '' : `?${query}`))
}

interface Case {
  method: string
  url: string
  wire: Wire
  authorization: string | undefined
  headers: Record<string, string>
}

function caseArb (route: Route): fc.Arbitrary<Case> {
  const key = `${route.method} ${route.url}`
  const fields = BODY_FIELDS[key] ?? {}
  const valid = VALID_BODIES[key]
  const body = fc.oneof(
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
    { weight: 1, arbitrary: protoObject },
    { weight: 4, arbitrary: fieldObject(fields) },
    ...(valid ? [{ weight: 4, arbitrary: valid }] : [])
  )
  const params = route.url.split('/').filter((segment) => segment.startsWith(':') || segment === '*').length
  const method = fc.oneof({ weight: 12, arbitrary: fc.constant(route.method) }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD') })
  return fc.record({
    method,
    params: fc.array(paramValue(idsFor(route.url)), { minLength: params, maxLength: params }),
    query: queryArb(QUERY_FIELDS[key]),
    wire: route.method === 'GET' || route.method === 'DELETE'
      ? fc.oneof({ weight: 4, arbitrary: fc.constant({}) }, { weight: 1, arbitrary: wireArb(body) })
      : wireArb(body),
    authorization,
    extra: extraHeaders,
    junk: junkHeaders
  }).map(({ method, params, query, wire, authorization, extra, junk }) => {
    let index = 0
    const path = route.url.split('/').map((segment) => (segment.startsWith(':') || segment === '*' ? params[index++]! : segment)).join('/')
    // A target starting `//` or `/\\` is not a path to light-my-request's URL parser (nor to a proxy).
    return { method, url: `/${path.replace(/^[/\\]+/, '')}${query}`, wire, authorization, headers: { ...junk, ...extra } }
  })
}

// ---------------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------------

const STACK_TRACE = /(?:\n|\\n)\s+at |node_modules|\.ts:/g
const PASSWORD_HASH = /password_hash|passwordHash|\$argon2/g
const ERROR_KEYS = ['code', 'error', 'message', 'statusCode']
const OAUTH_ERROR_KEYS = ['error', 'error_description']

function fail (response: LightMyRequestResponse, problem: string): never {
  throw new Error(`${problem}: ${response.statusCode} ${response.headers['content-type'] ?? ''} ${response.body.slice(0, 500)}`)
}

function parse (body: string): { ok: true, value: unknown } | { ok: false } {
  try {
    return { ok: true, value: JSON.parse(body) }
  } catch {
    return { ok: false }
  }
}

/** Swagger UI, its assets and the OpenAPI document in YAML are not JSON API responses. */
const isDocumentation = (url: string) => /^\/docs(\/|$|\?)/.test(url)
const isJson = (response: LightMyRequestResponse) => /^application\/(?:[\w.+-]*\+)?json\b/i.test(String(response.headers['content-type'] ?? ''))

function checkResponse (request: Case, response: LightMyRequestResponse, secrets: string[]): void {
  const { statusCode, body } = response
  if (statusCode >= 500) fail(response, 'server error')
  const asset = statusCode < 300 && isDocumentation(request.url) && !isJson(response)
  // What the request itself carried may come back in a message ("body/password_hash is not allowed").
  const sent = `${request.url} ${request.wire.payload ?? ''}`
  const found = (pattern: RegExp) => [...body.matchAll(pattern)].some(([match]) => !sent.includes(match))
  if (!asset && found(STACK_TRACE)) fail(response, 'stack trace or source path in the body')
  if (found(PASSWORD_HASH)) fail(response, 'password hash in the body')
  for (const secret of secrets) if (body.includes(secret)) fail(response, 'a stored hash or secret in the body')

  const parsed = body === '' ? undefined : parse(body)
  if (statusCode < 400) {
    if (statusCode < 300 && !asset && parsed && !parsed.ok) fail(response, 'a 2xx body that is not JSON')
    if (statusCode === 204 && body !== '') fail(response, '204 with a body')
    return
  }
  if (request.method === 'HEAD') return
  if (!parsed?.ok) fail(response, 'an error without a JSON body')
  const error = parsed.value as Record<string, unknown>
  if (error === null || typeof error !== 'object' || Array.isArray(error)) fail(response, 'an error body that is not an object')
  const keys = Object.keys(error).sort()
  const isTokenEndpoint = request.method === 'POST' && request.url.split('?')[0] === '/auth/token'
  if (isTokenEndpoint) {
    if (keys.join() !== OAUTH_ERROR_KEYS.join()) fail(response, 'the token endpoint error is not {error, error_description}')
    if (typeof error.error !== 'string' || typeof error.error_description !== 'string') fail(response, 'OAuth error fields are not strings')
    return
  }
  if (keys.join() !== ERROR_KEYS.join()) fail(response, 'the error body is not exactly {statusCode, error, message, code}')
  if (typeof error.code !== 'string' || typeof error.error !== 'string' || typeof error.message !== 'string') fail(response, 'error fields of the wrong type')
  if (error.statusCode !== statusCode) fail(response, 'statusCode in the body differs from the response status')
}

async function send (request: Case): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = { ...request.headers }
  if (request.authorization !== undefined) headers.authorization = request.authorization
  if (request.wire.contentType !== undefined) headers['content-type'] = request.wire.contentType
  const options: InjectOptions = {
    method: request.method as NonNullable<InjectOptions['method']>,
    url: request.url,
    headers,
    ...(request.wire.payload === undefined ? {} : { payload: request.wire.payload })
  }
  return app.inject(options)
}

/**
 * Minimal counterexamples of server bugs this fuzzer found (since fixed), replayed first on every
 * run so a regression shows whatever the seed.
 */
const REGRESSIONS: Record<string, Case[]> = {
  // A server-signed access token whose `sub` names no user (the user was deleted within the
  // token's lifetime; access checks are stateless) publishing a video: the insert breaks the
  // videos.user_id foreign key; it answered 500, now 401 invalid_token.
  'POST /videos': [{
    method: 'POST',
    url: '/videos',
    wire: { payload: JSON.stringify({ title: 't', author: 'a', url: 'https://a.io' }), contentType: 'application/json' },
    authorization: `Bearer ${forgeToken(validClaims(user, { sub: '00000000-0000-4000-8000-000000000000', roles: ['developer'] }))}`,
    headers: {}
  }]
}

// `npm run fuzz` (2000 runs per route) needs longer than the suite's per-file timeout.
if (numRuns > 60) t.setTimeout(Math.max(120_000, numRuns * 300))

t.test('the fuzzer knows every route of the contract', async (t) => {
  const found = routes.map((route) => `${route.method} ${route.url}`)
  for (const expected of EXPECTED_ROUTES) t.ok(found.includes(expected), `${expected} is registered and fuzzed`)
})

for (const route of routes) {
  t.test(`${route.method} ${route.url} survives junk requests`, async (t) => {
    const statuses = new Map<number, number>()
    await fc.assert(fc.asyncProperty(caseArb(route), async (request) => {
      try {
        const response = await send(request)
        statuses.set(response.statusCode, (statuses.get(response.statusCode) ?? 0) + 1)
        checkResponse(request, response, await storedSecrets())
      } finally {
        await restoreDatabase()
      }
    }), { ...fuzzOptions, examples: (REGRESSIONS[`${route.method} ${route.url}`] ?? []).map((example): [Case] => [example]) })
    t.pass(`${numRuns} cases`)
    // FUZZ_STATS=1 shows which answers the cases reached (are guarded handlers hit at all?).
    if (process.env.FUZZ_STATS) t.comment([...statuses].sort(([a], [b]) => a - b).map(([status, n]) => `${status}×${n}`).join(' '))
  })
}
