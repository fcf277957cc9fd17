import { gzipSync } from 'node:zlib'
import t from 'tap'
import type { App } from '../src/app.ts'
import { TEST_PASSWORD, bearer, build, dbRun, signup, tokenPayload, uniqueEmail } from './helper.ts'

const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString()
const FORM = { 'content-type': 'application/x-www-form-urlencoded' }
const postForm = (app: App, fields: Record<string, string>, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: '/auth/token', headers: { ...FORM, ...headers }, payload: form(fields) })

t.test('password grant as Postman\'s "Password Credentials" sends it', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  // Postman: form body with grant_type, username, password, scope, client credentials in Basic.
  const response = await postForm(app, {
    grant_type: 'password',
    username: `  ${email.toUpperCase()}`,
    password: TEST_PASSWORD,
    scope: ''
  }, { authorization: `Basic ${Buffer.from('postman:secret').toString('base64')}` })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['cache-control'], 'no-store')
  t.equal(response.headers.pragma, 'no-cache')
  const body = response.json()
  t.equal(body.token_type, 'Bearer')
  t.equal(body.expires_in, 900)
  t.ok(body.refresh_token)
  t.equal(body.user.email, email)
  t.equal((await app.inject({ url: '/auth/me', headers: bearer(body.access_token) })).statusCode, 200)
})

t.test('client_id, client_secret and scope in the body are accepted and ignored, whatever their value', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const grant = { grant_type: 'password', username: email, password: TEST_PASSWORD }
  const response = await postForm(app, { ...grant, client_id: 'swagger-ui', client_secret: 'x', scope: 'read write' })
  t.equal(response.statusCode, 200)
  t.equal((await postForm(app, { ...grant, scope: 's'.repeat(5000) })).statusCode, 200, 'a long scope, in a form')
  for (const value of [null, 12345, ['openid'], { a: 1 }, true, 'x'.repeat(5000)]) {
    for (const name of ['client_id', 'client_secret', 'scope']) {
      const json = await app.inject({ method: 'POST', url: '/auth/token', payload: { ...grant, [name]: value } })
      t.equal(json.statusCode, 200, `JSON ${name}: ${JSON.stringify(value).slice(0, 20)}`)
    }
  }
})

t.test('a parameter the endpoint does not read is ignored however often it is sent and whatever it holds (RFC 6749 §3.2)', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const grant = `grant_type=password&username=${encodeURIComponent(email)}&password=${encodeURIComponent(TEST_PASSWORD)}`
  const forms = [
    // RFC 8707 §2: a client may name several resources.
    `${grant}&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example`,
    `${grant}&x=1&x=2&x=3`,
    `${grant}&scope=read&scope=write&client_id=a&client_id=b`,
    `${grant}&%22%C3%A9%5C=1&%22%C3%A9%5C=2`,
    `${grant}&client_id=a%00&state=%00`
  ]
  for (const payload of forms) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload })
    t.equal(response.statusCode, 200, `form: ${payload.slice(grant.length)}`)
  }
  const grantJson = `"grant_type":"password","username":${JSON.stringify(email)},"password":${JSON.stringify(TEST_PASSWORD)}`
  const jsons = [
    `{${grantJson},"resource":"a","resource":"b"}`,
    `{${grantJson},"scope":{"a":1,"a":2}}`,
    `{${grantJson},"client_id":"\\ud800","client_secret":"a\\u0000"}`,
    `{"x":{"grant_type":1,"grant_type":2},${grantJson}}`
  ]
  for (const payload of jsons) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload })
    t.equal(response.statusCode, 200, `JSON: ${payload.slice(grantJson.length + 1, grantJson.length + 60)}`)
  }
})

t.test('refresh_token grant rotates like /auth/refresh, in form or JSON', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const session = await signup(app)
  const viaForm = await postForm(app, { grant_type: 'refresh_token', refresh_token: session.refresh_token })
  t.equal(viaForm.statusCode, 200)
  t.equal(tokenPayload(viaForm.json().access_token).sid, tokenPayload(session.access_token).sid)

  const viaJson = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: viaForm.json().refresh_token } })
  t.equal(viaJson.statusCode, 200)

  const replay = await postForm(app, { grant_type: 'refresh_token', refresh_token: session.refresh_token })
  t.equal(replay.statusCode, 400)
  t.same(replay.json(), { error: 'invalid_grant', error_description: 'The refresh token is invalid, expired or revoked.' })
})

