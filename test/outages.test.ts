// When a database or Redis stops serving, requests end in bounded time with a clear answer (503
// database_unavailable, or the rate limits' memory fallback), and service resumes with them.
import Database from 'better-sqlite3'
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync } from 'node:fs'
import { sql } from 'drizzle-orm'
import pg from 'pg'
import { createConnection, createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { LightMyRequestResponse } from 'fastify'
import t, { type Test } from 'tap'
import type { App } from '../src/app.ts'
import { openDatabase } from '../src/db/index.ts'
import { refuseReadOnly } from '../src/db/sqlite/open.ts'
import { TEST_PASSWORD, build, freshPostgresUrl, signup, tokenPayload } from './helper.ts'
import { POSTGRES_URL, REDIS_URL, postgresReachable, redisReachable } from './services.ts'

/**
 * A TCP proxy to `target` that can stall: while stalled it keeps every connection open but moves
 * no byte either way, as a dropped route or a failing-over server does; resumed, bytes flow again.
 */
/**
 * A TCP proxy to `target` that can stall: what either side sends is then held, not passed on, until
 * it resumes, as by a network that stops carrying packets without closing the connection.
 */
async function stallableProxy (t: Test, target: string) {
  const { hostname, port } = new URL(target)
  const pairs = new Set<{ sockets: [Socket, Socket], flush: () => void }>()
  let stalled = false
  /** Bytes the proxy's clients sent it, passed on or held. */
  let received = 0
  const server = createServer((client) => {
    const upstream = createConnection({ host: hostname, port: Number(port) })
    const held: Array<() => void> = []
    const relay = (from: Socket, to: Socket) => from.on('data', (chunk: Buffer) => {
      if (from === client) received += chunk.length
      const pass = () => { to.write(chunk) }
      if (stalled) held.push(pass)
      else pass()
    })
    relay(client, upstream)
    relay(upstream, client)
    const pair = { sockets: [client, upstream] as [Socket, Socket], flush: () => { for (const pass of held.splice(0)) pass() } }
    pairs.add(pair)
    const end = () => { pairs.delete(pair); pair.sockets.forEach((socket) => socket.destroy()) }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const pair of pairs) pair.sockets.forEach((socket) => socket.destroy())
    server.close()
  })
  const url = new URL(target)
  url.hostname = '127.0.0.1'
  url.port = String((server.address() as { port: number }).port)
  return {
    url: url.toString(),
    received: () => received,
    stall () {
      stalled = true
    },
    resume () {
      stalled = false
      for (const pair of pairs) pair.flush()
    }
  }
}

const login = (app: App, email: string) =>
  app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })

t.test('SQLite: a write another process holds the lock against answers 503, then works again', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const app = await build(t, { DATABASE_URL: `file:${file}` })
  const session = await signup(app)
  const other = new Database(file)
  t.teardown(() => other.close())
  other.exec('BEGIN IMMEDIATE')

  const started = Date.now()
  const refused = await login(app, session.user.email)
  const waited = Date.now() - started
  t.equal(refused.statusCode, 503)
  // About a second (busy_timeout), not better-sqlite3's default 5 s with every request stopped.
  t.ok(waited < 3500, `answered after ${waited} ms`)
  t.equal(refused.json().code, 'database_unavailable')
  t.equal(refused.headers['retry-after'], '5')
  const token = await app.inject({
    method: 'POST',
    url: '/auth/token',
    payload: { grant_type: 'password', username: session.user.email, password: TEST_PASSWORD }
  })
  t.equal(token.statusCode, 503, 'the token endpoint too, in its own shape')
  t.same(token.json(), { error: 'temporarily_unavailable', error_description: 'The database is unavailable; try again shortly.' })
  t.equal(token.headers['retry-after'], '5', 'with Retry-After, as the other endpoints')
  const me = await app.inject({ url: '/auth/me', headers: { authorization: `Bearer ${session.access_token}` } })
  t.equal(me.statusCode, 200, 'reads go on (WAL)')

  other.exec('ROLLBACK')
  t.equal((await login(app, session.user.email)).statusCode, 200)
})

