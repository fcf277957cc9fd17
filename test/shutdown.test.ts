// A rolling deploy stops an instance while a load balancer's keep-alive connections are busy: the
// requests in flight are answered, and the server exits cleanly (0) without waiting out
// close-with-grace's 10 s delay or the connections' keep-alive timeout.
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { Agent, request } from 'node:http'
import { connect } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { parseAnswer } from './helper.ts'
import { startServer, withTimeout } from './server-process.ts'

const PASSWORD = 'keep-alive horse battery staple'

function post (agent: Agent, origin: string, path: string, body: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(origin + path, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode!))
    })
    req.on('error', reject)
    req.end(JSON.stringify(body))
  })
}

t.test('SIGTERM with busy keep-alive connections: every request answered, exit 0', async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: `file:${join(t.testdir(), 'gatehouse.db')}`,
    JWT_SECRET: randomBytes(48).toString('base64url'),
    RATE_LIMIT_IP_MAX: '1000000',
    RATE_LIMIT_ACCOUNT_MAX: '1000000'
  })
  const agent = new Agent({ keepAlive: true, maxSockets: 4 })
  t.teardown(() => agent.destroy())
  const email = `ada-${randomBytes(4).toString('hex')}@example.com`
  t.equal(await post(agent, server.origin, '/auth/signup', { email, password: PASSWORD }), 201)

  // Four connections open and kept alive, then a login on each: the logins queue behind the
  // password hashing, so every connection is busy when the signal arrives.
  const opened = await Promise.all(Array.from({ length: 4 }, () => post(agent, server.origin, '/auth/refresh', { refresh_token: 'x' })))
  t.same(opened, [401, 401, 401, 401])
  t.equal(Object.values(agent.freeSockets).flat().length, 4, 'four idle keep-alive connections')
  const logins = Array.from({ length: 4 }, () => post(agent, server.origin, '/auth/login', { email, password: PASSWORD }))
  await new Promise((resolve) => setTimeout(resolve, 20))
  const stopping = Date.now()
  server.child.kill('SIGTERM')

  t.same(await Promise.all(logins), [200, 200, 200, 200], 'the requests in flight are answered')
  const stopped = await withTimeout(server.exited, 20_000, () => server.log.join('\n'))
  t.same(stopped, { code: 0, signal: null }, `exit 0, not the forced exit (${Date.now() - stopping} ms)`)
  t.notMatch(server.log.join('\n'), /killed by timeout/)
})

/** A raw connection that keeps everything the server writes, and resolves `closed` when it ends. */
async function rawConnection (origin: string) {
  const socket = connect(Number(new URL(origin).port), '127.0.0.1')
  await once(socket, 'connect')
  const connection = { socket, text: '', closed: once(socket, 'close') }
  socket.setEncoding('utf8').on('data', (chunk: string) => { connection.text += chunk })
  return connection
}

/** The answers in what a connection received, in order. */
const answersIn = (text: string) => text.split(/(?=HTTP\/1\.1 \d{3} )/).filter(Boolean).map(parseAnswer)

t.test('SIGTERM while requests are in flight: each is answered, and the last answer on a connection closes it', async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: `file:${join(t.testdir(), 'gatehouse.db')}`,
    JWT_SECRET: randomBytes(48).toString('base64url')
  })
  // Each connection sends a request's head and part of its body: the request is routed and waits
  // for the rest, so it is in flight when the close begins. Node had already decided to keep its
  // connection alive.
  const body = JSON.stringify({ refresh_token: 'not a token we issued' })
  const head = `POST /auth/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`
  const alone = await rawConnection(server.origin)
  const pipelining = await rawConnection(server.origin)
  for (const { socket } of [alone, pipelining]) socket.write(head + body.slice(0, 10))
  await sleep(100)
  server.child.kill('SIGTERM')
  await withTimeout((async () => { while (!server.log.some((line) => line.includes('SIGTERM received'))) await sleep(10) })(), 5000, () => server.log.join('\n'))
  await sleep(50)
  alone.socket.write(body.slice(10))
  // The rest of the body, and a second request right behind it on the same connection.
  const signup = JSON.stringify({ email: `pipelined-${randomBytes(4).toString('hex')}@example.com`, password: PASSWORD })
  pipelining.socket.write(body.slice(10) +
    `POST /auth/signup HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${signup.length}\r\n\r\n${signup}`)

  await withTimeout(Promise.all([alone.closed, pipelining.closed]), 5000, () => `a connection stayed open:\n${alone.text}\n${pipelining.text}`)
  const [answer] = answersIn(alone.text)
  t.equal(answer?.statusLine, 'HTTP/1.1 401 Unauthorized', 'the request in flight is answered')
  t.equal(answer?.headers.connection, 'close', 'and its answer tells the client to open a new connection')
  const [first, second] = answersIn(pipelining.text)
  t.equal(first?.statusLine, 'HTTP/1.1 401 Unauthorized', 'with a request behind it, the one in flight is answered')
  t.equal(second?.statusLine, 'HTTP/1.1 201 Created', 'and so is the request behind it, not dropped with the connection')
  t.equal(second?.headers.connection, 'close', 'the last answer closes the connection')
  t.same(await withTimeout(server.exited, 20_000, () => server.log.join('\n')), { code: 0, signal: null })
})

