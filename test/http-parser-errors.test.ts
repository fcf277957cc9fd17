// Requests Node's HTTP parser refuses before Fastify sees them still get the contract's shape and
// the API's security headers, over a real socket (app.inject() never goes through the parser).
import t from 'tap'
import { appWithLog, build, exchange, logLines, parseAnswer } from './helper.ts'

t.test('requests the HTTP parser refuses answer in the contract\'s shape, with the security headers, and are logged', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }

  const cases: Array<[string, string, number, string]> = [
    ['a Content-Length that is no number',
      'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}', 400, 'invalid_request'],
    ['a header line that is no header', 'GET /health HTTP/1.1\r\nHost: x\r\nnot a header\r\n\r\n', 400, 'invalid_request'],
    ['headers past the 16 KiB limit (a huge Authorization)',
      `GET /me/permissions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large']
  ]
  for (const [name, request, status, code] of cases) {
    const from = log.text.length
    const answer = parseAnswer(await exchange(port, request))
    const lines = logLines(log.text.slice(from)).filter((line) => line.msg === 'request refused before Fastify')
    t.match(lines, [{ level: 30, res: { statusCode: status }, code, remoteAddress: '127.0.0.1', parserError: /^(HPE|ERR)_/ }], `${name}: one log line`)
    t.notOk(log.text.slice(from).includes('Bearer'), `${name}: without the bytes the parser read`)
    t.match(answer.statusLine, new RegExp(`^HTTP/1\\.1 ${status} `), name)
    t.match(answer.body, { statusCode: status, code }, name)
    t.same(Object.keys(answer.body as object).sort(), ['code', 'error', 'message', 'statusCode'], `${name}: nothing else`)
    t.equal(answer.headers['x-content-type-options'], 'nosniff', `${name}: security headers`)
    t.equal(answer.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'", name)
    t.equal(answer.headers.connection, 'close', name)
    t.equal(answer.headers['cache-control'], 'no-store', `${name}: it may have been a token request`)
    t.equal(answer.headers.pragma, 'no-cache', name)
    t.equal(Number(answer.headers['content-length']), Buffer.byteLength(JSON.stringify(answer.body)), `${name}: exact length`)
  }
  // The server goes on serving.
  t.match(await exchange(port, 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /)
})

t.test('an Expect other than 100-continue gets 417 in the contract\'s shape, is logged, and the connection goes on; 100-continue is served', async (t) => {
  const { app, log } = await appWithLog(t, { LOG_LEVEL: 'info' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  for (const [path, request] of [
    ['/auth/login', 'POST /auth/login HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}'],
    ['/health', 'GET /health?password=hunter2 HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n']
  ] as const) {
    // A second request on the same connection after it: answered too, not cut off with the first.
    const [first, second] = (await exchange(port, `${request}GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)).split(/(?=HTTP\/1\.1 )/)
    t.match(second, /^HTTP\/1\.1 404 /, `${path}: the next request on the connection is answered`)
    const answer = parseAnswer(first!)
    t.match(answer.statusLine, /^HTTP\/1\.1 417 /, path)
    t.same(answer.body, { statusCode: 417, error: 'Expectation Failed', message: 'The only expectation served is 100-continue.', code: 'expectation_failed' }, path)
    t.equal(answer.headers['x-content-type-options'], 'nosniff', `${path}: security headers`)
    t.equal(answer.headers['content-security-policy'], "default-src 'none';frame-ancestors 'none'", path)
    t.equal(answer.headers['cache-control'], 'no-store', `${path}: it may have been a token request`)
    t.not(answer.headers.connection, 'close', `${path}: the connection stays open`)
    t.equal(Number(answer.headers['content-length']), Buffer.byteLength(JSON.stringify(answer.body)), `${path}: exact length`)
  }
  // The path as the router reads it: %74 is a t.
  const encoded = parseAnswer(await exchange(port, 'POST /auth/%74oken HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'))
  t.same(encoded.body, { error: 'invalid_request', error_description: 'The only expectation served is 100-continue.' }, '/auth/%74oken: the token endpoint\'s shape')
  const token = parseAnswer(await exchange(port, 'POST /auth/token?x=1 HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: 19\r\n\r\ngrant_type=password'))
  t.match(token.statusLine, /^HTTP\/1\.1 417 /, '/auth/token')
  t.same(token.body, { error: 'invalid_request', error_description: 'The only expectation served is 100-continue.' }, '/auth/token: in RFC 6749\'s shape')
  t.equal(token.headers['cache-control'], 'no-store', '/auth/token')
  const refused = logLines(log.text).filter((line) => line.msg === 'request refused before Fastify')
  t.match(refused, [
    { level: 30, req: { method: 'POST', url: '/auth/login', host: 'x', remoteAddress: '127.0.0.1' }, res: { statusCode: 417 }, code: 'expectation_failed' },
    { req: { method: 'GET', url: '/health?password=[redacted]' }, res: { statusCode: 417 } },
    { req: { method: 'POST', url: '/auth/%74oken' }, res: { statusCode: 417 } },
    { req: { method: 'POST', url: '/auth/token?x=[redacted]' }, res: { statusCode: 417 }, code: 'expectation_failed' }
  ], 'each 417 is logged, its URL masked as any request\'s')
  t.equal(refused.length, 4)
  const continued = await exchange(port, 'POST /auth/login HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}')
  t.match(continued, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 400 /, '100-continue: the body is asked for, then read and judged')
})

