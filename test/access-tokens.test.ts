import { createHmac } from 'node:crypto'
import t from 'tap'
import { buildApp } from '../src/app.ts'
import { kidFor } from '../src/auth/tokens.ts'
import { loadConfig } from '../src/config.ts'
import { TEST_ENV, TEST_SECRET, bearer, build, exchange, forgeToken, parseAnswer, signup, testDatabase, tokenPayload, validClaims } from './helper.ts'

const OTHER_SECRET = 'another-secret-of-at-least-thirty-two-bytes!!'
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
/** A token over exact JSON text, validly signed with our secret. */
function signRaw (header: string, payload: string): string {
  const input = `${Buffer.from(header).toString('base64url')}.${Buffer.from(payload).toString('base64url')}`
  return `${input}.${createHmac('sha256', TEST_SECRET).update(input).digest('base64url')}`
}

t.test('issued access tokens carry the contract header and claims', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const [header, payload] = session.access_token.split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString()))
  t.same(header, { alg: 'HS256', typ: 'at+jwt', kid: kidFor(TEST_SECRET) })
  t.same(Object.keys(payload).sort(), ['aud', 'exp', 'iat', 'iss', 'jti', 'roles', 'sid', 'sub'])
  t.equal(payload.sub, session.user.id)
  t.same(payload.roles, ['user'])
  t.equal(payload.exp - payload.iat, 900)
  t.ok(Number.isInteger(payload.iat) && Number.isInteger(payload.exp))
})

t.test('every access token has its own jti: a refresh issues a new one', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const refreshed = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })
  t.equal(refreshed.statusCode, 200)
  const [first, second] = [tokenPayload(session.access_token), tokenPayload(refreshed.json().access_token)]
  t.equal(second.sid, first.sid, 'the same session')
  t.type(first.jti, 'string')
  t.not(second.jti, first.jti, 'another jti')
  t.not(first.jti, first.sid, 'the jti is not the session id')
})

t.test('a forged token built like ours is accepted, so the refusals below are about the one defect', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  for (const url of ['/auth/me', '/me/permissions']) {
    const response = await app.inject({ url, headers: bearer(forgeToken(validClaims(session))) })
    t.equal(response.statusCode, 200, url)
  }
})

/**
 * A base64url segment with the unused low bits of its last character set: another spelling of the
 * same bytes (segments whose length is a multiple of 4 have no such bits, and none is needed here).
 */
function respelled (segment: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  if (segment.length % 4 === 0) throw new Error('this segment has no unused bits')
  const other = segment.slice(0, -1) + alphabet[alphabet.indexOf(segment.at(-1)!) ^ 1]
  if (!Buffer.from(other, 'base64url').equals(Buffer.from(segment, 'base64url'))) throw new Error('not the same bytes')
  return other
}

