import argon2 from 'argon2'
import Database from 'better-sqlite3'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t, { type Test } from 'tap'
import { ADVISORY_LOCKS } from '../src/db/postgres/open.ts'
import { TEST_PASSWORD, build, freshPostgresUrl } from './helper.ts'
import { POSTGRES_URL, postgresReachable } from './services.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
// About fifty CLI processes, each paying tsx's start-up (1 to 3 s on a busy two-core machine):
// more than the 120 s .taprc gives a file.
t.setTimeout(300_000)

interface Run { status: number | null, stdout: string, stderr: string }

/**
 * Runs a CLI script as `npm run` would, against the given SQLite file (or database URL), with
 * `input` on stdin. Asynchronous (not spawnSync) so independent runs can overlap: each pays tsx's
 * start-up.
 */
function runCli (script: string, database: string, args: string[] = [], input = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `src/cli/${script}.ts`, ...args], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: database.includes('://') ? database : `file:${database}` },
      timeout: 60_000
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout, stderr }))
    child.stdin.end(input)
  })
}

interface UserRow { id: string, email: string, name: string | null, roles: string, password_hash: string, disabled: number }

/** Reads the database the CLI wrote, with a connection of our own. */
function query<T> (t: Test, databaseFile: string, sql: string, ...params: unknown[]): T[] {
  const db = new Database(databaseFile, { readonly: true, fileMustExist: true })
  try {
    return db.prepare(sql).all(...params) as T[]
  } finally {
    db.close()
  }
}
const users = (t: Test, file: string) => query<UserRow>(t, file, 'select * from users order by email')

t.test('user:create makes an account with the given roles from a password on stdin', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')

  const created = await runCli('user-create', file, ['--email', '  Ada@Example.COM ', '--role', 'admin', '--name', 'Ada'], `${TEST_PASSWORD}\n`)
  t.equal(created.status, 0, created.stderr)
  t.match(created.stdout, new RegExp(`^created ada@example\\.com \\([0-9a-f-]{36}\\) with roles user, admin in ${file}\n$`), 'naming the database it wrote to')
  t.notMatch(created.stdout + created.stderr, TEST_PASSWORD, 'the password is never printed')

  const [row, ...rest] = users(t, file)
  t.equal(rest.length, 0, 'one account')
  t.equal(row!.email, 'ada@example.com', 'the email is normalised')
  t.equal(row!.name, 'Ada')
  t.same(JSON.parse(row!.roles), ['user', 'admin'])
  t.equal(row!.disabled, 0)
  const phc = /^\$argon2id\$v=19\$([^$]+)\$/.exec(row!.password_hash)
  t.ok(phc, 'an argon2id v1.3 hash')
  const params = Object.fromEntries(phc![1]!.split(',').map((pair) => pair.split('=')))
  t.ok(Number(params.m) >= 19_456 && Number(params.t) >= 2 && Number(params.p) >= 1, `OWASP parameters or stronger: ${phc![1]}`)
  t.ok(await argon2.verify(row!.password_hash, TEST_PASSWORD), 'the hash is of the password given on stdin')

  const app = await build(t, { DATABASE_URL: `file:${file}` })
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: 'ada@example.com', password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200, 'the account signs in over HTTP')
  t.same(login.json().user.roles, ['user', 'admin'])
  await app.close()

  const duplicate = await runCli('user-create', file, ['--email', 'ADA@example.com'], `${TEST_PASSWORD}\n`)
  t.equal(duplicate.status, 1, 'a taken email (in any case) fails')
  t.match(duplicate.stderr, /already exists/)
  t.equal(users(t, file).length, 1)
})

// At a terminal the password is asked for once and never echoed. `script` (util-linux) gives the
// tool a pseudo-terminal; the password is typed only once the prompt shows, as a person would.
t.test('user:create at a terminal prompts once and does not echo the password', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const command = [process.execPath, '--import', 'tsx', 'src/cli/user-create.ts', '--email', 'tty@example.com']
    .map((word) => `'${word}'`).join(' ')
  const run = await new Promise<{ status: number | null, output: string }>((resolve, reject) => {
    const child = spawn('script', ['-qec', command, '/dev/null'], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: `file:${file}` },
      timeout: 60_000
    })
    let output = ''
    let typed = false
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      output += chunk
      if (!typed && output.includes('Password: ')) {
        typed = true
        child.stdin.write(`${TEST_PASSWORD}\r`)
      }
    })
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, output }))
  })
  t.equal(run.status, 0, run.output)
  t.equal(run.output.split('Password: ').length - 1, 1, 'one prompt')
  for (const word of TEST_PASSWORD.split(' ')) t.notOk(run.output.includes(word), `"${word}" of the password is not echoed`)
  t.match(run.output, /created tty@example\.com/)
  const [row] = users(t, file)
  t.ok(await argon2.verify(row!.password_hash, TEST_PASSWORD), 'the hash is of the password typed')
})