t.test('SQLite: a write lock another process holds briefly is waited for, not answered 503', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const app = await build(t, { DATABASE_URL: `file:${file}` })
  const session = await signup(app)
  // Another process (a CLI tool, a second instance) holds the write lock for a tenth of the 1 s busy timeout.
  const holder = spawn(process.execPath, ['-e', `
    const db = new (require('better-sqlite3'))(process.argv[1])
    db.exec('BEGIN IMMEDIATE')
    process.stdout.write('locked\\n')
    setTimeout(() => { db.exec('COMMIT'); db.close() }, 100)
  `, file], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise((resolve) => holder.on('exit', resolve))
  t.teardown(() => { holder.kill() })
  await new Promise((resolve) => holder.stdout.once('data', resolve))

  const renamed = await app.inject({ method: 'PATCH', url: '/auth/me', headers: { authorization: `Bearer ${session.access_token}` }, payload: { name: 'Waited' } })
  t.equal(renamed.statusCode, 200, renamed.body)
  t.equal(renamed.json().name, 'Waited')
  t.equal(await exited, 0, 'the other process committed and ended')
})

t.test('SQLite: a database that turns read-only answers 503, and one that is read-only at start stops it', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const app = await build(t, { DATABASE_URL: `file:${file}` })
  const session = await signup(app)
  // What a remount read-only does to the open connection.
  await app.database.query('pragma query_only = 1')
  const refused = await login(app, session.user.email)
  t.equal(refused.statusCode, 503, 'not 500: the request may be retried')
  t.equal(refused.json().code, 'database_unavailable')
  t.equal(refused.headers['retry-after'], '5')
  await app.database.query('pragma query_only = 0')
  t.equal((await login(app, session.user.email)).statusCode, 200)

  // The start's probe: a connection that may only read is refused, one whose writer is busy is not.
  const readOnly = new Database(file, { readonly: true })
  t.teardown(() => readOnly.close())
  t.throws(() => refuseReadOnly(readOnly), /this process may read the database but not write it \(attempt to write a readonly database\)/)
  t.equal(readOnly.inTransaction, false, 'and leaves no transaction open')
  const writer = new Database(file)
  const other = new Database(file)
  t.teardown(() => { writer.close(); other.close() })
  other.pragma('busy_timeout = 10')
  writer.exec('BEGIN IMMEDIATE')
  t.doesNotThrow(() => refuseReadOnly(other), 'another process holding the write lock proves nothing')
  writer.exec('ROLLBACK')
  t.doesNotThrow(() => refuseReadOnly(other))
})

t.test('SQLite: a start where this process may read the database but not write it (the file, or its folder) stops, saying so, not a start whose every write fails', async (t) => {
  // Root writes a 0444 file all the same: as root the start runs without the capability that lets
  // it (CAP_DAC_OVERRIDE, out of the bounding and the inheritable sets, as either would pass it on),
  // and still reads the repository wherever it is checked out.
  const withoutWriteOverride = process.getuid?.() === 0 ? ['setpriv', '--bounding-set', '-dac_override', '--inh-caps', '-dac_override', '--'] : []
  const cases = [
    { name: 'a 0444 file', readOnly: (_folder: string, file: string) => chmodSync(file, 0o444), why: 'this process may read the database but not write it' },
    { name: 'a 0555 folder', readOnly: (folder: string) => chmodSync(folder, 0o555), why: 'this process may not create files in the database\'s folder, as SQLite\'s -wal and -shm files beside it need' }
  ]
  const base = t.testdir()
  for (const { name, readOnly, why } of cases) {
    const folder = join(base, name.replace(/\W/g, '-'))
    const file = join(folder, 'gatehouse.db')
    // Migrated: nothing is pending, so without its probe the start would write nothing, succeed, and
    // answer every write 503 (SQLite opens a file it may not write read-only, without a word).
    await (await openDatabase(`file:${file}`)).close()
    readOnly(folder, file)
    const [command, ...args] = [...withoutWriteOverride, process.execPath, '--import', 'tsx', 'src/cli/db-migrate.ts']
    const run = spawnSync(command!, args, {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, DATABASE_URL: `file:${file}` },
      encoding: 'utf8',
      timeout: 60_000
    })
    chmodSync(folder, 0o755)
    t.equal(run.status, 1, run.error ? `${name}: the start stops (${run.error.message})` : `${name}: the start stops`)
    t.equal(run.stdout, '', `${name}: and does not say it migrated`)
    t.equal(run.stderr, `Cannot open the database at file:${file}: ${why} (attempt to write a readonly database)\n`, `${name}: with one line saying why`)
  }
})

