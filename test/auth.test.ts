import type { InjectOptions } from 'fastify'
import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import { gzipSync } from 'node:zlib'
import pg from 'pg'
import t from 'tap'
import { hashPassword } from '../src/auth/passwords.ts'
import { TEST_PASSWORD, bearer, build, dbCount, dbGet, dbRun, exchange, parseAnswer, signup, signupWithRoles, tokenPayload, uniqueEmail } from './helper.ts'

t.test('signup, login and /auth/me work end to end', async (t) => {
  const app = await build(t)
  const email = uniqueEmail('ada')

  const created = await app.inject({
    method: 'POST',
    url: '/auth/signup',
    payload: { email, password: TEST_PASSWORD, name: 'Ada' }
  })
  t.equal(created.statusCode, 201)
  t.equal(created.headers['cache-control'], 'no-store')
  const session = created.json()
  t.equal(session.token_type, 'Bearer')
  t.equal(session.expires_in, 900)
  t.match(session.access_token, /^[\w-]+\.[\w-]+\.[\w-]+$/)
  t.same(session.user.roles, ['user'])
  t.equal(session.user.email, email)
  t.equal(session.user.name, 'Ada')

  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  t.equal(login.headers['cache-control'], 'no-store')
  const me = await app.inject({ method: 'GET', url: '/auth/me', headers: bearer(login.json().access_token) })
  t.equal(me.statusCode, 200)
  t.same(Object.keys(me.json()).sort(), ['created_at', 'email', 'id', 'name', 'roles', 'updated_at'])
  t.equal(me.json().id, session.user.id)
})

t.test('emails are normalised: case and surrounding spaces name the same account', async (t) => {
  const app = await build(t)
  await signup(app, 'grace@example.com')
  for (const email of ['Grace@Example.COM', '  grace@example.com  ', 'GRACE@EXAMPLE.COM ']) {
    const duplicate = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } })
    t.equal(duplicate.statusCode, 409, email)
    t.equal(duplicate.json().code, 'email_taken')
  }
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: ' GRACE@example.com', password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  t.equal(login.json().user.email, 'grace@example.com')
  t.equal(await dbCount(app, 'select count(*) as n from users'), 1)
})

t.test('signup validation answers 400 naming the field', async (t) => {
  const app = await build(t)
  const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['bad email', { email: 'not-an-email', password: TEST_PASSWORD }, 'validation_error', /email/],
    ['missing email', { password: TEST_PASSWORD }, 'validation_error', /email/],
    ['short password', { email: uniqueEmail(), password: 'short' }, 'validation_error', /password/],
    ['129-character password', { email: uniqueEmail(), password: 'x'.repeat(129) }, 'validation_error', /password/],
    ['non-string password', { email: uniqueEmail(), password: ['a', 'b'] }, 'validation_error', /password/],
    // No coercion of bodies: a number is not the string of its digits, nor true the string "true".
    ['a number for the password', { email: uniqueEmail(), password: 1234567890123 }, 'validation_error', /password/],
    ['a boolean for the name', { email: uniqueEmail(), password: TEST_PASSWORD, name: true }, 'validation_error', /name/],
    ['unknown property', { email: uniqueEmail(), password: TEST_PASSWORD, admin: true }, 'validation_error', /admin/],
    // A misspelt property is named, not the property it stands for, missing.
    ['a misspelt property', { emailAddress: uniqueEmail(), password: TEST_PASSWORD }, 'validation_error', /^body\/emailAddress is not allowed$/],
    ['password equal to email', { email: 'same@example.com', password: 'Same@Example.com' }, 'weak_password', /email/]
  ]
  for (const [label, payload, code, message] of cases) {
    const response = await app.inject({ method: 'POST', url: '/auth/signup', payload })
    t.equal(response.statusCode, 400, label)
    t.equal(response.json().code, code, label)
    t.match(response.json().message, message, label)
    t.equal(response.json().error, 'Bad Request', label)
  }
  t.equal(await dbCount(app, 'select count(*) as n from users'), 0, 'no invalid signup created a user')
})

t.test('a 128-character password is accepted', async (t) => {
  const app = await build(t)
  const password = 'p'.repeat(128)
  const email = uniqueEmail()
  await signup(app, email, password)
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
  t.equal(login.statusCode, 200)
})