t.test('a second signal during the close exits at once with 1, the request in flight unanswered', async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: `file:${join(t.testdir(), 'gatehouse.db')}`,
    JWT_SECRET: randomBytes(48).toString('base64url')
  })
  // A request in flight, as above: routed, waiting for the rest of its body.
  const body = JSON.stringify({ refresh_token: 'not a token we issued' })
  const waiting = await rawConnection(server.origin)
  waiting.socket.write(`POST /auth/refresh HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body.slice(0, 10)}`)
  await sleep(100)
  server.child.kill('SIGTERM')
  await withTimeout((async () => { while (!server.log.some((line) => line.includes('SIGTERM received'))) await sleep(10) })(), 5000, () => server.log.join('\n'))
  server.child.kill('SIGINT')
  t.same(await withTimeout(server.exited, 5000, () => server.log.join('\n')), { code: 1, signal: null }, 'exit 1, without the 10 s delay')
  await withTimeout(waiting.closed, 5000, () => 'the connection stayed open')
  t.equal(waiting.text, '', 'the request in flight got no answer')
})

/** One keep-alive connection asking GET /health back to back until the server is gone. */
async function askUntilRefused (agent: Agent, origin: string) {
  const answers: Array<{ status?: number, connection?: string, error?: string }> = []
  for (;;) {
    const answer = await new Promise<{ status?: number, connection?: string, error?: string }>((resolve) => {
      const req = request(origin + '/health', { agent }, (res) => {
        res.resume()
        res.on('end', () => resolve({ status: res.statusCode, connection: res.headers.connection }))
      })
      req.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code }))
      req.end()
    })
    answers.push(answer)
    if (answer.error) return answers
  }
}

t.test('SIGTERM under keep-alive load: no connection is reset, each is told to close', async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: `file:${join(t.testdir(), 'gatehouse.db')}`,
    JWT_SECRET: randomBytes(48).toString('base64url'),
    RATE_LIMIT_IP_MAX: '1000000'
  })
  // Clients that reuse their connection at once: most of the time the server sees each one idle,
  // its next request not read yet. Dropping idle connections at the close reset every one of them.
  const clients = Array.from({ length: 6 }, () => new Agent({ keepAlive: true, maxSockets: 1 }))
  t.teardown(() => clients.forEach((agent) => agent.destroy()))
  const asking = clients.map((agent) => askUntilRefused(agent, server.origin))
  await new Promise((resolve) => setTimeout(resolve, 300))
  server.child.kill('SIGTERM')

  for (const answers of await Promise.all(asking)) {
    const last = answers.at(-1)!
    const beforeLast = answers.at(-2)!
    t.equal(last.error, 'ECONNREFUSED', 'the client learns the server is gone from a refused new connection')
    t.same(beforeLast, { status: 200, connection: 'close' }, 'its last answer closed the connection')
    t.ok(answers.slice(0, -1).every((answer) => answer.status === 200), 'no reset, no 503 before it')
  }
  const stopped = await withTimeout(server.exited, 20_000, () => server.log.join('\n'))
  t.same(stopped, { code: 0, signal: null })
})

t.test('SIGTERM to `npm start` (as a supervisor sends it) stops the server, not only npm', async (t) => {
  const server = await startServer(t, {
    DATABASE_URL: `file:${join(t.testdir(), 'gatehouse.db')}`,
    JWT_SECRET: randomBytes(48).toString('base64url')
  }, ['npm', 'start'])
  server.child.kill('SIGTERM')
  await withTimeout(server.exited, 20_000, () => server.log.join('\n'))
  t.match(server.log.join('\n'), /SIGTERM received, closing/, 'the signal reached the server')
  const refused = await new Promise<string | undefined>((resolve) => {
    request(server.origin + '/health', (res) => { res.resume(); resolve(undefined) })
      .on('error', (error: NodeJS.ErrnoException) => resolve(error.code)).end()
  })
  t.equal(refused, 'ECONNREFUSED', 'nothing listens any more')
})
