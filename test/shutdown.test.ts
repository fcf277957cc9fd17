// A rolling deploy stops an instance while a load balancer's keep-alive connections are busy: the
// requests in flight are answered, and the server exits cleanly (0) without waiting out
// close-with-grace's 10 s delay or the connections' keep-alive timeout.
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'node:http'
import { join } from 'node:path'
import t from 'tap'
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