t.test('a password of 128 characters outside the BMP (256 UTF-16 units) is accepted, as its schema accepts it', async (t) => {
  const app = await build(t)
  const password = '🦄'.repeat(128)
  const email = uniqueEmail()
  const created = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password } })
  t.equal(created.statusCode, 201, created.body)
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
  t.equal(login.statusCode, 200)
})

t.test('a new account\'s email has at most 64 characters before the @; an older account with more still signs in', async (t) => {
  const app = await build(t)
  const local = (length: number) => `${'a'.repeat(length)}@example.com`
  const refused = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: local(65), password: TEST_PASSWORD } })
  t.equal(refused.statusCode, 400)
  t.same(refused.json(), { statusCode: 400, error: 'Bad Request', message: 'body/email must have at most 64 characters before the @', code: 'validation_error' })
  t.equal(await dbCount(app, 'select count(*) as n from users'), 0, 'no account was made')
  t.equal((await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: local(64), password: TEST_PASSWORD } })).statusCode, 201, '64 characters')

  // Made before the rule (an earlier version took it): its owner must not be locked out.
  const older = ` ${local(65).toUpperCase()} `
  await app.usersRepository.create({ email: local(65), passwordHash: await hashPassword(TEST_PASSWORD), roles: ['user'] })
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email: older, password: TEST_PASSWORD } })).statusCode, 200, '/auth/login')
  const token = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: older, password: TEST_PASSWORD } })
  t.equal(token.statusCode, 200, '/auth/token')
})

t.test('emails are at most 254 characters: a 255-character login is refused before hashing or counting', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '1' })
  // Well-formed: a 64-character local part and labels of at most 63.
  const emailOf = (length: number) => {
    const email = `${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(length - 197)}.com`
    if (email.length !== length) throw new Error(`${email.length} characters`)
    return email
  }
  const longest = emailOf(254)
  await signup(app, longest)
  const accepted = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: longest, password: TEST_PASSWORD } })
  t.equal(accepted.statusCode, 200, '254 characters')

  const tooLong = emailOf(255)
  for (let attempt = 1; attempt <= 2; attempt++) {
    const refused = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: tooLong, password: TEST_PASSWORD } })
    t.equal(refused.statusCode, 400, `255 characters, attempt ${attempt}: never 401, nor 429 past the limit of 1`)
    t.equal(refused.json().code, 'validation_error')
    t.match(refused.json().message, /email/)
  }
})

t.test('no cache keeps an /auth answer, errors included (RFC 6749 §5.1)', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const requests: Array<[number, InjectOptions]> = [
    [401, { method: 'POST', url: '/auth/login', payload: { email, password: 'not the password' } }],
    [400, { method: 'POST', url: '/auth/login', payload: { email } }],
    [400, { method: 'POST', url: '/auth/signup', payload: { email: 'not-an-email', password: TEST_PASSWORD } }],
    [409, { method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } }],
    [401, { method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x'.repeat(43) } }],
    [401, { method: 'GET', url: '/auth/me' }],
    [401, { method: 'POST', url: '/auth/logout' }]
  ]
  for (const [status, request] of requests) {
    const response = await app.inject(request)
    const label = `${request.method} ${request.url}: ${status}`
    t.equal(response.statusCode, status, label)
    t.equal(response.headers['cache-control'], 'no-store', label)
    t.equal(response.headers.pragma, 'no-cache', label)
  }
})

t.test('wrong password and unknown email get the same 401', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const wrong = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: 'wrong password!' } })
  const unknown = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: uniqueEmail('nobody'), password: TEST_PASSWORD } })
  t.equal(wrong.statusCode, 401)
  t.equal(unknown.statusCode, 401)
  t.same(wrong.json(), unknown.json())
  t.equal(wrong.json().code, 'invalid_credentials')
  // RFC 9110 §15.5.2: every 401 carries a challenge.
  for (const answer of [wrong, unknown]) t.equal(answer.headers['www-authenticate'], 'Bearer realm="gatehouse"')
})

