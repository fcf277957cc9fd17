import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import t from 'tap'
import { buildApp } from '../src/app.ts'
import { ConfigError, keepSecret, loadConfig, parseDuration, redactUrl, sqlitePath } from '../src/config.ts'
import { openDatabase } from '../src/db/index.ts'
import { TEST_SECRET, freshPostgresUrl } from './helper.ts'
import { POSTGRES_URL, REDIS_URL, postgresReachable, redisReachable } from './services.ts'

t.test('defaults match the contract', async (t) => {
  const dir = t.testdir()
  const config = loadConfig({ DATABASE_URL: `file:${join(dir, 'g.db')}` })
  t.equal(config.port, 3000)
  t.equal(config.host, '127.0.0.1')
  t.equal(config.accessTokenTtl, 900)
  t.equal(config.refreshTokenTtl, 30 * 86400)
  t.equal(config.refreshReuseGrace, 10)
  t.equal(config.requestTimeout, 30)
  t.equal(config.jwt.issuer, 'gatehouse')
  t.equal(config.jwt.audience, 'gatehouse')
  t.equal(config.logLevel, 'info')
  t.same(config.corsOrigins, [])
  t.same(config.rateLimit, { ipMax: 30, accountMax: 10 })
  t.same(config.jwt.previousSecrets, [])
  t.equal(config.jwt.secretFile, join(dir, 'jwt-secret'), 'no JWT_SECRET outside production: one generated and kept beside the database')
  t.equal(config.admin, undefined)
  t.equal(config.redisUrl, undefined)
  t.equal(loadConfig({ JWT_SECRET: TEST_SECRET }).databaseUrl, 'file:./data/gatehouse.db')
})

t.test('durations accept plain seconds and unit suffixes', async (t) => {
  t.equal(parseDuration('900'), 900)
  t.equal(parseDuration('15m'), 900)
  t.equal(parseDuration('12h'), 43200)
  t.equal(parseDuration('30d'), 2592000)
  t.equal(parseDuration('0'), 0)
  t.equal(parseDuration('15 minutes'), undefined)
  t.equal(parseDuration('-5'), undefined)
  t.equal(parseDuration('1.5h'), undefined)
})

t.test('every invalid variable is named in one error', async (t) => {
  const error = t.throws(() => loadConfig({
    DATABASE_URL: ':memory:',
    PORT: 'eighty',
    ACCESS_TOKEN_TTL: 'soon',
    JWT_SECRET: 'short',
    LOG_LEVEL: 'loud'
  })) as ConfigError
  t.type(error, ConfigError)
  t.equal(error.problems.length, 4)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', REFRESH_TOKEN_TTL: '999999999d' }), /REFRESH_TOKEN_TTL/)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', REQUEST_TIMEOUT: '0' }), /REQUEST_TIMEOUT must be a duration from 1s/)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', ACCESS_TOKEN_TTL: '2h', REFRESH_TOKEN_TTL: '1h' }),
    /ACCESS_TOKEN_TTL \(7200s\) must not be longer than REFRESH_TOKEN_TTL \(3600s\)/)
  t.equal(loadConfig({ DATABASE_URL: ':memory:', ACCESS_TOKEN_TTL: '1h', REFRESH_TOKEN_TTL: '1h' }).accessTokenTtl, 3600)
  t.equal(loadConfig({ DATABASE_URL: ':memory:' }).sessionMaxAge, 0, 'no maximum session age unless set')
  t.equal(loadConfig({ DATABASE_URL: ':memory:', SESSION_MAX_AGE: '30d' }).sessionMaxAge, 30 * 86_400)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', SESSION_MAX_AGE: 'a month' }), /SESSION_MAX_AGE must be a duration/)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', ACCESS_TOKEN_TTL: '2h', SESSION_MAX_AGE: '1h' }),
    /ACCESS_TOKEN_TTL \(7200s\) must not be longer than SESSION_MAX_AGE \(3600s\)/)
  for (const name of ['PORT', 'ACCESS_TOKEN_TTL', 'JWT_SECRET', 'LOG_LEVEL']) t.match(error.message, name)
})