t.test('a transfer coding other than chunked gets 501; a chunked body is read', async (t) => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const body = '{"email":"nobody@example.com","password":"whatever-it-is"}'
  const chunked = `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`
  for (const codings of ['gzip, chunked', 'deflate\r\nTransfer-Encoding: chunked', 'x-custom ,Chunked']) {
    const answer = parseAnswer(await exchange(port, `POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: ${codings}\r\nConnection: close\r\n\r\n${chunked}`))
    t.match(answer.statusLine, /^HTTP\/1\.1 501 /, codings)
    t.same(answer.body, {
      statusCode: 501,
      error: 'Not Implemented',
      message: 'No transfer coding other than chunked is decoded: send the body chunked or with a Content-Length.',
      code: 'not_implemented'
    }, codings)
    t.equal(answer.headers['x-content-type-options'], 'nosniff', `${codings}: security headers`)
    t.equal(answer.headers['cache-control'], 'no-store', codings)
  }
  // Codings that do not end in chunked: the parser cannot find the body's end, and refuses it. One
  // answer, not a 501 then the parser's 400, which a client would read as its next request's.
  const unframed = await exchange(port, `POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n${body}`)
  t.equal(unframed.match(/HTTP\/1\.1 \d{3} /g)?.length, 1, 'gzip alone: one answer')
  t.match(unframed, /^HTTP\/1\.1 400 /, 'the parser\'s 400')

  const token = parseAnswer(await exchange(port, 'POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n13\r\ngrant_type=password\r\n0\r\n\r\n'))
  t.match(token.statusLine, /^HTTP\/1\.1 501 /, 'the token endpoint too')
  t.same(token.body, { error: 'invalid_request', error_description: 'No transfer coding other than chunked is decoded: send the body chunked or with a Content-Length.' }, 'in RFC 6749\'s shape')
  const read = parseAnswer(await exchange(port, `POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n${chunked}`))
  t.match(read.statusLine, /^HTTP\/1\.1 401 /, 'chunked alone: the body is read and judged')
  t.match(read.body, { code: 'invalid_credentials' })
})

t.test('a query after a # (which the router reads as the query) with an escape that is not UTF-8 gets 400', async (t) => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const answer = parseAnswer(await exchange(port, 'GET /health#x=%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'))
  t.match(answer.statusLine, /^HTTP\/1\.1 400 /)
  t.same(answer.body, { statusCode: 400, error: 'Bad Request', message: 'The URL cannot be decoded.', code: 'invalid_request' })
})