t.test('an unknown email costs a password hash, as a known one does', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  // CPU time of the whole process (the hashing threads included), not wall time: steady on a busy machine.
  const cpuOf = async (logins: () => Promise<unknown>) => {
    const before = process.cpuUsage()
    for (let attempt = 0; attempt < 4; attempt++) await logins()
    const { user, system } = process.cpuUsage(before)
    return user + system
  }
  const loginKnown = () => app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: 'wrong password!' } })
  const loginUnknown = () => app.inject({ method: 'POST', url: '/auth/login', payload: { email: uniqueEmail('nobody'), password: 'wrong password!' } })
  // One of each first: the first logins also compile the code they run, which once cost a cold
  // first batch as much CPU again as its hashes.
  await loginKnown()
  await loginUnknown()
  const known = await cpuOf(loginKnown)
  const unknown = await cpuOf(loginUnknown)
  t.ok(unknown > known / 2, `unknown emails ${Math.round(unknown / 4000)} ms of CPU per login, known ${Math.round(known / 4000)} ms`)
})

t.test('a disabled user gets 403 only after a correct password', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const session = await signup(app, email)
  await dbRun(app, 'update users set disabled = ? where id = ?', true, session.user.id)

  const wrong = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: 'wrong password!' } })
  t.equal(wrong.statusCode, 401)
  const right = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(right.statusCode, 403)
  t.equal(right.json().code, 'user_disabled')
  t.equal(right.headers['www-authenticate'], undefined, 'no insufficient_scope challenge: no token was presented')
  const me = await app.inject({ method: 'GET', url: '/auth/me', headers: bearer(session.access_token) })
  t.equal(me.statusCode, 401, '/auth/me re-reads the user')
  t.equal(me.json().code, 'invalid_token')
})

t.test('a deleted user is refused at /auth/me', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  await dbRun(app, 'delete from users where id = ?', session.user.id)
  const me = await app.inject({ method: 'GET', url: '/auth/me', headers: bearer(session.access_token) })
  t.equal(me.statusCode, 401)
  t.match(me.headers['www-authenticate'], /error="invalid_token"/)
})

t.test('no response body contains a password or its hash', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const responses = [
    await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } }),
    await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } }),
    await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } }),
    await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: 'wrong password!' } })
  ]
  const token = responses[0]!.json().access_token
  responses.push(await app.inject({ method: 'GET', url: '/auth/me', headers: bearer(token) }))
  const { password_hash: hash } = await dbGet(app, 'select password_hash from users') as { password_hash: string }
  t.match(hash, /^\$argon2id\$v=19\$/, 'stored as argon2id')
  const params = Object.fromEntries(hash.split('$')[3]!.split(',').map((pair) => pair.split('=')))
  t.same(params, { m: '19456', t: '2', p: '1' }, 'with OWASP parameters')
  for (const response of responses) {
    t.notMatch(response.body, hash)
    t.notMatch(response.body, '$argon2')
    t.notMatch(response.body, TEST_PASSWORD)
    t.notMatch(response.body, /"password(_hash)?"/)
  }
})

