// Crash safety: the real server, killed with SIGKILL under a write load, must keep every write it
// acknowledged (signups, refresh-token rotations) and leave a sound SQLite file behind; restarted on
// that file it must serve those accounts and tokens, and then stop cleanly on SIGTERM.
import Database from 'better-sqlite3'
import { randomBytes } from 'node:crypto'
import { statSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { startServer as startServerProcess, withTimeout } from './server-process.ts'

const PASSWORD = 'crash-safety horse battery 42'
const WORKERS = 8
const REFRESHES_PER_USER = 3
const LOAD_MS = 2500
const REQUEST_TIMEOUT_MS = 10_000

const dir = t.testdir()
const dbFile = join(dir, 'gatehouse.db')
const env = {
  DATABASE_URL: 'file:' + dbFile,
  JWT_SECRET: randomBytes(48).toString('base64url'),
  RATE_LIMIT_IP_MAX: '1000000',
  RATE_LIMIT_ACCOUNT_MAX: '1000000',
  // A refresh in flight at the kill may have committed without its answer reaching us; the client's
  // retry with its last acknowledged token is then a grace-window retry. Keep the window far longer
  // than a slow restart so that case is never mistaken for theft.
  REFRESH_REUSE_GRACE: '5m'
}

async function post (origin: string, path: string, body: unknown): Promise<{ status: number, json: Record<string, unknown> }> {
  const response = await fetch(origin + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
  })
  // A body cut off by the kill rejects here, so only fully received answers count as acknowledged.
  return { status: response.status, json: await response.json() as Record<string, unknown> }
}