t.test('bad tokens get 401 invalid_token with a Bearer challenge', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const claims = validClaims(session)
  const now = Math.floor(Date.now() / 1000)
  const [realHeader, realPayload, realSignature] = session.access_token.split('.')
  const tampered = JSON.parse(Buffer.from(realPayload!, 'base64url').toString())
  tampered.roles = ['user', 'admin']

  const cases: Array<[string, string]> = [
    ['signed with another secret', forgeToken(claims, { secret: OTHER_SECRET, header: { kid: kidFor(TEST_SECRET) } })],
    ['alg none, no signature', `${b64({ alg: 'none', typ: 'at+jwt', kid: kidFor(TEST_SECRET) })}.${b64(claims)}.`],
    ['alg NONE', `${b64({ alg: 'NONE', typ: 'at+jwt', kid: kidFor(TEST_SECRET) })}.${b64(claims)}.`],
    ['alg None', `${b64({ alg: 'None', typ: 'at+jwt', kid: kidFor(TEST_SECRET) })}.${b64(claims)}.`],
    ['HS512 with our secret', forgeToken(claims, { header: { alg: 'HS512' }, hmac: 'sha512' })],
    ['HS384 with our secret', forgeToken(claims, { header: { alg: 'HS384' }, hmac: 'sha384' })],
    ['RS256 header, HMAC with the secret', forgeToken(claims, { header: { alg: 'RS256' } })],
    ['payload tampered (roles escalated)', `${realHeader}.${b64(tampered)}.${realSignature}`],
    ['empty signature', `${realHeader}.${realPayload}.`],
    ['unknown kid', forgeToken(claims, { header: { kid: 'not-a-known-kid' } })],
    ['no kid', forgeToken(claims, { header: { kid: undefined } })],
    ['typ JWT instead of at+jwt', forgeToken(claims, { header: { typ: 'JWT' } })],
    ['wrong issuer', forgeToken({ ...claims, iss: 'someone-else' })],
    ['wrong audience', forgeToken({ ...claims, aud: 'another-api' })],
    ['no iss', forgeToken({ ...claims, iss: undefined })],
    ['no aud', forgeToken({ ...claims, aud: undefined })],
    ['no jti', forgeToken({ ...claims, jti: undefined })],
    ['no iat', forgeToken({ ...claims, iat: undefined })],
    ['no exp', forgeToken({ ...claims, exp: undefined })],
    ['no sub', forgeToken({ ...claims, sub: undefined })],
    ['no sid', forgeToken({ ...claims, sid: undefined })],
    ['sid not a string', forgeToken({ ...claims, sid: 12345 })],
    ['jti not a string', forgeToken({ ...claims, jti: 12345 })],
    ['sub not a string', forgeToken({ ...claims, sub: 12345 })],
    ['roles not an array', forgeToken({ ...claims, roles: 'admin' })],
    ['an unknown role', forgeToken({ ...claims, roles: ['root'] })],
    ['a known role beside an unknown one', forgeToken({ ...claims, roles: ['user', 'root'] })],
    ['iat an hour in the future', forgeToken({ ...claims, iat: now + 3600, exp: now + 4500 })],
    ['iat just past the 10 s tolerance', forgeToken({ ...claims, iat: now + 12 })],
    ['nbf an hour in the future', forgeToken({ ...claims, nbf: now + 3600 })],
    ['fractional exp', forgeToken({ ...claims, exp: now + 900.5 })],
    ['fractional iat', forgeToken({ ...claims, iat: now - 0.5 })],
    ['not base64', 'not.a.jwt!'],
    ['two segments', `${realHeader}.${realPayload}`],
    ['garbage', 'garbage'],
    ['crit header with an unknown extension', forgeToken(claims, { header: { crit: ['exp-ext'], 'exp-ext': 1 } })],
    ['duplicate claims (roles escalated in the second)', signRaw(
      JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: kidFor(TEST_SECRET) }),
      JSON.stringify(claims).replace(/}$/, ',"roles":["user","admin"]}'))],
    ['whitespace in the JSON', signRaw(
      JSON.stringify({ alg: 'HS256', typ: 'at+jwt', kid: kidFor(TEST_SECRET) }, null, 1), JSON.stringify(claims))],
    ['10 KB token', forgeToken({ ...claims, padding: 'x'.repeat(10_000) })],
    // The same bytes, so the same valid HMAC: only the last character's unused bits differ.
    ['the signature spelled a second way', `${realHeader}.${realPayload}.${respelled(realSignature!)}`],
    ['the payload spelled a second way', `${realHeader}.${respelled(realPayload!)}.${realSignature}`]
  ]
  // /me/permissions answers from the token alone: no database read hides a check the token missed.
  for (const url of ['/auth/me', '/me/permissions']) {
    for (const [label, token] of cases) {
      const response = await app.inject({ url, headers: bearer(token) })
      t.equal(response.statusCode, 401, `${url}: ${label}`)
      t.equal(response.json().code, 'invalid_token', `${url}: ${label}`)
      t.equal(response.headers['www-authenticate'], 'Bearer realm="gatehouse", error="invalid_token", error_description="' +
        response.json().message + '"', `${url}: ${label}`)
    }
  }
})

t.test('request.user holds only a user whose claims passed every check: a good signature alone sets nothing', async (t) => {
  const app = await buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: await testDatabase() }))
  t.teardown(() => app.close())
  const seen: unknown[] = []
  app.addHook('onResponse', async (request) => { seen.push(request.user) })
  await app.ready()
  const session = await signup(app)
  for (const [label, claims] of [
    ['roles not an array', validClaims(session, { roles: 'admin' })],
    ['an unknown role', validClaims(session, { roles: ['root'] })],
    ['fractional exp', validClaims(session, { exp: Math.floor(Date.now() / 1000) + 900.5 })]
  ] as const) {
    const response = await app.inject({ url: '/me/permissions', headers: bearer(forgeToken(claims)) })
    t.equal(response.statusCode, 401, label)
    t.equal(seen.at(-1), null, `${label}: no payload left in request.user for a later hook to trust`)
  }
  t.equal((await app.inject({ url: '/me/permissions', headers: bearer(session.access_token) })).statusCode, 200)
  t.same(seen.at(-1), { id: session.user.id, sid: tokenPayload(session.access_token).sid, roles: ['user'] }, 'a token that passed: its user')
})