t.test('bad request bodies answer 4xx with a code, never 500', async (t) => {
  const app = await build(t)
  const PROTOTYPE_KEY = 'The body holds a __proto__ or constructor.prototype key, which no request may send.'
  const cases: Array<[string, string | undefined, string | Buffer, number, string, string?, string?]> = [
    ['broken JSON', 'application/json', '{"email":', 400, 'invalid_body', undefined, 'Body is not valid JSON but content-type is set to \'application/json\''],
    ['empty JSON body', 'application/json', '', 400, 'invalid_body'],
    ['__proto__ key', 'application/json', '{"email":"a@example.com","password":"long enough!","__proto__":{"roles":["admin"]}}', 400, 'invalid_body', undefined, PROTOTYPE_KEY],
    ['constructor.prototype key', 'application/json', '{"email":"a@example.com","password":"long enough!","constructor":{"prototype":{}}}', 400, 'invalid_body', undefined, PROTOTYPE_KEY],
    ['JSON array', 'application/json', '[]', 400, 'validation_error'],
    // JSON.parse keeps the last; a proxy or a log reading the first would see another sign-in.
    ['a member named twice', 'application/json', '{"email":"a@example.com","password":"long enough!","password":"other enough!"}', 400, 'invalid_body'],
    ['a member named twice, once escaped', 'application/json', '{"email":"a@example.com","pass\\u0077ord":"long enough!","password":"x"}', 400, 'invalid_body'],
    ['a member whose name is not plain, named twice', 'application/json', '{"email":"a@example.com","password":"long enough!","a b\\u202e":1,"a b\\u202e":2}', 400, 'invalid_body'],
    ['names repeated only in different objects', 'application/json', '[{"email":"a@example.com"},{"email":"b@example.com","x":{"email":1}}]', 400, 'validation_error'],
    // Node would decode the Latin-1 é to U+FFFD, and the account's password would be another.
    ['not UTF-8', 'application/json', Buffer.from('{"email":"latin1@example.com","password":"caf\xe9 au lait!"}', 'latin1'), 400, 'invalid_body'],
    ['text body', 'text/plain', 'hello', 415, 'unsupported_media_type'],
    // Read as if plain, a client's compressed body would be a puzzling invalid_body, or worse.
    ['gzip-coded JSON', 'application/json', gzipSync('{"email":"a@example.com","password":"long enough!"}'), 415, 'unsupported_media_type', 'gzip'],
    ['plain JSON said to be gzip-coded', 'application/json', '{"email":"a@example.com","password":"long enough!"}', 415, 'unsupported_media_type', 'gzip'],
    ['identity coding', 'application/json', '{"email":"nobody@example.com","password":"long enough!"}', 401, 'invalid_credentials', 'Identity'],
    // Latin-1 `Ã©` is valid UTF-8 too: read as UTF-8 it would be `é`, another password.
    ['a Latin-1 charset', 'application/json; charset=latin1', Buffer.from('{"email":"latin1@example.com","password":"caf\xc3\xa9 au lait!"}', 'latin1'), 415, 'unsupported_media_type'],
    ['a Latin-1 charset, and bytes that are not UTF-8', 'application/json; charset=latin1', Buffer.from('{"email":"latin1@example.com","password":"caf\xe9 au lait!"}', 'latin1'), 415, 'unsupported_media_type'],
    ['a quoted non-UTF-8 charset', 'application/json;charset="ISO-8859-1"', '{"email":"nobody@example.com","password":"long enough!"}', 415, 'unsupported_media_type'],
    ['charset=UTF-8', 'application/json; charset=UTF-8', '{"email":"nobody@example.com","password":"long enough!"}', 401, 'invalid_credentials'],
    ['charset=utf8', 'application/json; charset="utf8"', '{"email":"nobody@example.com","password":"long enough!"}', 401, 'invalid_credentials'],
    ['US-ASCII, a subset of UTF-8', 'application/json; charset=US-ASCII', '{"email":"nobody@example.com","password":"long enough!"}', 401, 'invalid_credentials'],
    ['UTF-8, then another charset', 'application/json; charset=utf-8; charset=latin1', '{"email":"nobody@example.com","password":"long enough!"}', 415, 'unsupported_media_type']
  ]
  for (const [label, contentType, body, status, code, coding, message] of cases) {
    const response = await app.inject({
      method: 'POST',
      url: '/auth/login',
      headers: { ...contentType ? { 'content-type': contentType } : {}, ...coding ? { 'content-encoding': coding } : {} },
      body
    })
    t.equal(response.statusCode, status, label)
    t.equal(response.json().code, code, label)
    t.notMatch(response.body, /at .*\.ts:\d+/, `${label}: no stack trace`)
    if (message) t.equal(response.json().message, message, `${label}: says what was refused`)
    if (coding && status === 415) t.equal(response.headers['accept-encoding'], 'identity', `${label}: says which coding would do`)
    if (contentType?.includes('charset') && status === 415) t.equal(response.json().message, 'Send the body in UTF-8, with charset=utf-8 or no charset.', label)
    if (label.startsWith('a member named twice')) t.equal(response.json().message, 'The body names "password" more than once; each may appear once.', label)
    if (label.startsWith('a member whose name is not plain')) t.equal(response.json().message, 'The body names a member more than once; each may appear once.', `${label}: not repeated back`)
  }
  const unknownRoute = await app.inject({ method: 'GET', url: '/nope' })
  t.equal(unknownRoute.statusCode, 404)
  t.equal(unknownRoute.json().code, 'not_found')
})