t.test('user:create combines repeated --role flags, canonically ordered', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const combined = await runCli('user-create', file, ['--email', 'dev@example.com', '--role', 'developer', '--role', 'member'], `${TEST_PASSWORD}\n`)
  t.equal(combined.status, 0, combined.stderr)
  const plain = await runCli('user-create', file, ['--email', 'plain@example.com'], `${TEST_PASSWORD}\n`)
  t.equal(plain.status, 0, plain.stderr)
  const rows = users(t, file)
  t.same(rows.map((row) => [row.email, JSON.parse(row.roles)]), [
    ['dev@example.com', ['user', 'member', 'developer']],
    ['plain@example.com', ['user']]
  ])
})

t.test('user:create never repeats an argument it does not know, which may be the password', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const cases: Array<[string, string[], RegExp]> = [
    ['a stray argument', ['--email', 'ada@example.com', 'Stray-Secret-98x'], /^user:create takes only the options below/],
    ['an unknown option', ['--email', 'ada@example.com', '--Stray-Secret-98x'], /^user:create takes only the options below/],
    ['an unknown option with a value', ['--email', 'ada@example.com', '--Stray-Secret-98x=more'], /^user:create takes only the options below/],
    ['an unknown role', ['--email', 'ada@example.com', '--role', 'Stray-Secret-98x'], /^unknown role given to --role/]
  ]
  // Refused before the database is opened, so the runs may overlap.
  const results = await Promise.all(cases.map(([, args]) => runCli('user-create', file, args, `${TEST_PASSWORD}\n`)))
  for (const [index, [label, , message]] of cases.entries()) {
    const result = results[index]!
    t.equal(result.status, 1, label)
    t.match(result.stderr, message, label)
    t.match(result.stderr, /\(what was given is not shown: it may be a password\)\nusage: /, label)
    t.notOk(`${result.stdout}${result.stderr}`.includes('Stray-Secret-98x'), `${label}: it appears nowhere`)
  }
  const missingValue = await runCli('user-create', file, ['--email'], '')
  t.equal(missingValue.status, 1)
  t.match(missingValue.stderr, /^Option '--email <value>' argument missing\nusage: /, 'a missing value names our own option')
  // What the API refuses, and an option given twice, which would otherwise keep the last silently.
  const refusals = [
    ['an empty name', ['--email', 'ada@example.com', '--name', ''], /^--name must be 1 to 100 characters\b/],
    ['a 101-character name', ['--email', 'ada@example.com', '--name', 'n'.repeat(101)], /^--name must be 1 to 100 characters\b/],
    ['a name of spaces', ['--email', 'ada@example.com', '--name', '  '], /^--name must be 1 to 100 characters, at least one visible, none a control, line-break, text-direction or hidden tag character\nusage: /],
    ['a name with a terminal escape', ['--email', 'ada@example.com', '--name', 'Ada\u001b[2J'], /^--name must be 1 to 100 characters, at least one visible, none a control, line-break, text-direction or hidden tag character\nusage: /],
    ['two emails', ['--email', 'ada@example.com', '--email', 'grace@example.com'], /^--email given more than once\nusage: /],
    ['two names', ['--email', 'ada@example.com', '--name', 'Ada', '--name', 'Grace'], /^--name given more than once\nusage: /]
  ] as const
  const refused = await Promise.all(refusals.map(([, args]) => runCli('user-create', file, [...args], `${TEST_PASSWORD}\n`)))
  for (const [index, [label, , message]] of refusals.entries()) {
    t.equal(refused[index]!.status, 1, label)
    t.match(refused[index]!.stderr, message, label)
  }
  t.notOk(existsSync(file), 'argument errors stop before the database is opened')
  const longest = await runCli('user-create', file, ['--email', 'ada@example.com', '--name', '🦄'.repeat(100)], `${TEST_PASSWORD}\n`)
  t.equal(longest.status, 0, `a 100-character name, counted in characters as the API counts them: ${longest.stderr}`)
})

