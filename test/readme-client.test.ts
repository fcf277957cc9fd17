// The README's fetch() client ("An SPA or any fetch() client"), run as written against a live
// server: people copy it, so what it promises (one refresh for many 401s, signed out only when the
// refresh token is refused) is tested here rather than only read.
import { readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import { TEST_PASSWORD, bearer, build, dbCount, signup, uniqueEmail } from './helper.ts'

interface Client {
  api: (path: string, init?: RequestInit) => Promise<Response>
  refresh: () => Promise<void>
  session: { access_token: string, refresh_token: string } | null
}

const README = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
const section = README.slice(README.indexOf('### An SPA or any fetch() client'))
const CLIENT_CODE = /```js\n([\s\S]*?)```/.exec(section)![1]!

/** The README's code on a server of its own, its `session` readable and settable from the test. */
async function readmeClient (t: Test, env: Record<string, string> = {}) {
  const app = await build(t, env)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const code = CLIENT_CODE.replace("const API = 'http://127.0.0.1:3000'", `const API = 'http://127.0.0.1:${port}'`)
  t.not(code, CLIENT_CODE, 'the README\'s API address is where the test puts its server')
  // eslint-disable-next-line no-new-func -- the README's code, run as a reader would paste it
  const client = new Function(`${code}\nreturn { api, refresh, get session () { return session }, set session (value) { session = value } }`)() as Client
  return { app, client }
}

const refreshRows = (app: Awaited<ReturnType<typeof build>>, userId: string) =>
  dbCount(app, 'select count(*) as count from refresh_tokens where session_id in (select id from sessions where user_id = ?)', userId)

t.test('the README client: calls with a refused access token share one refresh, then retry', async (t) => {
  const { app, client } = await readmeClient(t)
  const session = await signup(app)
  client.session = session
  t.equal((await client.api('/auth/me')).status, 200)

  // An access token the server refuses (here: signed with another key), sent by three calls at once.
  client.session = { ...session, access_token: `${session.access_token.slice(0, -4)}AAAA` }
  const answers = await Promise.all([client.api('/auth/me'), client.api('/me/permissions'), client.api('/auth/sessions')])
  t.same(answers.map((answer) => answer.status), [200, 200, 200], 'each retried with the new token')
  t.equal(await refreshRows(app, session.user.id), 2, 'one refresh served all three: the first token and one successor')
  t.not(client.session?.refresh_token, session.refresh_token, 'the client keeps the rotated refresh token')

  // A 401 that is not about the token is handed back, not refreshed.
  const wrongPassword = await client.api('/auth/password', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ current_password: 'not the password', new_password: 'another good passphrase' })
  })
  t.equal(wrongPassword.status, 401)
  t.equal(((await wrongPassword.json()) as { code: string }).code, 'invalid_credentials')
  t.equal(await refreshRows(app, session.user.id), 2, 'no refresh for a wrong password')
})

t.test('the README client: a refused refresh token signs out; a rate-limited refresh keeps the session', async (t) => {
  const { app, client } = await readmeClient(t, { RATE_LIMIT_IP_MAX: '2' })
  const email = uniqueEmail()
  const session = await signup(app, email)

  client.session = session
  await client.refresh()
  await client.refresh()
  const kept = client.session
  const limited = await client.refresh().then(() => undefined, (error: Error & { retryAfter?: number }) => error)
  t.equal(limited?.message, 'try again later', 'the third refresh within the minute: 429')
  t.ok(limited?.retryAfter !== undefined && limited.retryAfter > 0 && limited.retryAfter <= 60, `with Retry-After's seconds (${limited?.retryAfter})`)
  t.same(client.session, kept, 'the session, and its still valid refresh token, are kept')

  // Signed out everywhere by another device: the refresh token is refused, and the client knows.
  const { app: other, client: signedOut } = await readmeClient(t)
  const ended = await signup(other, email)
  t.equal((await other.inject({ method: 'POST', url: '/auth/logout', headers: bearer(ended.access_token), payload: { scope: 'global' } })).statusCode, 204)
  signedOut.session = ended
  const refused = await signedOut.api('/auth/me').then(() => undefined, (error: Error) => error)
  t.equal(refused?.message, 'signed out')
  t.equal(signedOut.session, null, 'the session is dropped: back to the login screen')
  t.equal((await other.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).statusCode, 200, 'where signing in again works')
})