t.test('production refuses to start without a strong secret', async (t) => {
  t.throws(() => loadConfig({ NODE_ENV: 'production', DATABASE_URL: ':memory:' }), /JWT_SECRET is required in production/)
  t.throws(() => loadConfig({ NODE_ENV: 'production', DATABASE_URL: ':memory:', JWT_SECRET: 'x'.repeat(31) }), /at least 32 bytes/)
  t.equal(loadConfig({ NODE_ENV: 'production', DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }).jwt.secret, TEST_SECRET)
  for (const spelling of ['Production', 'PRODUCTION', 'production ', ' production']) {
    t.throws(() => loadConfig({ NODE_ENV: spelling, DATABASE_URL: ':memory:' }), /JWT_SECRET is required in production/, `"${spelling}"`)
  }
})

t.test('outside production a missing secret is generated once, kept 0600, and reused', async (t) => {
  const dir = t.testdir()
  const env = { DATABASE_URL: `file:${join(dir, 'data', 'g.db')}` }
  const first = loadConfig(env)
  const file = join(dir, 'data', 'jwt-secret')
  t.equal(first.jwt.secretFile, file)
  t.ok(Buffer.byteLength(first.jwt.secret) >= 32)
  t.equal(statSync(file).mode & 0o777, 0o600)
  t.equal(readFileSync(file, 'utf8').trim(), first.jwt.secret)
  t.equal(loadConfig(env).jwt.secret, first.jwt.secret, 'tokens survive a restart')
})

/** Runs `load` with `dir` as the working directory, where relative data paths resolve. */
function loadIn<T> (dir: string, load: () => T): T {
  const previous = process.cwd()
  process.chdir(dir)
  try {
    return load()
  } finally {
    process.chdir(previous)
  }
}

t.test('with DATABASE_URL=:memory: a generated secret is kept in memory only', async (t) => {
  const dir = t.testdir()
  const [first, second] = loadIn(dir, () => [loadConfig({ DATABASE_URL: ':memory:' }), loadConfig({ DATABASE_URL: ':memory:' })])
  t.equal(first!.jwt.secretFile, undefined, 'no secret file')
  t.ok(Buffer.byteLength(first!.jwt.secret) >= 32)
  t.not(first!.jwt.secret, second!.jwt.secret, 'a new one each start, as the data ends with the process')
  t.same(readdirSync(dir), [], 'nothing written to the working directory')
})

t.test('with PostgreSQL and no JWT_SECRET the secret is kept in ./data', async (t) => {
  const dir = t.testdir()
  const config = loadIn(dir, () => loadConfig({ DATABASE_URL: 'postgres://u:p@db.internal:5432/gatehouse' }))
  t.equal(config.jwt.secretFile, join(dir, 'data', 'jwt-secret'))
  t.equal(readFileSync(join(dir, 'data', 'jwt-secret'), 'utf8').trim(), config.jwt.secret)
  t.same(readdirSync(dir), ['data'], 'no folder named after the URL')
})

t.test('a secret another process kept first wins over the one generated here', async (t) => {
  const dir = t.testdir({ 'jwt-secret': `${'a'.repeat(40)}\n` })
  const file = join(dir, 'jwt-secret')
  t.equal(keepSecret(file, 'b'.repeat(40)), 'a'.repeat(40))
  t.equal(readFileSync(file, 'utf8'), `${'a'.repeat(40)}\n`, 'the kept file is not overwritten')
  t.same(readdirSync(dir), ['jwt-secret'], 'the draft is removed')
})

t.test('a kept secret file that is too short stops the start instead of being replaced', async (t) => {
  const dir = t.testdir({ data: { 'jwt-secret': 'too short\n' } })
  t.throws(() => loadConfig({ DATABASE_URL: `file:${join(dir, 'data', 'g.db')}` }),
    /jwt-secret holds fewer than 32 bytes: delete it to generate a new secret, or set JWT_SECRET/)
  t.equal(readFileSync(join(dir, 'data', 'jwt-secret'), 'utf8'), 'too short\n', 'the file is left as it was')
})