const onPostgres = { skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}`, timeout: 60_000 }
const refresh = (app: App, token: string) =>
  app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: token } })

t.test('PostgreSQL that stops answering: 503 in bounded time, then service again', onPostgres, async (t) => {
  const proxy = await stallableProxy(t, await freshPostgresUrl(POSTGRES_URL))
  const app = await build(t, { DATABASE_URL: proxy.url })
  const session = await signup(app)
  // Ten pooled connections (the pool's size), open before the database stops answering.
  await Promise.all(Array.from({ length: 10 }, () => app.database.query('select pg_sleep(0.05)')))
  proxy.stall()

  const health = await app.inject({ url: '/health' })
  t.equal(health.statusCode, 503)
  t.equal(health.json().code, 'database_unavailable')
  t.equal(health.headers['retry-after'], '5')
  // A plain query (the login's read) and transactions (each refresh's rotation) time out alike.
  const refused = await Promise.all([
    login(app, session.user.email),
    ...Array.from({ length: 8 }, () => refresh(app, session.refresh_token))
  ])
  t.same(refused.map((response) => response.statusCode), Array(9).fill(503))
  t.same(refused.map((response) => response.json().code), Array(9).fill('database_unavailable'))
  t.equal(refused[0]!.headers['retry-after'], '5')

  // None of those connections went back to the pool stuck: the service is whole again.
  proxy.resume()
  t.equal((await app.inject({ url: '/health' })).statusCode, 200)
  t.equal((await login(app, session.user.email)).statusCode, 200)
  t.equal((await refresh(app, session.refresh_token)).statusCode, 200)
})

/**
 * An app on a fresh database with one user, and the operator's connection, which `restore`
 * uses after the test to undo what it did to the database (before the connection ends).
 */
async function appUnderOperator (t: Test, restore: (operator: pg.Client, name: string) => Promise<unknown>) {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const name = new URL(databaseUrl).pathname.slice(1)
  const app = await build(t, { DATABASE_URL: databaseUrl })
  const session = await signup(app)
  const operator = new pg.Client({ connectionString: POSTGRES_URL })
  await operator.connect()
  t.teardown(async () => {
    await restore(operator, name)
    await operator.end()
  })
  const endConnections = () => operator.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1', [name])
  return { app, session, operator, name, endConnections }
}

/** Each answers 503 in its endpoint's shape, with Retry-After: 5; the last one is the token endpoint's. */
function expectUnavailable (t: Test, responses: LightMyRequestResponse[]) {
  for (const response of responses.slice(0, -1)) {
    t.equal(response.statusCode, 503, response.body)
    t.equal(response.json().code, 'database_unavailable')
    t.equal(response.headers['retry-after'], '5')
  }
  const token = responses.at(-1)!
  t.equal(token.statusCode, 503, token.body)
  t.equal(token.json().error, 'temporarily_unavailable')
  t.equal(token.headers['retry-after'], '5')
}

const refreshAtTokenEndpoint = (app: App, token: string) =>
  app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'refresh_token', refresh_token: token } })

t.test('PostgreSQL that refuses new connections: 503, then service again', onPostgres, async (t) => {
  const allowConnections = (operator: pg.Client, name: string, allow: boolean) => operator.query(`alter database "${name}" allow_connections ${allow}`)
  const { app, session, operator, name, endConnections } = await appUnderOperator(t, (operator, name) => allowConnections(operator, name, true))

  // As an operator closes a database: no new connection, and the open ones ended.
  await allowConnections(operator, name, false)
  await endConnections()
  expectUnavailable(t, await Promise.all([
    login(app, session.user.email),
    refresh(app, session.refresh_token),
    refreshAtTokenEndpoint(app, session.refresh_token)
  ]))

  await allowConnections(operator, name, true)
  t.equal((await login(app, session.user.email)).statusCode, 200)
  t.equal((await refresh(app, session.refresh_token)).statusCode, 200)

  // Refused at connection start for other reasons an operator causes (not reproducible under trust auth).
  for (const [code, message] of [['3D000', 'database "gone" does not exist'], ['28P01', 'password authentication failed for user "gatehouse"']] as const) {
    t.equal(app.database.dialect.isUnavailable(Object.assign(new Error(message), { code })), true, message)
  }
})

t.test('PostgreSQL that turns read-only (a failover\'s standby): writes answer 503, then service again', onPostgres, async (t) => {
  const setReadOnly = (operator: pg.Client, name: string, on: boolean) =>
    operator.query(`alter database "${name}" set default_transaction_read_only = ${on}`)
  const { app, session, operator, name, endConnections } = await appUnderOperator(t, (operator, name) => setReadOnly(operator, name, false))
  // The setting applies to new connections: end the pooled ones.
  const readOnly = async (on: boolean) => { await setReadOnly(operator, name, on); await endConnections() }

  await readOnly(true)
  expectUnavailable(t, await Promise.all([
    app.inject({ method: 'POST', url: '/auth/signup', payload: { email: 'standby@example.com', password: TEST_PASSWORD } }),
    login(app, session.user.email),
    refresh(app, session.refresh_token),
    refreshAtTokenEndpoint(app, session.refresh_token)
  ]))
  const me = await app.inject({ url: '/auth/me', headers: { authorization: `Bearer ${session.access_token}` } })
  t.equal(me.statusCode, 200, 'reads are still served')

  // Writable again. Each pooled connection that failed was dropped; the one the read left keeps the
  // read-only default until it is ended, as here, and the pool notices that on its next use.
  await readOnly(false)
  let health = 0
  for (let tries = 0; tries < 20 && health !== 200; tries++) health = (await app.inject({ url: '/health' })).statusCode
  t.equal(health, 200)
  t.equal((await login(app, session.user.email)).statusCode, 200)
  t.equal((await refresh(app, session.refresh_token)).statusCode, 200)
  const users = await app.database.query("select count(*) as n from users where email = 'standby@example.com'")
  t.equal(Number(users[0]!.n), 0, 'the refused signup left no user')

  // Out of disk or memory (SQLSTATE class 53) and a disk I/O error cannot be caused here.
  for (const [code, message] of [['53100', 'could not extend file: No space left on device'], ['53200', 'out of memory'], ['58030', 'could not read block']] as const) {
    t.equal(app.database.dialect.isUnavailable(Object.assign(new Error(message), { code })), true, `${code} ${message}`)
  }
})

/** A connection of the test's own to `databaseUrl` (an operator's, a long transaction's), ended with the test. */
async function clientOf (t: Test, databaseUrl: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

t.test('PostgreSQL: a transaction that waits too long for a lock is cancelled, and leaves nothing open', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const app = await build(t, { DATABASE_URL: databaseUrl })
  const session = await signup(app)
  const other = await clientOf(t, databaseUrl)

  // Another session holds the user's row, as a long admin transaction could.
  await other.query('begin')
  await other.query('select id from users where id = $1 for update', [session.user.id])
  const refused = await login(app, session.user.email)
  t.equal(refused.statusCode, 503, 'the session insert waited past the statement timeout')
  // The server's own timeout, before the client's 10 s query timeout gives up on the connection.
  t.same(await app.database.query('show statement_timeout'), [{ statement_timeout: '8s' }], 'statement_timeout is 8 s on the pool\'s connections')
  t.equal(refused.json().code, 'database_unavailable')
  await other.query('commit')

  const renamed = await app.inject({ method: 'PATCH', url: '/auth/me', headers: { authorization: `Bearer ${session.access_token}` }, payload: { name: 'Ada' } })
  t.equal(renamed.statusCode, 200)
  const { rows: [row] } = await other.query('select name from users where id = $1', [session.user.id])
  t.equal(row.name, 'Ada', 'the next write is committed, not left in a transaction nobody ends')
  const { rows: [stuck] } = await other.query(
    "select count(*)::int as n from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'")
  t.equal(stuck.n, 0, 'no connection idles inside a transaction')

  // Only the driver's own error decides: Drizzle's wrapper lists the query's parameters, client text.
  const wrapped = new Error('Failed query: insert into "users" …\nparams: Connection terminated,abc',
    { cause: Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' }) })
  t.equal(app.database.dialect.isUnavailable(wrapped), false, 'a unique violation is not an outage, whatever the parameters say')
  const deadlocked = new Error('Failed query: update "refresh_tokens" …', { cause: Object.assign(new Error('deadlock detected'), { code: '40P01' }) })
  t.equal(app.database.dialect.isUnavailable(deadlocked), true, 'a deadlock victim was rolled back whole: 503, worth a retry')
})

t.test('PostgreSQL: a transaction whose connection is lost, in its work or at its COMMIT, fails with that error, not with the ROLLBACK that fails after it', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const database = await openDatabase(databaseUrl)
  t.teardown(() => database.close())
  const lost = await database.dialect.atomic(async (tx) => {
    await tx.execute(sql`select pg_terminate_backend(pg_backend_pid())`)
  }).then(() => undefined, (error: Error) => error)
  t.ok(lost, 'the transaction failed')
  const messages = [lost!.message, (lost!.cause as Error | undefined)?.message].join(' | ')
  t.match(messages, /terminating connection due to administrator command/, `the first error, the server's: ${messages}`)
  t.notMatch(lost!.message, /rollback/i, 'not the failed ROLLBACK')
  t.equal(database.dialect.isUnavailable(lost), true, 'an outage: 503')
  t.same(await database.query('select 1 as one'), [{ one: 1 }], 'the pool serves on with a new connection')

  // Lost between the work and its COMMIT: the COMMIT's failure, not the ROLLBACK's after it.
  const operator = await clientOf(t, databaseUrl)
  const atCommit = await database.dialect.atomic(async (tx) => {
    const { rows: [own] } = await tx.execute<{ pid: number }>(sql`select pg_backend_pid() as pid`)
    await operator.query('select pg_terminate_backend($1)', [own!.pid])
  }).then(() => undefined, (error: Error) => error)
  t.ok(atCommit, 'the transaction failed')
  t.notMatch(atCommit!.message, /rollback/i, `not the failed ROLLBACK: ${atCommit!.message}`)
  t.equal(database.dialect.isUnavailable(atCommit), true, 'an outage: 503')
  t.same(await database.query('select 1 as one'), [{ one: 1 }], 'and the pool serves on')

  // A failed statement whose error the work caught: the COMMIT is a rollback, and not taken for success.
  const swallowed = await database.dialect.atomic(async (tx) => {
    await tx.execute(sql`create table kept (id int)`)
    await tx.execute(sql`select 1 / 0`).catch(() => {})
  }).then(() => undefined, (error: Error) => error)
  t.match(swallowed?.message, /^the transaction was rolled back: a statement in it failed$/)
  t.same(await database.query("select to_regclass('kept') as kept"), [{ kept: null }], 'nothing was saved')
})