t.test('a path served under other methods answers 405 with Allow; an unknown path 404 without it', async (t) => {
  const app = await build(t)
  // Signed in as an admin, whom every route would let through: what answers is the path alone.
  const admin = await signupWithRoles(app, ['admin'])
  const allowOf = (response: { headers: Record<string, unknown> }) => String(response.headers.allow).split(', ').sort()
  const cases = [
    ['POST', '/auth/me', ['GET', 'HEAD', 'PATCH']],
    ['GET', '/auth/login?next=1', ['POST']],
    ['GET', `/videos/${randomUUID()}`, ['DELETE', 'PATCH']],
    ['DELETE', '/clothes', ['GET', 'HEAD', 'POST']],
    ['OPTIONS', '/health', ['GET', 'HEAD']],
    // Over find-my-way's default 100 characters for a parameter: still the path of DELETE /auth/sessions/:id.
    ['GET', `/auth/sessions/${'a.'.repeat(51)}`, ['DELETE']],
    // Swagger UI's page: a wildcard matched empty is still its path.
    ['PUT', '/docs/static/', ['GET', 'HEAD']]
  ] as const
  for (const [method, url, allowed] of cases) {
    const response = await app.inject({ method, url })
    const path = url.split('?')[0]
    t.equal(response.statusCode, 405, `${method} ${url}`)
    t.same(allowOf(response), allowed, `${method} ${url}: Allow`)
    t.same(response.json(), {
      statusCode: 405,
      error: 'Method Not Allowed',
      message: `Route ${method} ${path} not found; ${path} answers ${response.headers.allow}`,
      code: 'method_not_allowed'
    }, `${method} ${url}: body`)
    t.equal(response.headers['x-content-type-options'], 'nosniff', `${method} ${url}: the API's headers`)
    t.equal(response.headers['cache-control'], 'no-store', `${method} ${url}: no route's hooks ran, so no-store here`)
  }
  for (const [method, url] of [['PUT', '/nope'], ['PUT', '/auth/me/more'], ['PUT', '/videos/a/b'], ['PUT', '/auth/me/'],
    // A route of this method that finds nothing: Swagger UI's static files.
    ['GET', '/docs/static/nope.js'], ['HEAD', '/docs/static/nope.js'],
    // A collection's path with a trailing slash: the router would give it to `/:id` with an empty id.
    ['GET', '/auth/sessions/'], ['DELETE', '/auth/sessions/'], ['POST', '/videos/'], ['PATCH', '/videos/'], ['DELETE', '/videos/'],
    ['POST', '/admin/users/'], ['GET', '/admin/users/']] as const) {
    const response = await app.inject({ method, url, headers: bearer(admin.access_token) })
    t.equal(response.statusCode, 404, `${method} ${url}`)
    t.equal(response.headers.allow, undefined, `${method} ${url}: no Allow`)
    if (method !== 'HEAD') t.equal(response.json().code, 'not_found', `${method} ${url}`)
    t.equal(response.headers['cache-control'], 'no-store', `${method} ${url}: no-store`)
  }
  // With a body of a type no route reads (`curl -d` sends a form): where it went is the answer, not its type.
  const textBody = await app.inject({ method: 'PATCH', url: '/videos/', headers: { 'content-type': 'text/plain' }, payload: 'a=b' })
  t.equal(textBody.statusCode, 404, 'PATCH /videos/ (the path of PATCH /videos/:id with no id), with a text body: not found, not its type refused')
  for (const [url, status] of [['/nope', 404], ['/health', 405], ['/auth/me', 405]] as const) {
    for (const headers of [{ 'content-type': 'application/x-www-form-urlencoded' }, { 'content-type': 'text/plain' }, { 'transfer-encoding': 'chunked' }]) {
      const response = await app.inject({ method: 'POST', url, headers, payload: Readable.from(['a=b']) })
      t.equal(response.statusCode, status, `POST ${url}, ${JSON.stringify(headers)}: ${response.body}`)
    }
  }
})

t.test('a 404 or 405 names a long path by its first 200 characters, not echoing it whole', async (t) => {
  const app = await build(t)
  // Dots between the letters: a run of 40 letters would be masked as token-like (logging.test.ts).
  const long = 'a.'.repeat(5_000)
  for (const [method, url, status] of [['GET', `/${long}`, 404], ['PUT', `/videos/${long}`, 405]] as const) {
    const response = await app.inject({ method, url })
    t.equal(response.statusCode, status, `${method} ${status}`)
    const shown = url.slice(0, 200)
    t.ok(response.json().message.startsWith(`Route ${method} ${shown}… not found`), `${method} ${status}: ${response.json().message.slice(0, 60)}…`)
    t.ok(response.body.length < 600, `${method} ${status}: an answer of ${response.body.length} bytes`)
  }
  const id = 'b.'.repeat(96)
  const short = await app.inject({ method: 'PUT', url: `/videos/${id}` })
  t.equal(short.json().message, `Route PUT /videos/${id} not found; /videos/${id} answers DELETE, PATCH`, 'a path of 200 characters is shown whole')
})