t.test('the app starts on an empty data folder and migrates', async (t) => {
  const dir = t.testdir()
  const dbFile = join(dir, 'fresh', 'gatehouse.db')
  const app = await buildApp(loadConfig({ DATABASE_URL: `file:${dbFile}`, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.ready()
  t.ok(existsSync(dbFile))
  t.equal(app.database.dialect.name, 'sqlite')
  const tables = await app.database.query("select name from sqlite_master where type = 'table'") as Array<{ name: string }>
  t.ok(tables.some((table) => table.name === 'users'))
  t.same(await app.database.query('pragma journal_mode'), [{ journal_mode: 'wal' }])
  t.same(await app.database.query('pragma foreign_keys'), [{ foreign_keys: 1 }])
  const signup = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: 'a@example.com', password: 'a long enough password' } })
  t.equal(signup.statusCode, 201)
  // Password hashes and emails live here: no other local user may read them, whatever the umask.
  t.equal(statSync(join(dir, 'fresh')).mode & 0o777, 0o700, 'the folder it created')
  for (const file of [dbFile, `${dbFile}-wal`, `${dbFile}-shm`, join(dir, 'fresh', 'jwt-secret')]) {
    t.equal(statSync(file).mode & 0o777, 0o600, file.slice(dir.length))
  }
})

t.test('with JWT_SECRET set, the data folder the database creates is 0700 too', async (t) => {
  // No secret is kept, so the SQLite driver's opening creates the folder, not keepSecret.
  const dir = t.testdir()
  const dbFile = join(dir, 'fresh', 'gatehouse.db')
  const app = await buildApp(loadConfig({ DATABASE_URL: `file:${dbFile}`, JWT_SECRET: TEST_SECRET, LOG_LEVEL: 'silent' }))
  t.teardown(() => app.close())
  await app.ready()
  t.notOk(existsSync(join(dir, 'fresh', 'jwt-secret')), 'no secret kept')
  t.equal(statSync(join(dir, 'fresh')).mode & 0o777, 0o700, 'the folder it created')
  t.equal(statSync(dbFile).mode & 0o777, 0o600, 'the database file')
})

t.test('every commit is synced to disk, on the first start and on every later one', async (t) => {
  const dbFile = join(t.testdir(), 'gatehouse.db')
  for (const start of ['first start', 'restart on the file, already in WAL mode']) {
    const app = await buildApp(loadConfig({ DATABASE_URL: `file:${dbFile}`, LOG_LEVEL: 'silent' }))
    await app.ready()
    // 2 is FULL; better-sqlite3's build would give a file already in WAL mode 1 (NORMAL).
    t.same(await app.database.query('pragma synchronous'), [{ synchronous: 2 }], start)
    await app.close()
  }
})

/** `npm start` with this environment, expected to refuse to start: its exit status and stderr. */
function failedStart (env: Record<string, string>) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    env: { ...process.env, JWT_SECRET: TEST_SECRET, ...env },
    encoding: 'utf8',
    timeout: 30_000
  })
  return { status: result.status, stderr: result.stderr }
}

t.test('npm start stops with a message naming the bad variable', async (t) => {
  const result = failedStart({ DATABASE_URL: ':memory:', PORT: '99999' })
  t.equal(result.status, 1)
  t.match(result.stderr, /PORT must be a whole number/)
  t.notMatch(result.stderr, /\n\s+at /, 'no stack trace')
})

t.test('npm start says in one line why the database cannot be opened', async (t) => {
  const result = failedStart({ DATABASE_URL: 'postgres://postgres:hunter2@127.0.0.1:1/gatehouse', PORT: '0' })
  t.equal(result.status, 1)
  t.match(result.stderr, /^Gatehouse could not start: Cannot open the database at postgres:\/\/postgres@127\.0\.0\.1:1\/gatehouse: connect ECONNREFUSED/)
  t.notMatch(result.stderr, /\n\s+at /, 'no stack trace')
  t.notMatch(result.stderr, /hunter2/, 'no password')
})