t.test('acknowledged writes survive SIGKILL under load', async (t) => {
  const began = Date.now()
  const first = await startServerProcess(t, env)
  const loadStarted = Date.now()

  // Write load: each worker signs users up, then rotates each user's refresh token a few times.
  const runId = randomBytes(4).toString('hex')
  let counter = 0
  const load = { stopping: false }
  const acknowledgedEmails: string[] = []
  /** email → the refresh token of the last 2xx answer of that user's chain (signup or refresh). */
  const latestToken = new Map<string, string>()
  let acknowledgedRefreshes = 0
  let failedRequests = 0
  const unexpected: string[] = []

  async function worker () {
    while (!load.stopping) {
      const email = `crash-${runId}-${++counter}@example.com`
      try {
        const signup = await post(first.origin, '/auth/signup', { email, password: PASSWORD })
        if (signup.status !== 201) {
          unexpected.push(`signup ${signup.status} ${JSON.stringify(signup.json)}`)
          continue
        }
        acknowledgedEmails.push(email)
        latestToken.set(email, signup.json.refresh_token as string)
        for (let i = 0; i < REFRESHES_PER_USER && !load.stopping; i++) {
          const refresh = await post(first.origin, '/auth/refresh', { refresh_token: latestToken.get(email) })
          if (refresh.status !== 200) {
            unexpected.push(`refresh ${refresh.status} ${JSON.stringify(refresh.json)}`)
            break
          }
          acknowledgedRefreshes++
          latestToken.set(email, refresh.json.refresh_token as string)
        }
      } catch (error) {
        // Connection refused/reset, or a body cut short, by the kill: not acknowledged.
        failedRequests++
        if (load.stopping) return
        unexpected.push(`request failed before the kill: ${String(error)}`)
      }
    }
  }

  const workers = Array.from({ length: WORKERS }, () => worker())
  await new Promise((resolve) => setTimeout(resolve, LOAD_MS))
  first.child.kill('SIGKILL')
  load.stopping = true
  const killed = await withTimeout(first.exited, 5000, () => 'the SIGKILLed server to exit')
  t.equal(killed.signal, 'SIGKILL', 'the first server died of SIGKILL')
  await withTimeout(Promise.all(workers), REQUEST_TIMEOUT_MS + 2000, () => 'in-flight requests to settle')

  t.same(unexpected, [], 'no request answered with an unexpected status before the kill')
  t.ok(acknowledgedEmails.length > 0, `the load acknowledged signups (${acknowledgedEmails.length})`)
  t.ok(acknowledgedRefreshes > 0, `the load acknowledged refreshes (${acknowledgedRefreshes})`)
  t.ok(failedRequests > 0, 'the kill cut off requests in flight')
  t.ok(statSync(dbFile + '-wal', { throwIfNoEntry: false })?.size, 'the kill left a write-ahead log to recover')

  // Restart on the same file: WAL recovery must bring back every acknowledged write.
  const restarting = Date.now()
  const second = await startServerProcess(t, env)
  const restarted = Date.now()

  const sqlite = new Database(dbFile, { readonly: true, fileMustExist: true })
  t.teardown(() => sqlite.close())
  t.equal(sqlite.pragma('integrity_check', { simple: true }), 'ok', 'PRAGMA integrity_check is ok')
  t.same(sqlite.pragma('foreign_key_check'), [], 'no dangling foreign keys')
  t.same(sqlite.prepare('select lower(email) as email, count(*) as n from users group by lower(email) having n > 1').all(),
    [], 'no duplicate emails')
  const stored = new Set((sqlite.prepare('select email from users').all() as { email: string }[]).map((row) => row.email))
  const lostUsers = acknowledgedEmails.filter((email) => !stored.has(email))
  t.same(lostUsers, [], `every acknowledged signup is stored (${acknowledgedEmails.length})`)

  // A sample of the acknowledged accounts can sign in (argon2 is too slow to try them all).
  const step = Math.max(1, Math.floor(acknowledgedEmails.length / 8))
  const sample = acknowledgedEmails.filter((_email, index) => index % step === 0).slice(0, 8)
  const logins = await Promise.all(sample.map((email) => post(second.origin, '/auth/login', { email, password: PASSWORD })))
  t.same(logins.map((login) => login.status), sample.map(() => 200), `sampled acknowledged users can log in (${sample.length})`)

  // Every acknowledged latest refresh token works once: it rotates (200), its successor rotates,
  // and then it is spent: presenting it again is reuse (401), which also revokes that session.
  const chains = [...latestToken.entries()]
  const failures: string[] = []
  let cursor = 0
  await Promise.all(Array.from({ length: WORKERS }, async () => {
    while (cursor < chains.length) {
      const [email, token] = chains[cursor++]!
      const rotated = await post(second.origin, '/auth/refresh', { refresh_token: token })
      if (rotated.status !== 200) {
        failures.push(`${email}: acknowledged token answered ${rotated.status} ${JSON.stringify(rotated.json)}`)
        continue
      }
      const next = await post(second.origin, '/auth/refresh', { refresh_token: rotated.json.refresh_token })
      if (next.status !== 200) failures.push(`${email}: its successor answered ${next.status}`)
      const replay = await post(second.origin, '/auth/refresh', { refresh_token: token })
      if (replay.status !== 401) failures.push(`${email}: replaying the spent token answered ${replay.status}`)
    }
  }))
  t.same(failures, [], `every acknowledged latest refresh token works exactly once (${chains.length})`)

  t.comment(`signups acknowledged: ${acknowledgedEmails.length}, refreshes acknowledged: ${acknowledgedRefreshes}, ` +
    `requests cut off by the kill: ${failedRequests}`)

  // Graceful stop: SIGTERM → close-with-grace → exit code 0.
  const stopping = Date.now()
  second.child.kill('SIGTERM')
  const stopped = await withTimeout(second.exited, 15_000, () => `the server to stop on SIGTERM:\n${second.log.join('\n')}`)
  t.same(stopped, { code: 0, signal: null }, 'SIGTERM stops the server with exit code 0')
  t.comment(`ms: first start ${loadStarted - began}, restart ${restarted - restarting}, ` +
    `checks ${stopping - restarted}, SIGTERM stop ${Date.now() - stopping}`)
  t.equal(sqlite.pragma('integrity_check', { simple: true }), 'ok', 'PRAGMA integrity_check is ok after shutdown')
})