t.test('PostgreSQL: connections lost inside transactions (a failover, pg_terminate_backend) answer 503, and the process serves on', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const app = await build(t, { DATABASE_URL: databaseUrl })
  const session = await signup(app)
  const operator = await clientOf(t, databaseUrl)
  const appConnections = async () => (await operator.query<{ pid: number, state: string }>(
    'select pid, state from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()')).rows

  // A holder keeps the session's and the user's rows, so a refresh and a sign-in wait inside their transactions.
  const holder = await clientOf(t, databaseUrl)
  await holder.query('begin')
  await holder.query('select id from sessions where id = $1 for update', [tokenPayload(session.access_token).sid])
  await holder.query('select id from users where id = $1 for update', [session.user.id])
  const holderPid = (await holder.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid
  const waiting = [refresh(app, session.refresh_token), login(app, session.user.email)]
  let inTransaction: Array<{ pid: number }> = []
  for (let tries = 0; tries < 100 && inTransaction.length < 2; tries++) {
    await sleep(50)
    inTransaction = (await appConnections()).filter((connection) => connection.pid !== holderPid && connection.state === 'active')
  }
  t.equal(inTransaction.length, 2, 'both wait for a row, inside their transactions')
  for (const { pid } of inTransaction) await operator.query('select pg_terminate_backend($1)', [pid])
  for (const response of await Promise.all(waiting)) {
    t.equal(response.statusCode, 503, response.body)
    t.equal(response.json().code, 'database_unavailable')
    t.equal(response.headers['retry-after'], '5')
  }
  await holder.query('commit')

  // Still here: the lost connections were errors of their requests, not of the process.
  t.equal((await app.inject({ url: '/health' })).statusCode, 200)
  t.equal((await login(app, session.user.email)).statusCode, 200, 'a sign-in is served again')
  t.equal((await refresh(app, session.refresh_token)).statusCode, 200, 'and the refresh, whose token the lost transaction left unused')
})