t.test('at LOG_LEVEL=debug a failed start also prints the stacks, without any query\'s parameters', {
  skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}`
}, async (t) => {
  // On PostgreSQL, where Drizzle's error lists the parameters: the first admin's email and hash.
  const url = await freshPostgresUrl(POSTGRES_URL)
  await (await openDatabase(url)).close()
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  // Stands in for the first admin's insert failing (a read-only standby, a full disk).
  await client.query("create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused by test'; end $$")
  await client.query('create trigger refuse before insert on users for each row execute function refuse()')
  await client.end()
  const result = failedStart({
    DATABASE_URL: url, PORT: '0', LOG_LEVEL: 'debug', ADMIN_EMAIL: 'ops@example.com', ADMIN_PASSWORD: 'a long and uncommon admin passphrase'
  })
  t.equal(result.status, 1)
  t.match(result.stderr, /^Gatehouse could not start: refused by test\n/)
  t.match(result.stderr, /params: \[redacted\]\n\s+at /, 'the stack, its parameters cut, its frames kept')
  t.match(result.stderr, /\nerror: refused by test\n\s+at /, 'and the cause\'s stack')
  t.notMatch(result.stderr, /argon2|ops@example\.com/, 'neither the hash nor the email')
})

t.test('DATABASE_URL and REDIS_URL must be URLs Gatehouse can use', async (t) => {
  const base = { JWT_SECRET: TEST_SECRET }
  for (const bad of ['postgress://postgres@db:5432/gatehouse', 'mysql://root@db/gatehouse', 'http://db/gatehouse',
    'postgres:/postgres@db:5432/gatehouse', 'sqlite:///tmp/g.db', 'postgres//postgres@db:5432/gatehouse', 'file//tmp/g.db']) {
    t.throws(() => loadConfig({ ...base, DATABASE_URL: bad }), /DATABASE_URL must be postgres:\/\/… \(or postgresql:\/\/…\)/, bad)
  }
  for (const good of ['postgres://postgres@db/gatehouse', 'postgresql://db/gatehouse', 'POSTGRES://db/gatehouse', 'file:./data/g.db', 'file:///tmp/g.db', 'FILE:./data/g.db', './data/g.db', 'postgres/g.db', ':memory:']) {
    t.equal(loadConfig({ ...base, DATABASE_URL: good }).databaseUrl, good, good)
  }
  t.equal(sqlitePath('FILE:./data/g.db'), join(process.cwd(), 'data/g.db'), 'the scheme in any case')
  t.equal(sqlitePath('file:///tmp/g.db'), '/tmp/g.db')
  for (const memory of [':memory:', 'file::memory:', 'FILE::memory:', ':MEMORY:']) t.equal(sqlitePath(memory), ':memory:', memory)
  for (const [bad, why] of [['file://./data/g.db', /a file:\/\/ URL with a host/], ['file:./g.db?mode=memory', /a file: URL with a query string/]] as const) {
    t.throws(() => loadConfig({ ...base, DATABASE_URL: bad }), why, bad)
  }
  for (const bad of ['http://cache:6379', 'garbage', 'cache:6379', 'redis://cache:6379/abc', 'redis:///0', 'redis://u:hunter2@cache/x']) {
    const problem = t.throws(() => loadConfig({ ...base, DATABASE_URL: ':memory:', REDIS_URL: bad }),
      /REDIS_URL must be redis:\/\/\[user:password@\]host\[:port\]\[\/database number\], or rediss:\/\/… for TLS/, bad)
    t.notMatch((problem as Error).message, /hunter2/, 'never the password')
  }
  for (const good of ['rediss://cache:6380', 'redis://cache:6379/2', 'redis://u:p@cache', 'redis://cache/']) {
    t.equal(loadConfig({ ...base, DATABASE_URL: ':memory:', REDIS_URL: good }).redisUrl, good, good)
  }
  // A password with an unencoded @ and then a /, ? or #: the parser would take its rest for the
  // host (`ss`), and the rest of it would be shown in messages and logs.
  for (const [name, url] of [
    ['DATABASE_URL', 'postgres://postgres:p@ss#hunter2@db:5432/gatehouse'], ['DATABASE_URL', 'postgres://postgres:p@ss?hunter2@db/gatehouse'],
    ['DATABASE_URL', 'postgresql://postgres:p@ss/hunter2@db/gatehouse'], ['REDIS_URL', 'redis://:p@ss?hunter2@cache:6379/1'],
    ['REDIS_URL', 'redis://:p@ss#hunter2@cache:6379/1'], ['REDIS_URL', 'redis://:p@ss/hunter2@cache:6379/1']
  ] as const) {
    const problem = t.throws(() => loadConfig({ ...base, DATABASE_URL: ':memory:', [name]: url }),
      new RegExp(name === 'REDIS_URL' && url.includes('/hunter2') ? 'REDIS_URL must be redis://' : `${name} has an @ after its host: percent-encode @, /, \\? and # in its user name and password \\(@ as %40\\)`), url)
    t.notMatch((problem as Error).message, /hunter2|p@ss|\/\/ss/, `${url}: no part of the password`)
  }
  for (const good of ['postgres://postgres:p%40ss%23hunter2@db/gatehouse', 'postgres://u:pw@db/g?application_name=api@eu',
    'postgres://u@db/g?password=a@b', 'postgres://u@db/g?sslrootcert=/etc/ssl/ca@2024.pem', 'postgres://u@db/my@db', 'redis://:pw@cache:6379/0?x=a@b']) {
    const name = good.startsWith('redis') ? 'REDIS_URL' : 'DATABASE_URL'
    t.doesNotThrow(() => loadConfig({ ...base, DATABASE_URL: ':memory:', [name]: good }), `${good}: an @ of the URL's own (or percent-encoded) is used`)
  }
})