t.test('an access token of up to 4,096 characters is verified; a longer one is refused unread', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  /** A valid token of exactly `length` characters: claims padded, and the header too, to reach each length base64url can spell. */
  const tokenOfLength = (length: number) => {
    for (const header of [{}, { x: 1 }, { x: 12 }, { x: 123 }]) {
      for (let padding = 0; padding < length; padding++) {
        const token = forgeToken(validClaims(session, { padding: 'x'.repeat(padding) }), { header })
        if (token.length === length) return token
        if (token.length > length) break
      }
    }
    throw new Error(`no token of ${length} characters`)
  }
  t.equal((await app.inject({ url: '/me/permissions', headers: bearer(tokenOfLength(4096)) })).statusCode, 200, '4,096 characters')
  const longer = await app.inject({ url: '/me/permissions', headers: bearer(tokenOfLength(4097)) })
  t.equal(longer.statusCode, 401, '4,097 characters')
  t.equal(longer.json().code, 'invalid_token')
})

t.test('a token that names no key we know says so', async (t) => {
  const app = await build(t)
  const claims = validClaims(await signup(app))
  for (const [label, kid] of [['unknown kid', 'not-a-known-kid'], ['no kid', undefined], ['kid not a string', 7]] as const) {
    const response = await app.inject({ url: '/me/permissions', headers: bearer(forgeToken(claims, { header: { kid } })) })
    t.equal(response.statusCode, 401, label)
    t.same(response.json(), { statusCode: 401, error: 'Unauthorized', message: 'The access token is not signed by a key we know.', code: 'invalid_token' }, label)
  }
})

t.test('a token naming another user\'s session gets nothing from the account routes', async (t) => {
  const app = await build(t)
  const [owner, other] = [await signup(app), await signup(app)]
  const crossed = forgeToken(validClaims(other, { sid: validClaims(owner).sid }))
  const response = await app.inject({ url: '/auth/me', headers: bearer(crossed) })
  t.equal(response.statusCode, 401)
  t.equal(response.json().code, 'invalid_token')
  t.notMatch(response.body, owner.user.email)
})

t.test('an expired token gets 401 token_expired; the clock tolerance is 10 s', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const now = Math.floor(Date.now() / 1000)
  for (const exp of [now - 100, now - 12]) {
    const token = forgeToken(validClaims(session, { iat: now - 1000, exp }))
    const response = await app.inject({ url: '/auth/me', headers: bearer(token) })
    t.equal(response.statusCode, 401)
    t.equal(response.json().code, 'token_expired')
    t.match(response.headers['www-authenticate'], /^Bearer realm="gatehouse", error="invalid_token"/)
  }
  const withinTolerance = forgeToken(validClaims(session, { iat: now - 1000, exp: now - 5 }))
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(withinTolerance) })).statusCode, 200)
  const iatWithinTolerance = forgeToken(validClaims(session, { iat: now + 5 }))
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(iatWithinTolerance) })).statusCode, 200)
  // Not before: the same tolerance. Past it, invalid (the token is not yet one), not expired.
  const nbfWithinTolerance = forgeToken(validClaims(session, { nbf: now + 5 }))
  t.equal((await app.inject({ url: '/me/permissions', headers: bearer(nbfWithinTolerance) })).statusCode, 200, 'nbf 5 s ahead')
  const nbfPastTolerance = await app.inject({ url: '/me/permissions', headers: bearer(forgeToken(validClaims(session, { nbf: now + 12 }))) })
  t.equal(nbfPastTolerance.statusCode, 401, 'nbf 12 s ahead')
  t.equal(nbfPastTolerance.json().code, 'invalid_token')
})