t.test('errors have the RFC 6749 §5.2 shape and no-store', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const session = await signup(app, email)
  await dbRun(app, 'update users set disabled = ? where id = ?', true, session.user.id)
  const disabledResponse = await postForm(app, { grant_type: 'password', username: email, password: TEST_PASSWORD })
  t.equal(disabledResponse.statusCode, 400)
  t.equal(disabledResponse.json().error, 'invalid_grant', 'a disabled user is invalid_grant')

  const cases: Array<[string, Record<string, string>, number, string]> = [
    ['wrong password', { grant_type: 'password', username: email, password: 'not the password' }, 400, 'invalid_grant'],
    ['unknown user', { grant_type: 'password', username: uniqueEmail(), password: TEST_PASSWORD }, 400, 'invalid_grant'],
    ['over-long password', { grant_type: 'password', username: email, password: 'x'.repeat(129) }, 400, 'invalid_grant'],
    ['no grant_type', { username: email, password: TEST_PASSWORD }, 400, 'invalid_request'],
    ['no password', { grant_type: 'password', username: email }, 400, 'invalid_request'],
    ['no refresh_token', { grant_type: 'refresh_token' }, 400, 'invalid_request'],
    // RFC 6749 §3.1: a parameter sent without a value is treated as if it were omitted.
    ['empty grant_type', { grant_type: '' }, 400, 'invalid_request'],
    ['empty refresh_token', { grant_type: 'refresh_token', refresh_token: '' }, 400, 'invalid_request'],
    ['unknown grant', { grant_type: 'client_credentials' }, 400, 'unsupported_grant_type'],
    ['authorization_code', { grant_type: 'authorization_code', code: 'x' }, 400, 'unsupported_grant_type'],
    ['bad refresh token', { grant_type: 'refresh_token', refresh_token: 'nope' }, 400, 'invalid_grant']
  ]
  for (const [label, fields, status, error] of cases) {
    const response = await postForm(app, fields)
    t.equal(response.statusCode, status, label)
    t.same(Object.keys(response.json()).sort(), ['error', 'error_description'], label)
    t.equal(response.json().error, error, label)
    t.equal(response.headers['cache-control'], 'no-store', label)
  }

  // Worded as every other endpoint words a schema's refusal.
  t.equal((await postForm(app, { grant_type: 'password', username: email, password: 'x'.repeat(4097) })).json().error_description,
    'body/password must NOT have more than 4096 characters')

  const duplicated = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload: 'grant_type=password&grant_type=refresh_token' })
  t.equal(duplicated.statusCode, 400)
  t.equal(duplicated.json().error, 'invalid_request', 'a repeated parameter is invalid_request (RFC 6749 §3.1)')
  t.equal(duplicated.json().error_description, 'The parameter grant_type is sent more than once; each may be sent once.')
  for (const parameter of ['username', 'password', 'refresh_token']) {
    const twice = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload: `grant_type=password&${parameter}=a&${parameter}=b` })
    t.equal(twice.statusCode, 400, `${parameter} twice`)
    t.equal(twice.json().error_description, `The parameter ${parameter} is sent more than once; each may be sent once.`)
  }

  const text = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'text/plain' }, payload: 'grant_type=password' })
  t.equal(text.statusCode, 415)
  t.equal(text.json().error, 'invalid_request')
})

t.test('only the token endpoint reads form bodies', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const response = await app.inject({ method: 'POST', url: '/auth/login', headers: FORM, payload: form({ email, password: TEST_PASSWORD }) })
  t.equal(response.statusCode, 415)
  t.equal(response.json().code, 'unsupported_media_type')
})

t.test('a content-coded token request is refused in the RFC 6749 shape', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const response = await app.inject({
    method: 'POST', url: '/auth/token', headers: { ...FORM, 'content-encoding': 'gzip' }, payload: gzipSync(form({ grant_type: 'password', username: email, password: TEST_PASSWORD }))
  })
  t.equal(response.statusCode, 415)
  t.equal(response.json().error, 'invalid_request')
  t.equal(response.headers['accept-encoding'], 'identity')
})

t.test('a form is read as UTF-8 whatever charset it is labelled with: ASCII credentials under ISO-8859-1 sign in, a Latin-1 escape is refused', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email, 'café au lait 42')
  // What Apache HttpClient 4's UrlEncodedFormEntity sends by default.
  const latin1Form = { 'content-type': 'application/x-www-form-urlencoded; charset=ISO-8859-1' }
  const ascii = await app.inject({ method: 'POST', url: '/auth/token', headers: latin1Form, payload: form({ grant_type: 'password', username: email, password: TEST_PASSWORD }) })
  t.equal(ascii.statusCode, 400, 'read, and answered as a wrong password is')
  t.equal(ascii.json().error, 'invalid_grant')
  const latin1 = await app.inject({ method: 'POST', url: '/auth/token', headers: latin1Form, payload: `grant_type=password&username=${encodeURIComponent(email)}&password=caf%E9+au+lait+42` })
  t.equal(latin1.statusCode, 400)
  t.same(latin1.json(), { error: 'invalid_request', error_description: 'The form body has an escape that is not UTF-8.' }, 'never read as another password')
  const utf8 = await app.inject({ method: 'POST', url: '/auth/token', headers: latin1Form, payload: form({ grant_type: 'password', username: email, password: 'café au lait 42' }) })
  t.equal(utf8.statusCode, 200, 'UTF-8 escapes sign in, whatever the label')
})