t.test('CORS_ORIGINS must list origins, which browsers compare exactly', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  t.same(loadConfig({ ...base, CORS_ORIGINS: 'http://localhost:5173, https://app.example.com' }).corsOrigins,
    ['http://localhost:5173', 'https://app.example.com'])
  t.throws(() => loadConfig({ ...base, CORS_ORIGINS: 'http://localhost:5173/' }),
    /CORS_ORIGINS must list origins .*\(got "http:\/\/localhost:5173\/"; the origin of that URL is "http:\/\/localhost:5173"\)/)
  for (const bad of ['localhost:5173', '*', 'https://app.example.com/spa']) {
    t.throws(() => loadConfig({ ...base, CORS_ORIGINS: bad }), /CORS_ORIGINS must list origins/, bad)
  }
})

t.test('a secret of exactly 32 bytes is enough, for JWT_SECRET and each previous secret', async (t) => {
  const base = { DATABASE_URL: ':memory:' }
  t.equal(loadConfig({ ...base, JWT_SECRET: 'x'.repeat(32) }).jwt.secret, 'x'.repeat(32))
  t.same(loadConfig({ ...base, JWT_SECRET: TEST_SECRET, JWT_PREVIOUS_SECRETS: `${'y'.repeat(32)},${'z'.repeat(40)}` }).jwt.previousSecrets,
    ['y'.repeat(32), 'z'.repeat(40)])
  t.throws(() => loadConfig({ ...base, JWT_SECRET: TEST_SECRET, JWT_PREVIOUS_SECRETS: `${'z'.repeat(40)},${'y'.repeat(31)}` }),
    /JWT_PREVIOUS_SECRETS: entry 2 is shorter than 32 bytes/)
})

t.test('durations may be up to ten years, and no longer', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  t.equal(loadConfig({ ...base, REFRESH_TOKEN_TTL: '3650d' }).refreshTokenTtl, 3650 * 86_400)
  for (const name of ['REFRESH_TOKEN_TTL', 'SESSION_MAX_AGE', 'REFRESH_REUSE_GRACE', 'REQUEST_TIMEOUT']) {
    t.throws(() => loadConfig({ ...base, [name]: '3651d' }), new RegExp(`${name} must be a duration from \\ds to 10 years`), name)
  }
})

t.test('SESSION_MAX_AGE may equal ACCESS_TOKEN_TTL, not be a second shorter', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  t.equal(loadConfig({ ...base, ACCESS_TOKEN_TTL: '900', SESSION_MAX_AGE: '900' }).sessionMaxAge, 900)
  t.throws(() => loadConfig({ ...base, ACCESS_TOKEN_TTL: '901', SESSION_MAX_AGE: '900' }),
    /ACCESS_TOKEN_TTL \(901s\) must not be longer than SESSION_MAX_AGE \(900s\)/)
})

t.test('a JWT_SECRET of spaces is no secret', async (t) => {
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', JWT_SECRET: ' '.repeat(40) }), /JWT_SECRET must be at least 32 bytes/)
  t.throws(() => loadConfig({ DATABASE_URL: ':memory:', JWT_SECRET: ` ${'x'.repeat(30)} ` }), /JWT_SECRET must be at least 32 bytes/)
})