t.test('a request refused before its body arrived gets one answer, not a second when the body times out', async (t) => {
  const app = await build(t, { REQUEST_TIMEOUT: '1s' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  // Refused at once (two Host headers); its 10 bytes of body never come, and Node's request
  // timeout ends the connection.
  const answer = await exchange(port, 'POST /auth/login HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n')
  t.equal(answer.match(/HTTP\/1\.1 \d{3} /g)?.length, 1, 'one answer on the connection')
  t.match(answer, /^HTTP\/1\.1 400 /)
  t.notMatch(answer, /request_timeout/, 'no 408 after it')
  t.match(answer, /\r\nconnection: close\r\n/i, 'it said it would close')

  // Without a body there is nothing to wait for: the connection goes on to the next request.
  for (const refused of ['GET /nope HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /health?x=%FF HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /auth/me HTTP/1.1\r\nHost: x\r\n\r\n']) {
    const both = await exchange(port, `${refused}GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    t.same(both.match(/HTTP\/1\.1 \d{3}/g), [both.slice(0, 12), 'HTTP/1.1 200'], `${refused.split(' HTTP')[0]}: refused, and the next request served`)
  }
})

t.test('an HTTP/1.1 request without Host, or any with two, gets 400 in the contract\'s shape; an empty Host and HTTP/1.0 are served', async (t) => {
  const app = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  for (const path of ['/health', '/auth/me']) {
    const answer = parseAnswer(await exchange(port, `GET ${path} HTTP/1.1\r\nConnection: close\r\n\r\n`))
    t.match(answer.statusLine, /^HTTP\/1\.1 400 /, path)
    t.same(answer.body, { statusCode: 400, error: 'Bad Request', message: 'An HTTP/1.1 request needs a Host header.', code: 'invalid_request' }, path)
    t.equal(answer.headers['x-content-type-options'], 'nosniff', `${path}: security headers`)
    t.equal(answer.headers['cache-control'], 'no-store', `${path}: refused before the route's own hooks, still no-store`)
  }
  // RFC 9112 §3.2: a target without an authority is sent with an empty Host.
  const empty = parseAnswer(await exchange(port, 'GET /auth/me HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n'))
  t.match(empty.statusLine, /^HTTP\/1\.1 401 /, 'an empty Host is a Host: the request is answered')
  t.match(await exchange(port, 'GET /health HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 200 /, 'HTTP/1.0 needs no Host')

  // Node keeps the first Host and drops the rest: a proxy reading the last would route it elsewhere.
  for (const request of ['GET /health HTTP/1.1\r\nHost: x\r\nhost: y\r\nConnection: close\r\n\r\n', 'GET /health HTTP/1.0\r\nHost: x\r\nHOST: x\r\n\r\n']) {
    const twice = parseAnswer(await exchange(port, request))
    t.match(twice.statusLine, /^HTTP\/1\.1 400 /, 'two Host headers')
    t.same(twice.body, { statusCode: 400, error: 'Bad Request', message: 'The Host header must be sent once.', code: 'invalid_request' })
  }
})

t.test('a request that does not arrive whole within REQUEST_TIMEOUT gets 408 and its connection closed', async (t) => {
  const app = await build(t, { REQUEST_TIMEOUT: '1s' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }

  const stalled: Array<[string, string]> = [
    ['a body that stops coming', 'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ema'],
    ['a body that stops short of its length', 'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ema'],
    ['headers that stop coming', 'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ']
  ]
  for (const [name, request] of stalled) {
    const started = Date.now()
    const answer = parseAnswer(await exchange(port, request))
    const waited = Date.now() - started
    t.match(answer.statusLine, /^HTTP\/1\.1 408 /, name)
    t.same(answer.body, { statusCode: 408, error: 'Request Timeout', message: 'The request took too long to arrive.', code: 'request_timeout' }, name)
    t.equal(answer.headers.connection, 'close', name)
    t.equal(answer.headers['cache-control'], 'no-store', name)
    // Node checks its connections every second: answered between 1 and 2 s, with some slack.
    t.ok(waited >= 900 && waited < 4000, `${name}: answered after ${waited} ms`)
  }
  t.match(await exchange(port, 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /, 'a whole request is served')
})