t.test('an error_description keeps to RFC 6749 §5.2\'s characters, whatever the client\'s keys hold', async (t) => {
  const app = await build(t)
  const ALLOWED = /^[\x20\x21\x23-\x5B\x5D-\x7E]*$/
  const query = await app.inject({ method: 'POST', url: '/auth/token?a%22%5C%E2%80%AE=%00', headers: FORM, payload: 'grant_type=password' })
  t.equal(query.statusCode, 400)
  t.same(query.json(), { error: 'invalid_request', error_description: "querystring/a'/? must not contain NUL characters" })
  const invalid = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload: '{"grant_type":7}' })
  t.match(invalid.json(), { error: 'invalid_request' })
  for (const answer of [query, invalid]) t.match(answer.json().error_description, ALLOWED, answer.json().error_description)
})

t.test('a JSON token request naming a parameter twice is refused, as a form doing so is (RFC 6749 §3.1)', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const json = (payload: string) => app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload })
  const twice = await json(`{"grant_type":"client_credentials","grant_type":"password","username":"${email}","password":"${TEST_PASSWORD}"}`)
  t.equal(twice.statusCode, 400)
  t.same(twice.json(), { error: 'invalid_request', error_description: "The body names 'grant_type' more than once; each may appear once." })
  t.equal((await json(`{"grant_type":"password","username":"${email}","password":"${TEST_PASSWORD}"}`)).statusCode, 200, 'each once: signed in')
})

t.test('password length counts characters alike on /auth/login and /auth/token', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const password = '\u{1F600}'.repeat(100)
  await signup(app, email, password)
  const response = await postForm(app, { grant_type: 'password', username: email, password })
  t.equal(response.statusCode, 200, '100 emoji are 100 characters, though 200 UTF-16 units')
})

t.test('a form body must be UTF-8, raw or escaped: never decoded into another password', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const password = 'pässwörd über alles'
  await signup(app, email, password)
  const head = `grant_type=password&username=${encodeURIComponent(email)}&password=`
  const utf8 = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload: head + encodeURIComponent(password) })
  t.equal(utf8.statusCode, 200, 'escaped UTF-8 is the password')
  const raw = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload: Buffer.from(head + password) })
  t.equal(raw.statusCode, 200, 'unescaped UTF-8 (curl --data) is the password too')

  const latin1 = Buffer.from(password, 'latin1')
  const cases: Array<[string, string | Buffer]> = [
    ['a Latin-1 escape (%E4)', head + [...latin1].map((byte) => `%${byte.toString(16).padStart(2, '0')}`).join('')],
    ['a raw Latin-1 byte', Buffer.concat([Buffer.from(head), latin1])],
    ['a broken escape', `${head}100%`]
  ]
  for (const [label, payload] of cases) {
    const response = await app.inject({ method: 'POST', url: '/auth/token', headers: FORM, payload })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().error, 'invalid_request', label)
    t.match(response.json().error_description, /UTF-8/, label)
  }
})

t.test('a password grant whose username is no email is refused before hashing and counts against nothing', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '1' })
  // Each distinct username would otherwise hold a window of the per-account limit in memory.
  // The last two look like emails, but /auth/login's schema refuses them: no account has one.
  for (const username of ['x'.repeat(4000), 'not an email', `${'a'.repeat(250)}@example.com`, 'a..b@example.com', 'josé@example.com']) {
    for (let attempt = 0; attempt < 3; attempt++) {
      const response = await postForm(app, { grant_type: 'password', username, password: TEST_PASSWORD })
      t.equal(response.statusCode, 400, `${username.slice(0, 20)}…, attempt ${attempt + 1}: not 429`)
      t.same(response.json(), { error: 'invalid_grant', error_description: 'The email or password is wrong.' })
    }
  }
})

t.test('a password grant with a password of a length no account has is refused before hashing and is not counted against the account', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '2' })
  const email = uniqueEmail()
  await signup(app, email)
  for (const password of ['x'.repeat(4000), 'x'.repeat(129), 'short', '1234567']) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const response = await postForm(app, { grant_type: 'password', username: email, password })
      t.equal(response.statusCode, 400, `${password.length} characters`)
      t.same(response.json(), { error: 'invalid_grant', error_description: 'The email or password is wrong.' })
    }
  }
  t.equal((await postForm(app, { grant_type: 'password', username: email, password: TEST_PASSWORD })).statusCode, 200)
})

t.test('a refresh_token grant longer than /auth/refresh accepts is an invalid request', async (t) => {
  const app = await build(t)
  const response = await postForm(app, { grant_type: 'refresh_token', refresh_token: 'x'.repeat(513) })
  t.equal(response.statusCode, 400)
  t.equal(response.json().error, 'invalid_request')
  const refresh = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x'.repeat(513) } })
  t.equal(refresh.statusCode, 400, 'the same limit as /auth/refresh')
  t.equal(refresh.json().code, 'validation_error')
})

t.test('a token request that fails on our side answers server_error, with nothing of the cause', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  Object.assign(app.usersRepository, {
    findCredentialsByEmail: async () => { throw new Error('internal detail: users table at /var/lib/gatehouse') }
  })
  const response = await postForm(app, { grant_type: 'password', username: email, password: TEST_PASSWORD })
  t.equal(response.statusCode, 500)
  t.same(response.json(), { error: 'server_error', error_description: 'Something went wrong on our side.' })
  t.notMatch(response.body, 'internal detail', 'the error\'s message stays in the log')
  t.equal(response.headers['cache-control'], 'no-store')
})