t.test('a refused configuration leaves no folder and no secret behind', async (t) => {
  const folder = join(t.testdir(), 'data')
  t.throws(() => loadConfig({ DATABASE_URL: `file:${join(folder, 'gatehouse.db')}`, PORT: 'eighty' }), /PORT/)
  t.notOk(existsSync(folder))
  for (const [label, password] of [['too short', 'short'], ['common', 'password123'], ['the email', 'Boss@Example.com']]) {
    t.throws(() => loadConfig({ DATABASE_URL: `file:${join(folder, 'gatehouse.db')}`, ADMIN_EMAIL: 'boss@example.com', ADMIN_PASSWORD: password! }),
      /^Invalid configuration:[^]*ADMIN_PASSWORD is refused: /, `a weak ADMIN_PASSWORD (${label}) is a configuration error`)
    t.notOk(existsSync(folder), `${label}: no folder`)
  }
  t.ok(loadConfig({ DATABASE_URL: `file:${join(folder, 'gatehouse.db')}` }).jwt.secretFile, 'a good one does keep its secret')
  t.ok(existsSync(join(folder, 'jwt-secret')))
})

t.test('TRUST_PROXY and ADMIN_EMAIL are checked at start', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  t.equal(loadConfig({ ...base, TRUST_PROXY: 'TRUE' }).trustProxy, true)
  t.equal(loadConfig({ ...base }).trustProxy, false)
  type Trust = (address: string, hop: number) => boolean
  const listed = loadConfig({ ...base, TRUST_PROXY: '10.0.0.0/8, loopback,::1' }).trustProxy as Trust
  const trusted = ['10.1.2.3', '127.0.0.1', '::1', '10.0.0.5:41000', '[::1]:443', '127.0.0.1:80']
  t.same(trusted.map((address) => listed(address, 0)), trusted.map(() => true), 'the listed proxies, written with a port or not')
  const untrusted = ['203.0.113.9', '203.0.113.9:41000', '2001:db8::1', 'not an address', '11.0.0.1']
  t.same(untrusted.map((address) => listed(address, 0)), untrusted.map(() => false), 'and nothing else')
  const hops = loadConfig({ ...base, TRUST_PROXY: '1' }).trustProxy as Trust
  t.same([hops('10.0.0.1', 0), hops('10.0.0.1', 1)], [true, false], 'one hop: trust the proxy in front only')
  const prefixes = loadConfig({ ...base, TRUST_PROXY: '10.0.0.1/32,fd00::/8,::1/128' }).trustProxy as Trust
  t.same(['10.0.0.1', '10.0.0.2', 'fd12::1', '::1'].map((address) => prefixes(address, 0)), [true, false, true, true],
    'a prefix up to the address\'s length: 32 bits for IPv4, 128 for IPv6')
  for (const bad of ['yes', '10.0.0.0/33', '::1/129', 'proxy.internal']) {
    t.throws(() => loadConfig({ ...base, TRUST_PROXY: bad }), /TRUST_PROXY/, bad)
  }
  t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: 'Ops Team', ADMIN_PASSWORD: 'a long admin password' }), /ADMIN_EMAIL is not an email address/)
  // What /auth/login's schema refuses, so the admin could never sign in there.
  for (const email of ['josé@example.com', 'a..b@example.com', 'ops@example.com.']) {
    t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: email, ADMIN_PASSWORD: 'a long admin password' }), /ADMIN_EMAIL is not an email address/, email)
  }
  t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: `${'a'.repeat(65)}@example.com`, ADMIN_PASSWORD: 'a long admin password' }),
    /ADMIN_EMAIL is not an email address with at most 64 characters before the @/, 'as sign-up refuses it')
  // 254 characters as written, 255 lower-cased (İ becomes two): refused as sign-up would refuse it.
  const lengthened = `İ${'a'.repeat(241)}@example.com`
  t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: lengthened, ADMIN_PASSWORD: 'a long admin password' }), /ADMIN_EMAIL is not an email address/)
})