t.test('the Authorization header is parsed as RFC 6750 says', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const token = session.access_token

  for (const scheme of ['bearer', 'BEARER', 'Bearer']) {
    const response = await app.inject({ url: '/auth/me', headers: { authorization: `${scheme} ${token}` } })
    t.equal(response.statusCode, 200, `scheme "${scheme}" is case-insensitive`)
  }

  const missing: Array<[string, Record<string, string>]> = [
    ['no header', {}],
    ['token without a scheme', { authorization: token }],
    ['Basic scheme', { authorization: 'Basic dXNlcjpwYXNz' }],
    ['scheme glued to the token', { authorization: `Bearer${token}` }]
  ]
  for (const [label, headers] of missing) {
    const response = await app.inject({ url: '/auth/me', headers })
    t.equal(response.statusCode, 401, label)
    t.equal(response.json().code, 'missing_token', label)
    t.equal(response.headers['www-authenticate'], 'Bearer realm="gatehouse"', label)
  }

  const malformed: Array<[string, string]> = [
    ['Bearer with no token', 'Bearer'],
    ['Bearer with blank token', 'Bearer    '],
    ['two tokens', `Bearer ${token} ${token}`]
  ]
  for (const [label, authorization] of malformed) {
    const response = await app.inject({ url: '/auth/me', headers: { authorization } })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, 'invalid_request', label)
    t.equal(response.headers['www-authenticate'],
      `Bearer realm="gatehouse", error="invalid_request", error_description="${response.json().message}"`, label)
    t.notMatch(response.json().message, /["\\]/, `${label}: the description needs no escaping`)
  }

  const query = await app.inject({ url: `/auth/me?access_token=${token}` })
  t.equal(query.statusCode, 401, 'tokens in the query string are not read')
  t.equal(query.json().code, 'missing_token')
})

t.test('an Authorization header sent twice is refused, whichever of the two is valid', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const request = (...authorizations: string[]) => exchange(port,
    `GET /auth/me HTTP/1.1\r\nHost: x\r\n${authorizations.map((value) => `authorization: ${value}\r\n`).join('')}Connection: close\r\n\r\n`)

  const once = await request(`Bearer ${session.access_token}`)
  t.match(once, /^HTTP\/1\.1 200 /, 'sent once: served')
  for (const [label, values] of [
    ['the valid token first', [`Bearer ${session.access_token}`, 'Bearer garbage']],
    ['the valid token last', ['Bearer garbage', `Bearer ${session.access_token}`]],
    ['the same token twice', [`Bearer ${session.access_token}`, `Bearer ${session.access_token}`]]
  ] as const) {
    const answer = parseAnswer(await request(...values))
    t.match(answer.statusLine, /^HTTP\/1\.1 400 /, label)
    t.equal((answer.body as { code: string }).code, 'invalid_request', label)
    t.match(answer.headers['www-authenticate'], /^Bearer realm="gatehouse", error="invalid_request"/, label)
  }
  const stateless = parseAnswer(await exchange(port,
    `GET /me/permissions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${session.access_token}\r\nAUTHORIZATION: Bearer ${session.access_token}\r\nConnection: close\r\n\r\n`))
  t.match(stateless.statusLine, /^HTTP\/1\.1 400 /, 'a cached token too, whatever the spelling of the name')
})