t.test('Redis that stops answering: sign-ins go on under the per-instance limits', {
  skip: await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL}`,
  timeout: 30_000
}, async (t) => {
  const proxy = await stallableProxy(t, REDIS_URL)
  const app = await build(t, { REDIS_URL: proxy.url })
  const session = await signup(app)
  t.equal((await login(app, session.user.email)).statusCode, 200, 'through Redis')
  proxy.stall()
  t.equal((await login(app, session.user.email)).statusCode, 200, 'on the memory fallback')
  // That sign-in waited for Redis's command timeouts; the next ones, for 5 s, do not ask it at all.
  const askedOnce = proxy.received()
  for (let signIn = 0; signIn < 3; signIn++) t.equal((await login(app, session.user.email)).statusCode, 200, 'on the memory fallback')
  t.equal(proxy.received(), askedOnce, 'no command was sent to the Redis that stopped answering')
  proxy.resume()
  await sleep(5000)
  t.equal((await login(app, session.user.email)).statusCode, 200)
  t.ok(proxy.received() > askedOnce, '5 s on, Redis is asked again, and answers')
})

t.test('Redis that stops answering: a correct sign-in meanwhile clears the account\'s count in Redis too, once it answers', {
  skip: await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL}`,
  timeout: 30_000
}, async (t) => {
  const proxy = await stallableProxy(t, REDIS_URL)
  const app = await build(t, { REDIS_URL: proxy.url, RATE_LIMIT_ACCOUNT_MAX: '3' })
  const session = await signup(app)
  const wrong = () => app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: 'wrong password!' } })
  t.same([(await wrong()).statusCode, (await wrong()).statusCode], [401, 401], 'two failures counted in Redis')
  proxy.stall()
  t.equal((await login(app, session.user.email)).statusCode, 200, 'a correct sign-in on the memory fallback')
  proxy.resume()
  await sleep(5000)
  // Without the clearing, Redis would still hold the two failures (three, with the stalled sign-in's count arriving late).
  t.same([(await wrong()).statusCode, (await wrong()).statusCode, (await wrong()).statusCode], [401, 401, 401], 'a fresh count of three')
  t.equal((await wrong()).statusCode, 429, 'and the limit holds in Redis after it')
})