t.test('a database failure ends user:create and db:seed with one line: no stack, no query parameters', async (t) => {
  const targets: Array<{ name: string, database: string, refuse: (table: string) => Promise<void> }> = []
  const file = join(t.testdir(), 'gatehouse.db')
  targets.push({
    name: 'SQLite',
    database: file,
    async refuse (table) {
      const sqlite = new Database(file)
      sqlite.exec(`create trigger refuse_${table} before insert on ${table} begin select raise(abort, 'refused by test'); end`)
      sqlite.close()
    }
  })
  if (await postgresReachable()) {
    const url = await freshPostgresUrl(POSTGRES_URL)
    targets.push({
      name: 'PostgreSQL',
      database: url,
      async refuse (table) {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        await client.query("create or replace function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused by test'; end $$")
        await client.query(`create trigger refuse_${table} before insert on ${table} for each row execute function refuse()`)
        await client.end()
      }
    })
  }
  for (const { name, database, refuse } of targets) {
    t.equal((await runCli('db-migrate', database)).status, 0)
    await refuse('users')
    await refuse('videos')
    const created = await runCli('user-create', database, ['--email', 'ada@example.com', '--name', 'Ada Lovelace'], `${TEST_PASSWORD}\n`)
    t.equal(created.status, 1, `${name}: user:create fails`)
    t.equal(created.stderr, 'could not create the user: refused by test\n', `${name}: one line saying why`)
    const seeded = await runCli('db-seed', database)
    t.equal(seeded.status, 1, `${name}: db:seed fails`)
    t.equal(seeded.stderr, 'could not seed: refused by test\n', `${name}: one line saying why`)
  }
})

t.test('user:create refuses bad arguments and weak passwords with exit 1', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const input = `${TEST_PASSWORD}\n`

  const [unknownRole, noEmail, unknownFlag, passwordArgument, help] = await Promise.all([
    runCli('user-create', file, ['--email', 'x@example.com', '--role', 'superuser'], input),
    runCli('user-create', file, ['--role', 'admin'], input),
    runCli('user-create', file, ['--email', 'x@example.com', '--admin'], input),
    // A password on the command line is visible in `ps` and shell history: not an option.
    runCli('user-create', file, ['--email', 'x@example.com', '--password', TEST_PASSWORD], input),
    runCli('user-create', file, ['--help'], '')
  ])
  t.equal(unknownRole.status, 1)
  t.match(unknownRole.stderr, /unknown role given to --role/)
  t.match(unknownRole.stderr, /usage: npm run user:create/)
  t.equal(unknownRole.stdout, '')
  t.equal(noEmail.status, 1)
  t.match(noEmail.stderr, /usage:/)
  t.equal(unknownFlag.status, 1)
  t.match(unknownFlag.stderr, /usage:/)
  t.equal(passwordArgument.status, 1)
  t.match(passwordArgument.stderr, /takes only the options below/)
  t.notOk(passwordArgument.stderr.includes(TEST_PASSWORD), 'the password given as an argument appears nowhere')
  t.equal(help.status, 0)
  t.match(help.stdout, /^usage: npm run user:create -- --email EMAIL/)
  t.match(help.stdout, /read as one line from stdin/)
  t.equal(help.stderr, '')
  t.notOk(existsSync(file), 'argument errors stop before the database is opened')

  const weak: Array<[string, string]> = [
    ['too short', 'Abc1234'],
    ['empty stdin', ''],
    ['equal to the email', 'X@Example.com'],
    ['a common password', 'qwertyuiop']
  ]
  // The first run creates and migrates the database; the others may then overlap.
  const [first, ...others] = weak
  const runs = [
    await runCli('user-create', file, ['--email', 'x@example.com', '--role', 'admin'], `${first![1]}\n`),
    ...await Promise.all(others.map(([, password]) =>
      runCli('user-create', file, ['--email', 'x@example.com', '--role', 'admin'], `${password}\n`)))
  ]
  for (const [index, [label, password]] of weak.entries()) {
    const refused = runs[index]!
    t.equal(refused.status, 1, label)
    t.match(refused.stderr, /password/i, `${label}: says why`)
    if (password) t.notMatch(refused.stdout + refused.stderr, password, `${label}: the password is not echoed`)
  }
  t.same(users(t, file), [], 'no account was created')
})

