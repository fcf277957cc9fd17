import t from 'tap'
import { build, signup } from './helper.ts'

const SPA = 'https://app.example.com'

t.test('CORS: allowed origins get a preflight answer that permits Authorization', async (t) => {
  const app = await build(t, { CORS_ORIGINS: `${SPA}, https://admin.example.com` })
  const preflight = await app.inject({
    method: 'OPTIONS',
    url: '/auth/me',
    headers: { origin: SPA, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' }
  })
  t.equal(preflight.statusCode, 204)
  t.equal(preflight.headers['access-control-allow-origin'], SPA)
  t.match(String(preflight.headers['access-control-allow-headers']), /Authorization/)
  t.same(String(preflight.headers['access-control-allow-headers']).toLowerCase().split(/,\s*/).sort(), ['authorization', 'content-type'],
    'Content-Type too, as a JSON body needs it')
  t.same(String(preflight.headers['access-control-allow-methods']).split(/,\s*/).sort(), ['DELETE', 'GET', 'PATCH', 'POST'])
  t.equal(preflight.headers['access-control-max-age'], '600', 'the preflight is cached for 10 minutes')
  t.equal(preflight.headers['access-control-allow-credentials'], undefined, 'no cookies, so no credentials')

  const session = await signup(app)
  const me = await app.inject({ url: '/auth/me', headers: { origin: SPA, authorization: `Bearer ${session.access_token}` } })
  t.equal(me.statusCode, 200)
  t.equal(me.headers['access-control-allow-origin'], SPA)
  t.match(String(me.headers['access-control-expose-headers']), /WWW-Authenticate/)
  t.match(String(me.headers.vary), /Origin/)
})

t.test('CORS: a script can read what a 429 says about retrying', async (t) => {
  const app = await build(t, { CORS_ORIGINS: SPA, RATE_LIMIT_IP_MAX: '1' })
  const refresh = () => app.inject({ method: 'POST', url: '/auth/refresh', headers: { origin: SPA }, payload: { refresh_token: 'x' } })
  t.equal((await refresh()).statusCode, 401)
  const limited = await refresh()
  t.equal(limited.statusCode, 429)
  t.equal(limited.headers['access-control-allow-origin'], SPA)
  const exposed = String(limited.headers['access-control-expose-headers']).toLowerCase().split(/,\s*/)
  for (const name of ['retry-after', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']) {
    t.ok(limited.headers[name] !== undefined, `the 429 carries ${name}`)
    t.ok(exposed.includes(name), `and exposes ${name} to the script`)
  }
})

t.test('CORS: other origins, and every origin by default, get no CORS headers', async (t) => {
  const configured = await build(t, { CORS_ORIGINS: SPA })
  const preflight = { method: 'OPTIONS', url: '/auth/me', headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' } } as const
  const stranger = await configured.inject(preflight)
  // A successful answer without Access-Control-Allow-Origin: the browser then says the origin is
  // not allowed, rather than that the preflight failed with 404 or 405.
  t.equal(stranger.statusCode, 204)
  t.equal(stranger.headers['access-control-allow-origin'], undefined)
  t.equal(stranger.headers['access-control-allow-methods'], undefined)
  t.equal(stranger.body, '')

  const closed = await build(t)
  const response = await closed.inject({ url: '/health', headers: { origin: SPA } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['access-control-allow-origin'], undefined)
  const closedPreflight = await closed.inject(preflight)
  t.equal(closedPreflight.statusCode, 204, 'CORS off: a preflight is answered the same way')
  t.equal(closedPreflight.headers['access-control-allow-origin'], undefined)
  t.equal(closedPreflight.headers.vary, undefined, 'nor Vary: Origin while CORS is off')
  const unrouted = await closed.inject({ ...preflight, url: '/nope' })
  t.equal(unrouted.statusCode, 404, 'a preflight for a path with no route is still 404')
})

t.test('API responses carry the OWASP REST security headers, errors included', async (t) => {
  const app = await build(t)
  const undecodable = await app.inject({ url: '/videos/%zz' })
  t.equal(undecodable.statusCode, 400)
  t.same(undecodable.json(), { statusCode: 400, error: 'Bad Request', message: 'The URL cannot be decoded.', code: 'invalid_request' })
  // Refused before routing, so before the guarded routes' hooks: the URL may have been one of /auth's.
  t.equal(undecodable.headers['cache-control'], 'no-store')
  t.equal(undecodable.headers.pragma, 'no-cache')
  // /docsearch is no docs page: only /docs and what lies under it get the document headers.
  for (const url of ['/health', '/auth/me', '/nope', '/openapi.json', '/videos/%zz', '/docsearch', '/docs.json']) {
    const response = await app.inject({ url })
    t.equal(response.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'", url)
    t.equal(response.headers['x-frame-options'], 'DENY', url)
    t.equal(response.headers['x-content-type-options'], 'nosniff', url)
    t.equal(response.headers['strict-transport-security'], 'max-age=31536000; includeSubDomains', url)
    for (const pageOnly of ['cross-origin-opener-policy', 'referrer-policy', 'x-xss-protection', 'x-powered-by']) {
      t.equal(response.headers[pageOnly], undefined, `${url}: no ${pageOnly}`)
    }
    t.equal(response.headers.vary, undefined, `${url}: no CORS origins configured, so nothing varies by Origin`)
  }
})

t.test('the docs pages get helmet\'s full document headers', async (t) => {
  const app = await build(t)
  const page = await app.inject({ url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(String(page.headers['content-type']), /text\/html/)
  t.match(String(page.headers['content-security-policy']), /default-src 'self'/)
  t.equal(page.headers['x-frame-options'], 'SAMEORIGIN')
  t.equal(page.headers['cross-origin-opener-policy'], 'same-origin')
  t.equal(page.headers['referrer-policy'], 'no-referrer')
  t.equal(page.headers['x-content-type-options'], 'nosniff')
})

t.test('CORS: the preflight route, which matches every path, turns no 404 into a 405', async (t) => {
  const app = await build(t, { CORS_ORIGINS: SPA })
  const unknown = await app.inject({ method: 'GET', url: '/nope', headers: { origin: SPA } })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.headers.allow, undefined)
  const wrongMethod = await app.inject({ method: 'POST', url: '/auth/me', headers: { origin: SPA } })
  t.equal(wrongMethod.statusCode, 405)
  t.equal(wrongMethod.headers.allow, 'GET, HEAD, PATCH')
  t.equal(wrongMethod.headers['access-control-allow-origin'], SPA)

  // An OPTIONS request from an allowed origin without Access-Control-Request-Method (none, or empty)
  // gets the preflight answer, not a failed preflight outside the contract's shape.
  for (const headers of [{ origin: SPA }, { origin: SPA, 'access-control-request-method': '' }]) {
    const options = await app.inject({ method: 'OPTIONS', url: '/auth/me', headers })
    t.equal(options.statusCode, 204, JSON.stringify(headers))
    t.equal(options.body, '')
    t.equal(options.headers['access-control-allow-origin'], SPA)
    t.same(String(options.headers['access-control-allow-methods']).split(/,\s*/).sort(), ['DELETE', 'GET', 'PATCH', 'POST'])
  }
  // From any other origin, or without one, OPTIONS is a method the path does not serve.
  for (const headers of [{}, { origin: 'https://evil.example' }]) {
    const options = await app.inject({ method: 'OPTIONS', url: '/auth/me', headers })
    t.equal(options.statusCode, 405, JSON.stringify(headers))
    t.equal(options.json().code, 'method_not_allowed')
    t.equal(options.headers['access-control-allow-origin'], undefined)
  }
})