t.test('Redis that stops answering: the clearing owed to it spares failures other instances counted after the sign-in', {
  skip: await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL}`,
  timeout: 30_000
}, async (t) => {
  const proxy = await stallableProxy(t, REDIS_URL)
  // Two instances on one database: one loses Redis, the other keeps it.
  const database = `file:${join(t.testdir(), 'gatehouse.db')}`
  const cut = await build(t, { DATABASE_URL: database, REDIS_URL: proxy.url, RATE_LIMIT_ACCOUNT_MAX: '3' })
  const other = await build(t, { DATABASE_URL: database, REDIS_URL, RATE_LIMIT_ACCOUNT_MAX: '3' })
  const session = await signup(cut)
  const wrong = (app: App) => app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: 'wrong password!' } })
  proxy.stall()
  t.equal((await login(cut, session.user.email)).statusCode, 200, 'a correct sign-in on the memory fallback')
  // Then someone guesses on the instance that reaches Redis, up to its lockout.
  const guesses = []
  for (let guess = 0; guess < 4; guess++) guesses.push((await wrong(other)).statusCode)
  t.same(guesses, [401, 401, 401, 429], 'locked out in Redis')
  proxy.resume()
  await sleep(5000)
  // The first instance tells Redis of its sign-in before it next asks: the lockout came after it, and stays.
  t.equal((await wrong(cut)).statusCode, 429, 'the lockout holds on the instance that was cut off')
  t.equal((await login(other, session.user.email)).statusCode, 429, 'and on the other, a correct password too')
})

// SQLSTATE class 08 (connection exceptions) is an outage: what PgBouncer answers when it
// cannot give a server connection (08P01 "no more connections allowed", "query_wait_timeout").
t.test('PostgreSQL: connection exceptions (SQLSTATE class 08) answer 503', {
  skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}`
}, async (t) => {
  const app = await build(t, { DATABASE_URL: await freshPostgresUrl(POSTGRES_URL) })
  for (const [code, message] of [['08P01', 'no more connections allowed (max_client_conn)'], ['08006', 'server conn crashed?'], ['08001', 'could not connect']] as const) {
    t.equal(app.database.dialect.isUnavailable(Object.assign(new Error(message), { code })), true, `${code} ${message}`)
  }
})