t.test('db:seed adds free and member-only videos and clothes once', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const counts = () => ({
    free: query<{ n: number }>(t, file, 'select count(*) as n from videos where is_member_only = 0')[0]!.n,
    member: query<{ n: number }>(t, file, 'select count(*) as n from videos where is_member_only = 1')[0]!.n,
    clothes: query<{ n: number }>(t, file, 'select count(*) as n from clothes')[0]!.n
  })

  const first = await runCli('db-seed', file)
  t.equal(first.status, 0, first.stderr)
  t.match(first.stdout, /videos: \d+ added; clothes: \d+ added/)
  const seeded = counts()
  t.ok(seeded.free > 0, 'free videos')
  t.ok(seeded.member > 0, 'member-only videos')
  t.ok(seeded.clothes > 0, 'clothes')
  t.same(query(t, file, 'select count(*) as n from videos where user_id is not null'), [{ n: 0 }], 'seeded videos have no owner')
  const prices = query<{ price: number }>(t, file, 'select price from clothes')
  t.ok(prices.every(({ price }) => Number.isInteger(price) && price >= 0), 'prices are integer cents')

  const second = await runCli('db-seed', file)
  t.equal(second.status, 0, second.stderr)
  t.match(second.stdout, /videos: already present; clothes: already present/)
  t.same(counts(), seeded, 'a second run adds nothing')

  const app = await build(t, { DATABASE_URL: `file:${file}` })
  const free = await app.inject({ url: '/videos' })
  t.equal(free.json().length, seeded.free, 'the API lists the seeded free videos')
  t.ok(free.json().every((video: { is_member_only: boolean, user_id: string | null }) => !video.is_member_only && video.user_id === null))
  await app.close()
})

t.test('the CLI tools say in one line why a database cannot be opened', async (t) => {
  const runs = await Promise.all([
    runCli('db-migrate', 'postgres://postgres:hunter2@127.0.0.1:1/gatehouse'),
    runCli('user-create', 'postgres://postgres:hunter2@127.0.0.1:1/gatehouse', ['--email', 'ada@example.com'], `${TEST_PASSWORD}\n`),
    runCli('db-seed', 'postgress://postgres@127.0.0.1:5432/gatehouse')
  ])
  for (const [index, run] of runs.entries()) {
    t.equal(run.status, 1, `run ${index}`)
    t.notMatch(run.stderr, /\n\s+at /, 'no stack trace')
    t.notMatch(run.stderr, /hunter2/, 'no password')
  }
  t.match(runs[0]!.stderr, /^Cannot open the database at postgres:\/\/postgres@127\.0\.0\.1:1\/gatehouse: connect ECONNREFUSED/)
  t.match(runs[1]!.stderr, /^Cannot open the database at postgres:\/\/postgres@127\.0\.0\.1:1\/gatehouse/)
  t.match(runs[2]!.stderr, /DATABASE_URL must be postgres:\/\/… \(or postgresql:\/\/…\) for PostgreSQL, or file:PATH or a path for SQLite \(got a "postgress:" URL that is neither\)/)
  t.notOk(existsSync(join(ROOT, 'postgress:')), 'no SQLite file named after the typo')
})

t.test('db:seed runs at the same moment seed once, on SQLite and on PostgreSQL', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const databases: Array<[string, string, (sql: string) => Promise<number>]> = [
    ['SQLite', file, async (sql) => query<{ n: number }>(t, file, sql)[0]!.n]
  ]
  if (await postgresReachable()) {
    const url = await freshPostgresUrl(POSTGRES_URL)
    databases.push(['PostgreSQL', url, async (sql) => {
      const client = new pg.Client({ connectionString: url })
      await client.connect()
      try {
        return Number((await client.query(sql)).rows[0].n)
      } finally {
        await client.end()
      }
    }])
  } else {
    t.comment('PostgreSQL not reachable: SQLite only')
  }
  for (const [label, database, count] of databases) {
    const runs = await Promise.all(Array.from({ length: 4 }, () => runCli('db-seed', database)))
    for (const run of runs) t.equal(run.status, 0, `${label}: ${run.stderr}`)
    t.equal(runs.filter((run) => /videos: \d+ added; clothes: \d+ added/.test(run.stdout)).length, 1, `${label}: one run seeded`)
    t.equal(await count('select count(*) as n from videos'), 5, `${label}: the videos once`)
    t.equal(await count('select count(*) as n from clothes'), 5, `${label}: the clothes once`)
  }
})