t.test('key rotation: a previous secret verifies while configured and fails once removed', async (t) => {
  const dir = t.testdir()
  const database = { DATABASE_URL: `file:${dir}/rotation.db` }
  // As read from a secret file, with its newline; moved verbatim into JWT_PREVIOUS_SECRETS below.
  const oldApp = await build(t, { ...database, JWT_SECRET: `${OTHER_SECRET}\n` })
  const session = await signup(oldApp)
  t.equal(JSON.parse(Buffer.from(session.access_token.split('.')[0]!, 'base64url').toString()).kid, kidFor(OTHER_SECRET))
  await oldApp.close()

  const rotated = await build(t, { ...database, JWT_SECRET: TEST_SECRET, JWT_PREVIOUS_SECRETS: `${OTHER_SECRET}\n` })
  t.equal((await rotated.inject({ url: '/auth/me', headers: bearer(session.access_token) })).statusCode, 200, 'old token still verifies')
  // Several instances: the first deploy adds the new secret as a previous one, so an instance not yet
  // rotated verifies the tokens of one that is (README, "Rotating the signing secret").
  const rotatedSession = await signup(rotated)
  const notYetRotated = await build(t, { ...database, JWT_SECRET: OTHER_SECRET, JWT_PREVIOUS_SECRETS: TEST_SECRET })
  t.equal((await notYetRotated.inject({ url: '/auth/me', headers: bearer(rotatedSession.access_token) })).statusCode, 200,
    'an instance with the new secret among its previous ones verifies the new tokens')
  const unprepared = await build(t, { ...database, JWT_SECRET: OTHER_SECRET })
  t.equal((await unprepared.inject({ url: '/auth/me', headers: bearer(rotatedSession.access_token) })).statusCode, 401, 'one without it refuses them')
  await Promise.all([notYetRotated.close(), unprepared.close()])
  const fresh = await rotated.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })
  t.equal(fresh.statusCode, 200, 'refresh tokens do not depend on the signing secret')
  const newHeader = JSON.parse(Buffer.from(fresh.json().access_token.split('.')[0], 'base64url').toString())
  t.equal(newHeader.kid, kidFor(TEST_SECRET), 'new tokens are signed with the new secret')
  // A token names its secret: one signed with the previous secret under the current one's kid is
  // refused, not tried against every configured secret.
  const rightlyNamed = forgeToken(validClaims(fresh.json()), { secret: OTHER_SECRET })
  t.equal((await rotated.inject({ url: '/me/permissions', headers: bearer(rightlyNamed) })).statusCode, 200, 'the same claims under the previous secret\'s own kid')
  const misnamed = forgeToken(validClaims(fresh.json()), { secret: OTHER_SECRET, header: { kid: kidFor(TEST_SECRET) } })
  const misnamedAnswer = await rotated.inject({ url: '/me/permissions', headers: bearer(misnamed) })
  t.equal(misnamedAnswer.statusCode, 401, 'a previous secret\'s signature under the current kid')
  t.equal(misnamedAnswer.json().code, 'invalid_token')
  await rotated.close()

  const retired = await build(t, { ...database, JWT_SECRET: TEST_SECRET })
  const refused = await retired.inject({ url: '/auth/me', headers: bearer(session.access_token) })
  t.equal(refused.statusCode, 401, 'removed secret: its tokens fail')
  t.equal(refused.json().code, 'invalid_token')
  t.equal((await retired.inject({ url: '/auth/me', headers: bearer(fresh.json().access_token) })).statusCode, 200)
})

t.test('a short previous secret stops the start', async (t) => {
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET, JWT_PREVIOUS_SECRETS: 'short' }), /JWT_PREVIOUS_SECRETS/)
})

t.test('a verified token stays valid only until it expires, cache or not', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const now = Math.floor(Date.now() / 1000)
  // Expired 8 s ago: accepted within the 10 s tolerance for one to two more seconds.
  const token = forgeToken(validClaims(session, { iat: now - 100, exp: now - 8 }))
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(token) })).statusCode, 200)
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(token) })).statusCode, 200, 'served again (from the cache)')
  await new Promise((resolve) => setTimeout(resolve, 2100))
  const expired = await app.inject({ url: '/auth/me', headers: bearer(token) })
  t.equal(expired.statusCode, 401)
  t.equal(expired.json().code, 'token_expired')
})

t.test('ACCESS_TOKEN_TTL sets the access token lifetime and expires_in', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '2m' })
  const session = await signup(app)
  t.equal(session.expires_in, 120)
  const payload = tokenPayload(session.access_token) as { iat: number, exp: number }
  t.equal(payload.exp - payload.iat, 120)
  const refreshed = (await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: session.refresh_token } })).json()
  t.equal(refreshed.expires_in, 120)
  const again = tokenPayload(refreshed.access_token) as { iat: number, exp: number }
  t.equal(again.exp - again.iat, 120)
})

t.test('JWT_ISSUER and JWT_AUDIENCE set iss and aud, and verification holds tokens to them', async (t) => {
  const app = await build(t, { JWT_ISSUER: 'https://auth.example.com', JWT_AUDIENCE: 'api.example.com' })
  const session = await signup(app)
  const payload = tokenPayload(session.access_token)
  t.equal(payload.iss, 'https://auth.example.com')
  t.equal(payload.aud, 'api.example.com')
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(session.access_token) })).statusCode, 200)
  for (const claims of [
    validClaims(session, { iss: 'gatehouse', aud: 'api.example.com' }),
    validClaims(session, { iss: 'https://auth.example.com', aud: 'gatehouse' })
  ]) {
    const refused = await app.inject({ url: '/auth/me', headers: bearer(forgeToken(claims)) })
    t.equal(refused.statusCode, 401)
    t.equal(refused.json().code, 'invalid_token')
  }
})