t.test('a Swagger UI file path that leads out of its folder is a 404, not a refusal of rights', async (t) => {
  const app = await build(t)
  // Over a real socket: app.inject() resolves the dot segments before the router sees them.
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  for (const path of ['/docs/static/%2e%2e/%2e%2e/package.json', '/docs/static/%2E%2E/index.html']) {
    const answer = parseAnswer(await exchange(port, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`))
    t.match(answer.statusLine, /^HTTP\/1\.1 404 /, path)
    t.same(answer.body, { statusCode: 404, error: 'Not Found', message: 'No such file.', code: 'not_found' }, path)
    t.equal(answer.headers['www-authenticate'], undefined, `${path}: no insufficient_scope challenge, no token was presented`)
  }
})

t.test('a signup body that is not UTF-8 stores nothing; UTF-8 names and passwords arrive intact', async (t) => {
  const app = await build(t)
  const latin1 = (text: string) => Buffer.from(JSON.stringify({ email: 'zoe@example.com', password: 'crème brûlée 42', ...JSON.parse(text) }), 'latin1')
  for (const [label, payload] of [['Latin-1 password', latin1('{}')], ['Latin-1 name', latin1('{"password":"long enough!!","name":"Zoë"}')]] as const) {
    const response = await app.inject({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload })
    t.equal(response.statusCode, 400, label)
    t.same(response.json(), { statusCode: 400, error: 'Bad Request', message: 'The body is not valid UTF-8.', code: 'invalid_body' }, label)
  }
  t.equal(await dbCount(app, 'select count(*) as n from users where email = ?', 'zoe@example.com'), 0, 'no account was made')

  const utf8 = Buffer.from(JSON.stringify({ email: 'zoe@example.com', password: 'crème brûlée 42', name: 'Zoë' }))
  const created = await app.inject({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: utf8 })
  t.equal(created.statusCode, 201)
  t.equal(created.json().user.name, 'Zoë')
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: 'zoe@example.com', password: 'crème brûlée 42' } })
  t.equal(login.statusCode, 200)
})

t.test('lone surrogates (JSON \\ud800 escapes) are refused, so passwords that differ cannot match', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  // Escaped in the JSON text: well-formed JSON, but no Unicode text. Stored or hashed as UTF-8,
  // each would become U+FFFD, and "\ud801" or a real U+FFFD would then be the same password.
  const json = (body: string) => ({ method: 'POST' as const, url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: body })
  const cases: Array<[string, string, string]> = [
    ['password', `{"email":"${email}","password":"correct horse \\ud800 staple"}`, 'body/password must not contain lone surrogates'],
    ['name', `{"email":"${email}","password":"${TEST_PASSWORD}","name":"Zo\\udc00"}`, 'body/name must not contain lone surrogates']
  ]
  for (const [label, body, message] of cases) {
    const response = await app.inject(json(body))
    t.equal(response.statusCode, 400, label)
    t.same(response.json(), { statusCode: 400, error: 'Bad Request', message, code: 'validation_error' }, label)
  }
  t.equal(await dbCount(app, 'select count(*) as n from users where email = ?', email), 0, 'no account was made')

  const paired = await app.inject(json(`{"email":"${email}","password":"pair \\ud83d\\ude00 emoji"}`))
  t.equal(paired.statusCode, 201, 'a surrogate pair is a character like any other')
  const token = await app.inject({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/json' }, payload: `{"grant_type":"password","username":"${email}","password":"pair \\ud83d emoji"}` })
  t.equal(token.statusCode, 400)
  t.same(token.json(), { error: 'invalid_request', error_description: 'body/password must not contain lone surrogates' })
})

t.test('a body nested thousands deep, within the size limit, gets 400, not a 500 from a stack overflow', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const deep = (depth: number, inner = '') => '['.repeat(depth) + inner + ']'.repeat(depth)
  const json = { 'content-type': 'application/json' }
  // 8,100 bytes: under the 8 KiB limit. The token endpoint drops parameters it does not read; a
  // route that takes no body refuses it after the text check walked it.
  const token = await app.inject({ method: 'POST', url: '/auth/token', headers: json, payload: `{"grant_type":"refresh_token","refresh_token":"x","x":${deep(4000)}}` })
  t.equal(token.statusCode, 400, token.body)
  t.same(token.json(), { error: 'invalid_grant', error_description: 'The refresh token is invalid, expired or revoked.' }, 'answered as any unknown token')
  const revoke = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(session.access_token).sid}`, headers: { ...json, ...bearer(session.access_token) }, payload: deep(4050) })
  t.equal(revoke.statusCode, 400, revoke.body)
  t.equal(revoke.json().code, 'validation_error')
  t.equal((await app.inject({ url: '/auth/sessions', headers: bearer(session.access_token) })).json().length, 1, 'the session was not revoked')
  const nul = await app.inject({ method: 'DELETE', url: `/auth/sessions/${tokenPayload(session.access_token).sid}`, headers: { ...json, ...bearer(session.access_token) }, payload: deep(3000, '"a\\u0000"') })
  t.equal(nul.statusCode, 400)
  t.same(nul.json().message, `body${'/0'.repeat(3000)} must not contain NUL characters`, 'found at any depth, and named')
})

t.test('GET /health checks the database', async (t) => {
  const app = await build(t)
  const ok = await app.inject({ method: 'GET', url: '/health' })
  t.equal(ok.statusCode, 200)
  t.same(ok.json(), { status: 'ok' })

  await app.database.close()
  const down = await app.inject({ method: 'GET', url: '/health' })
  t.equal(down.statusCode, 503)
  t.equal(down.json().code, 'database_unavailable')
})

t.test('GET /health answers 503 on a database without its users table (emptied or recreated), not while a lock holds the table', async (t) => {
  const app = await build(t)
  await signup(app)
  t.equal((await app.inject({ url: '/health' })).statusCode, 200)
  const onPostgres = app.database.dialect.name === 'postgres'
  if (onPostgres) {
    // A migration or an ALTER TABLE of another instance: the table is there, and /health says so at once.
    const holder = new pg.Client({ connectionString: String(app.config.databaseUrl) })
    await holder.connect()
    t.teardown(() => holder.end())
    await holder.query('begin')
    await holder.query('lock table users in access exclusive mode')
    // Waiting for it, the ping would give up after 2 s with a 503.
    t.equal((await app.inject({ url: '/health' })).statusCode, 200, 'the table is locked, not gone')
    await holder.query('rollback')
  }
  await dbRun(app, onPostgres ? 'drop table users cascade' : 'drop table users')
  const gone = await app.inject({ url: '/health' })
  t.equal(gone.statusCode, 503)
  t.same(gone.json(), { statusCode: 503, error: 'Service Unavailable', message: 'The database is unavailable; try again shortly.', code: 'database_unavailable' })
  t.equal(gone.headers['retry-after'], '5')
})

t.test('a name needs something to show and no control characters, wherever it is set', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const admin = await signupWithRoles(app, ['user', 'admin'])
  const before = await dbGet(app, 'select name, updated_at from users where id = ?', session.user.id)
  const setters: Array<[string, (name: string) => InjectOptions]> = [
    ['signup', (name) => ({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD, name } })],
    ['profile', (name) => ({ method: 'PATCH', url: '/auth/me', headers: bearer(session.access_token), payload: { name } })],
    ['admin', (name) => ({ method: 'PATCH', url: `/admin/users/${session.user.id}`, headers: bearer(admin.access_token), payload: { name } })]
  ]
  const refused = [
    ['spaces only', '   '], ['an ideographic space only', '\u3000'], ['a zero-width space only', '\u200b'],
    ['a newline', 'Ada\nLovelace'], ['a tab', 'Ada\tLovelace'], ['a terminal escape', 'Ada\u001b[31m'],
    ['DEL', 'Ada\u007f'], ['a C1 control (NEL)', 'Ada\u0085'], ['NUL', 'a\u0000b'],
    ['a line separator', 'Ada\u2028Admin: yes'], ['a paragraph separator', 'Ada\u2029'], ['a right-to-left override', 'Ada\u202egnp.exe'],
    ['a right-to-left isolate', 'Ada\u2067x'], ['a Hangul filler only', '\u3164'], ['a halfwidth filler only', '\uffa0'],
    ['the braille blank only', '\u2800'], ['a combining accent only', '\u0301'], ['private use only', '\ue000'],
    ['hidden text in tag characters', `Ada${[...'ignore all rules'].map((c) => String.fromCodePoint(0xE0000 + c.codePointAt(0)!)).join('')}`],
    ['a language tag', 'Ada\u{E0001}\u{E0065}\u{E006E}'], ['a cancel tag alone', 'Ada\u{E007F}'],
    ['a flag sequence left open', 'Ada \u{1F3F4}\u{E0067}\u{E0062}'], ['a deprecated shaping switch', 'Ada\u206Bx'],
    ['hidden text dressed as a flag', `Ada \u{1F3F4}${[...'ignore all rules'].map((c) => String.fromCodePoint(0xE0000 + c.codePointAt(0)!)).join('')}\u{E007F}`]
  ]
  const users = await dbCount(app, 'select count(*) as n from users')
  for (const [setter, request] of setters) {
    for (const [label, name] of refused) {
      const response = await app.inject(request(name!))
      t.equal(response.statusCode, 400, `${setter}: ${label}`)
      t.same(response.json(), { statusCode: 400, error: 'Bad Request', message: 'body/name must match format "display-text"', code: 'validation_error' }, `${setter}: ${label}`)
    }
  }
  t.equal(await dbCount(app, 'select count(*) as n from users'), users, 'no account was made')
  t.same(await dbGet(app, 'select name, updated_at from users where id = ?', session.user.id), before, 'the name is unchanged')

  for (const [setter, request] of setters) {
    for (const name of ['Zoë', ' Ada ', '李 小龙', '🦄', '👩\u200d💻 Grace', 'Ada \u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}', '\u{1F3F4}\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F} Cymru', 'مرحبا', 'नमस्ते', 'e\u0301']) {
      const response = await app.inject(request(name))
      t.equal(response.statusCode, setter === 'signup' ? 201 : 200, `${setter}: ${JSON.stringify(name)}`)
      t.equal((setter === 'signup' ? response.json().user : response.json()).name, name, `${setter}: stored as sent`)
    }
  }
})