t.test('on PostgreSQL, db:seed waits for a seed in progress elsewhere and then adds only what is missing', { skip: !await postgresReachable() && 'PostgreSQL not reachable' }, async (t) => {
  const url = await freshPostgresUrl(POSTGRES_URL)
  const migrated = await runCli('db-migrate', url)
  t.equal(migrated.status, 0, migrated.stderr)
  const other = new pg.Client({ connectionString: url })
  const observer = new pg.Client({ connectionString: url })
  await Promise.all([other.connect(), observer.connect()])
  t.teardown(() => Promise.all([other.end(), observer.end()]))

  // Another seed, midway: it holds the seed lock and has written a video, not yet committed.
  await other.query('begin')
  await other.query('select pg_advisory_xact_lock($1)', [ADVISORY_LOCKS.seed])
  await other.query(`insert into videos (id, title, author, url, created_at, updated_at)
    values ($1, 'Seeded elsewhere', 'Someone', 'https://videos.example.com/x.mp4', now(), now())`, [randomUUID()])

  const child = { exited: false }
  const seed = runCli('db-seed', url).finally(() => { child.exited = true })
  const lockWaits = async () => Number((await observer.query(
    "select count(*) as n from pg_locks where locktype = 'advisory' and not granted and database = (select oid from pg_database where datname = current_database())"
  )).rows[0].n)
  const deadline = Date.now() + 30_000
  let waited = false
  while (!child.exited && !waited && Date.now() < deadline) {
    waited = await lockWaits() > 0
    if (!waited) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.ok(waited, 'the seed waits for the lock instead of reading the tables as empty')
  await other.query('commit')

  const run = await seed
  t.equal(run.status, 0, run.stderr)
  t.match(run.stdout, /videos: already present; clothes: 5 added/)
  const count = async (table: string) => Number((await observer.query(`select count(*) as n from ${table}`)).rows[0].n)
  t.equal(await count('videos'), 1, 'no video added beside the other seed\'s')
  t.equal(await count('clothes'), 5)
})

t.test('user:create refuses what is not an email, and a password equal to the email however it is typed', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const notEmail = await runCli('user-create', file, ['--email', 'not-an-email'], `${TEST_PASSWORD}\n`)
  t.equal(notEmail.status, 1)
  t.equal(notEmail.stderr, '"not-an-email" is not an email address with at most 64 characters before the @\n')
  t.equal(notEmail.stdout, '')
  const longLocalPart = await runCli('user-create', file, ['--email', `${'a'.repeat(65)}@example.com`], `${TEST_PASSWORD}\n`)
  t.equal(longLocalPart.status, 1)
  t.match(longLocalPart.stderr, /is not an email address with at most 64 characters before the @\n$/)
  const emailAsPassword = await runCli('user-create', file, ['--email', 'Grace.Hopper@Example.com'], 'grace.hopper@example.com\n')
  t.equal(emailAsPassword.status, 1, 'the email, in any case, is no password')
  t.match(emailAsPassword.stderr, /must not be the email address/)
  t.same(users(t, file).map((row) => row.email), [], 'no account was created')
  const created = await runCli('user-create', file, ['--email', ' Grace.Hopper@Example.com '], `${TEST_PASSWORD}\n`)
  t.equal(created.status, 0, created.stderr)
  t.same(users(t, file).map((row) => row.email), ['grace.hopper@example.com'], 'stored normalised')
})

t.test('db:seed counts member-only videos as videos present', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  const app = await build(t, { DATABASE_URL: `file:${file}` })
  await app.videosRepository.seed({ title: 'Ours', author: 'Us', url: 'https://videos.example.com/ours.mp4', isMemberOnly: true })
  await app.close()
  const seeded = await runCli('db-seed', file)
  t.equal(seeded.status, 0, seeded.stderr)
  t.equal(seeded.stdout, `videos: already present; clothes: 5 added; in ${file}\n`, 'naming the database it wrote to')
  const db = new Database(file, { readonly: true })
  t.same(db.prepare('select title from videos').all(), [{ title: 'Ours' }], 'no demo video beside a member-only one')
  db.close()
})

t.test('db:migrate names a SQLite file by the path it resolved to, not as DATABASE_URL wrote it', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  // Relative to the folder the tool runs in (the project's), through a detour.
  const migrated = await runCli('db-migrate', `src/../${relative(ROOT, file)}`)
  t.equal(migrated.status, 0, migrated.stderr)
  t.equal(migrated.stdout, `Migrations applied to ${file}\n`)
  t.same(query(t, file, 'select count(*) as n from users'), [{ n: 0 }], 'the file it names holds the tables')
})

t.test('db:migrate does not print the database password', { skip: !await postgresReachable() && 'PostgreSQL not reachable' }, async (t) => {
  const url = new URL(await freshPostgresUrl(POSTGRES_URL))
  // The test server's own password if it has one (a made-up one is ignored under trust auth).
  const secret = url.password || 'hunter2'
  url.password = secret
  const migrated = await runCli('db-migrate', url.toString())
  t.equal(migrated.status, 0, migrated.stderr)
  url.password = ''
  t.equal(migrated.stdout, `Migrations applied to ${url.toString()}\n`)
  t.notOk((migrated.stdout + migrated.stderr).includes(`:${secret}@`), 'no password')
})