t.test('a port already in use, or a host not this machine\'s, stops the start with one line naming them', async (t) => {
  const { createServer } = await import('node:net')
  const taken = createServer()
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => taken.close())
  const port = String((taken.address() as { port: number }).port)
  for (const level of ['info', 'silent']) {
    const result = failedStart({ DATABASE_URL: ':memory:', HOST: '127.0.0.1', PORT: port, LOG_LEVEL: level })
    t.equal(result.status, 1, level)
    t.match(result.stderr, new RegExp(`^Gatehouse could not start: cannot listen on HOST=127\\.0\\.0\\.1 PORT=${port}: listen EADDRINUSE: address already in use 127\\.0\\.0\\.1:${port}\\n$`), level)
  }
  // 192.0.2.1 is a documentation address (RFC 5737): no machine's own.
  const elsewhere = failedStart({ DATABASE_URL: ':memory:', HOST: '192.0.2.1', PORT: port })
  t.equal(elsewhere.status, 1)
  t.match(elsewhere.stderr, /^Gatehouse could not start: cannot listen on HOST=192\.0\.2\.1 PORT=\d+: listen EADDRNOTAVAIL: .*\n$/)
})

t.test('a REDIS_URL that Redis refuses (a database number it does not have, a wrong password) stops the start', {
  skip: await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL} (.ci/run starts it)`
}, async (t) => {
  const missingDatabase = new URL(REDIS_URL)
  missingDatabase.pathname = '/99' // Redis has 16 by default: ioredis would quietly use database 0
  const wrongPassword = new URL(REDIS_URL)
  wrongPassword.username = 'nobody'
  wrongPassword.password = 'hunter2'
  for (const [url, reason] of [[missingDatabase, 'ERR DB index is out of range'], [wrongPassword, 'WRONGPASS invalid username-password pair or user is disabled.']] as const) {
    const result = failedStart({ DATABASE_URL: ':memory:', PORT: '0', REDIS_URL: url.href })
    t.equal(result.status, 1, reason)
    t.equal(result.stderr, `Gatehouse could not start: Redis refused REDIS_URL: ${reason}\n`)
  }

  // In process (the tests, an embedder): what had started before the refusal is closed again.
  const dir = t.testdir()
  const heldOpen = () => readdirSync('/proc/self/fd').map((fd) => {
    try { return readlinkSync(`/proc/self/fd/${fd}`) } catch { return '' }
  }).filter((path) => path.startsWith(dir))
  await t.rejects(buildApp(loadConfig({ DATABASE_URL: join(dir, 'gatehouse.db'), JWT_SECRET: TEST_SECRET, LOG_LEVEL: 'silent', REDIS_URL: missingDatabase.href })),
    /Redis refused REDIS_URL/)
  t.ok(existsSync(join(dir, 'gatehouse.db')), 'the database was opened (and migrated) before Redis refused')
  t.same(heldOpen(), [], 'and is closed again: no file of it is held open')
})

t.test('a migration the database refuses is reported with the database\'s reason, not the statement', async (t) => {
  const file = join(t.testdir(), 'foreign.db')
  const Sqlite = (await import('better-sqlite3')).default
  const foreign = new Sqlite(file)
  foreign.exec('create table users (id integer primary key, login text)')
  foreign.close()
  const result = failedStart({ DATABASE_URL: `file:${file}`, PORT: '0' })
  t.equal(result.status, 1)
  t.match(result.stderr, /^Gatehouse could not start: Cannot open the database at file:.*foreign\.db: table `users` already exists\n$/)
  t.notMatch(result.stderr, /CREATE TABLE|Failed query/)
})

t.test('whole-number variables take digits only, and the rate limits at least 1', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  for (const bad of ['3.5', '1e3', '0x50', '+80']) {
    t.throws(() => loadConfig({ ...base, PORT: bad }), /PORT must be a whole number from 0 to 65535/, bad)
  }
  for (const name of ['RATE_LIMIT_IP_MAX', 'RATE_LIMIT_ACCOUNT_MAX']) {
    t.throws(() => loadConfig({ ...base, [name]: '0' }), new RegExp(`${name} must be a whole number from 1 to`), `${name}=0`)
  }
})

t.test('ADMIN_EMAIL and ADMIN_PASSWORD are set together or not at all', async (t) => {
  const base = { DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET }
  t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: 'ops@example.com' }), /ADMIN_EMAIL and ADMIN_PASSWORD must be set together/)
  t.throws(() => loadConfig({ ...base, ADMIN_PASSWORD: 'a long and uncommon admin passphrase' }), /ADMIN_EMAIL and ADMIN_PASSWORD must be set together/)
  for (const padded of ['a long and uncommon admin passphrase\n', ' a long and uncommon admin passphrase']) {
    t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: 'ops@example.com', ADMIN_PASSWORD: padded }), /ADMIN_PASSWORD has whitespace \(a newline\?\) before or after it/, JSON.stringify(padded))
  }
  // Compared as sign-up compares it, with the email normalised: the admin's own address is no password.
  t.throws(() => loadConfig({ ...base, ADMIN_EMAIL: 'Ops.Team@Example.com', ADMIN_PASSWORD: 'ops.team@example.com' }),
    /ADMIN_PASSWORD is refused: The password must not be the email address/)
  t.equal(loadConfig({ ...base, ADMIN_EMAIL: 'ops@example.com', ADMIN_PASSWORD: 'a long and uncommon admin passphrase' }).admin?.password, 'a long and uncommon admin passphrase')
})

t.test('a variable set to nothing (PORT= in an env file) takes its default', async (t) => {
  const config = loadConfig({ DATABASE_URL: ':memory:', JWT_SECRET: TEST_SECRET, PORT: '', HOST: ' ', LOG_LEVEL: '', JWT_ISSUER: '', ACCESS_TOKEN_TTL: '', RATE_LIMIT_IP_MAX: '' })
  t.equal(config.port, 3000)
  t.equal(config.host, '127.0.0.1')
  t.equal(config.logLevel, 'info')
  t.equal(config.jwt.issuer, 'gatehouse')
  t.equal(config.accessTokenTtl, 900)
  t.equal(config.rateLimit.ipMax, 30)
})

t.test('a Windows drive letter is a SQLite path, not a URL scheme', async (t) => {
  for (const path of ['C:\\gatehouse\\data\\g.db', 'd:/data/g.db']) {
    t.equal(loadConfig({ DATABASE_URL: path, JWT_SECRET: TEST_SECRET }).databaseUrl, path, path)
  }
})

t.test('a database or Redis URL in a message keeps no password, wherever the URL puts it', async (t) => {
  const cases: Array<[string, string]> = [
    ['postgres://u:s3cr3t@db:5432/g', 'postgres://u@db:5432/g'],
    ['postgres://u@db/g?password=s3cr3t&sslmode=require', 'postgres://u@db/g?password=redacted&sslmode=require'],
    ['postgres://u@db/g?sslpassword=s3cr3t', 'postgres://u@db/g?sslpassword=redacted'],
    ['postgres://u:p@ss@db/g', 'postgres://u@db/g'],
    // An @ and then a # (or ? or /) in the password: the parser's host is a piece of it.
    ['postgres://u:p@ss#s3cr3t@db:5432/g', 'postgres://…@db:5432/g'],
    ['postgres://u:p@ss?s3cr3t@db/g?password=s3cr3t', 'postgres://…@db/g?password=redacted'],
    ['redis://:p@ss/s3cr3t@cache:6379/0', 'redis://…@cache:6379/0'],
    // An @ of the URL's own: shown as usual, a password in a parameter redacted whatever it holds.
    ['postgres://u:s3cr3t@db/g?application_name=api@eu', 'postgres://u@db/g?application_name=api@eu'],
    ['postgres://u@db/g?password=s3cr3t@b', 'postgres://u@db/g?password=redacted'],
    // Where a password with a slash in it ends cannot be told: the scheme alone.
    ['postgres://u:pa/ss@db/g', 'postgres://…'],
    ['redis://:s3cr3t@cache:6379/0', 'redis://cache:6379/0'],
    ['postgresql://postgres@127.0.0.1:5432/test', 'postgresql://postgres@127.0.0.1:5432/test'],
    ['/var/lib/gatehouse/gatehouse.db', '/var/lib/gatehouse/gatehouse.db'],
    ['file:data/gatehouse.db', 'file:data/gatehouse.db']
  ]
  for (const [url, shown] of cases) t.equal(redactUrl(url), shown, url.replace(/s3cr3t|p@ss|pa\/ss/g, '<password>'))
})