t.test('signup takes a null name as no name, as PATCH /auth/me and the admin change do', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD, name: null } })
  t.equal(response.statusCode, 201)
  t.equal(response.json().user.name, null)
  t.equal((await dbGet(app, 'select name from users where id = ?', response.json().user.id))?.name, null)
})

t.test('a signup whose first session cannot be stored leaves no account behind, so its retry is not email_taken', async (t) => {
  const app = await build(t)
  // A fault between the account's insert and its session's: the session insert fails, as a
  // database that fills up or goes away then would (PostgreSQL: disk full, which answers 503).
  const [failSessions, allowSessions] = app.database.dialect.name === 'postgres'
    ? [[
        "create function no_sessions() returns trigger language plpgsql as $$ begin raise exception 'no sessions now' using errcode = '53100'; end $$",
        'create trigger no_sessions before insert on sessions for each row execute function no_sessions()'
      ], ['drop trigger no_sessions on sessions']]
    : [["create trigger no_sessions before insert on sessions begin select raise(abort, 'no sessions now'); end"], ['drop trigger no_sessions']]
  for (const statement of failSessions) await dbRun(app, statement)
  const email = uniqueEmail()
  const signUp = () => app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } })
  const failed = await signUp()
  t.equal(failed.statusCode, app.database.dialect.name === 'postgres' ? 503 : 500, 'the fault is answered')
  t.equal(await dbCount(app, 'select count(*) as n from users where email = ?', email), 0, 'and no account was kept')
  for (const statement of allowSessions) await dbRun(app, statement)
  const retried = await signUp()
  t.equal(retried.statusCode, 201, 'the retry signs up')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ?', retried.json().user.id), 1, 'with its session')
})

t.test('NUL characters in text are refused alike on every database', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  const cases: Array<[string, InjectOptions]> = [
    ['signup password', { method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: `${TEST_PASSWORD}\u0000` } }],
    ['new password', { method: 'POST', url: '/auth/password', headers: bearer(session.access_token), payload: { current_password: TEST_PASSWORD, new_password: `${TEST_PASSWORD}\u0000` } }],
    ['token username', { method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: 'a\u0000@b.io', password: TEST_PASSWORD } }],
    ['admin email filter', { url: '/admin/users?email=a%00b', headers: bearer((await signupWithRoles(app, ['user', 'admin'])).access_token) }]
  ]
  for (const [label, request] of cases) {
    const response = await app.inject(request)
    t.equal(response.statusCode, 400, label)
    t.match(response.body, /NUL/, label)
  }
})
