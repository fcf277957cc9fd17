// Migrations follow the connection's schema on PostgreSQL (README "Database"), so an operator can
// give Gatehouse a schema of its own in a shared database.
import Database from 'better-sqlite3'
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { createInterface } from 'node:readline'
import { PassThrough } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { MIGRATIONS_TABLE, openDatabase, pendingMigrations, unappliedMigrations } from '../src/db/index.ts'
import { ADVISORY_LOCKS } from '../src/db/postgres/open.ts'
import { TEST_ENV, TEST_PASSWORD, build, dbCount, freshPostgresUrl, signup } from './helper.ts'
import { POSTGRES_URL, postgresReachable } from './services.ts'

const MIGRATIONS = new URL('../migrations/', import.meta.url)
const migrationFiles = (dialect: 'postgres' | 'sqlite') => readdirSync(new URL(`${dialect}/`, MIGRATIONS)).filter((name) => name.endsWith('.sql')).sort()

const onPostgres = { skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}` }

/** A superuser connection to the database, closed when the test ends. */
async function adminOf (t: Test, databaseUrl: string): Promise<pg.Client> {
  const admin = new pg.Client({ connectionString: databaseUrl })
  await admin.connect()
  t.teardown(() => admin.end())
  return admin
}

t.test('the migrations are up to date with both schemas: drizzle-kit finds nothing to generate', async (t) => {
  const root = fileURLToPath(new URL('../', import.meta.url))
  const scratch = mkdtempSync(join(tmpdir(), 'gatehouse-migrations-'))
  t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
  for (const [dialect, drizzleDialect] of [['sqlite', 'sqlite'], ['postgres', 'postgresql']] as const) {
    const out = join(scratch, dialect)
    cpSync(fileURLToPath(new URL(`${dialect}/`, MIGRATIONS)), out, { recursive: true })
    // drizzle-kit reads --out relative to the working directory, even an absolute one.
    const generate = spawnSync(process.execPath, [join(root, 'node_modules/drizzle-kit/bin.cjs'), 'generate',
      '--dialect', drizzleDialect, '--schema', `./src/db/${dialect}/schema.ts`, '--out', relative(root, out)], { cwd: root, encoding: 'utf8' })
    t.equal(generate.status, 0, generate.stderr)
    t.match(generate.stdout, /No schema changes/, `${dialect}: run npm run db:generate after changing src/db/${dialect}/schema.ts`)
    t.same(readdirSync(out).filter((name) => name.endsWith('.sql')).sort(), migrationFiles(dialect), `${dialect}: no migration written`)
  }
})

t.test('no migration names a schema (drizzle-kit writes "public". into foreign keys: remove it)', async (t) => {
  for (const dialect of ['postgres', 'sqlite'] as const) {
    for (const file of migrationFiles(dialect)) {
      t.notMatch(readFileSync(new URL(`${dialect}/${file}`, MIGRATIONS), 'utf8'), /"public"\./, `${dialect}/${file}`)
    }
  }
})

t.test('on PostgreSQL the tables go into the connection\'s schema, beside unrelated tables of the same names', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const schema = `gatehouse_${randomBytes(4).toString('hex')}`
  const admin = await adminOf(t, databaseUrl)
  // Another application's users and sessions in public, which Gatehouse must not touch.
  await admin.query(`create schema ${schema}; create table public.users (id int); create table public.sessions (id int)`)
  const url = new URL(databaseUrl)
  url.searchParams.set('options', `-c search_path=${schema}`)

  const app = await build(t, { DATABASE_URL: url.toString() })
  const session = await signup(app)
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  t.equal(await dbCount(app, 'select count(*) from users'), 1)
  const { rows } = await admin.query<{ table: string, references: string }>(
    `select tc.table_name as table, ccu.table_schema || '.' || ccu.table_name as references
       from information_schema.table_constraints tc
       join information_schema.constraint_column_usage ccu using (constraint_schema, constraint_name)
      where tc.constraint_type = 'FOREIGN KEY' and tc.table_schema = $1 order by 1, 2`, [schema])
  t.same(rows.filter((row) => !row.references.startsWith(`${schema}.`)), [], 'every foreign key points into Gatehouse\'s schema')
  for (const expected of [['refresh_tokens', 'sessions'], ['sessions', 'users'], ['videos', 'users']]) {
    t.ok(rows.some((row) => row.table === expected[0] && row.references === `${schema}.${expected[1]}`), `${expected[0]} → ${expected[1]}`)
  }
  t.equal(Number((await admin.query('select count(*) from public.users')).rows[0].count), 0, 'the other users table is untouched')
})

/** A login role that owns schema `schema` and may not create schemas in the database. */
async function schemaOwner (t: Test, databaseUrl: string) {
  const role = `gatehouse_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: databaseUrl })
  await admin.connect()
  const database = new URL(databaseUrl).pathname.slice(1)
  await admin.query(`create role ${role} login; create schema ${role} authorization ${role};
    revoke create on database ${database} from public; revoke create on schema public from public`)
  t.teardown(async () => {
    await admin.query(`drop schema ${role} cascade; drop owned by ${role}; drop role ${role}`)
    await admin.end()
  })
  const url = new URL(databaseUrl)
  url.username = role
  url.searchParams.set('options', `-c search_path=${role}`)
  return { admin, schema: role, url: url.toString() }
}

const schemasOf = async (admin: pg.Client) => (await admin.query<{ name: string }>(
  "select nspname as name from pg_namespace where nspname not like 'pg\\_%' and nspname <> 'information_schema' order by 1")).rows.map((row) => row.name)

t.test('on PostgreSQL a role that owns only its schema, without CREATE on the database, can migrate and serve', onPostgres, async (t) => {
  const { admin, schema, url } = await schemaOwner(t, await freshPostgresUrl(POSTGRES_URL))
  const schemasBefore = await schemasOf(admin)
  await t.test('start, sign up, sign in', async (t) => {
    const app = await build(t, { DATABASE_URL: url })
    const session = await signup(app)
    const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: session.user.email, password: TEST_PASSWORD } })
    t.equal(login.statusCode, 200)
  })
  const { rows: [applied] } = await admin.query(`select count(*)::int as n from ${schema}."__drizzle_migrations"`)
  t.equal(applied.n, migrationFiles('postgres').length, 'every migration recorded in its schema')
  t.same(await schemasOf(admin), schemasBefore, 'no schema created')
})

t.test('on PostgreSQL a search_path with no existing schema stops the start with a clear message, creating nothing', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const admin = await adminOf(t, databaseUrl)
  await admin.query('drop schema public')
  const schemasBefore = await schemasOf(admin)
  const url = new URL(databaseUrl)
  url.searchParams.set('options', '-c search_path=nowhere')
  await t.rejects(build(t, { DATABASE_URL: url.toString() }),
    /Cannot open the database at .*: no schema on the search_path \(nowhere\) exists that this role may use: create it, grant USAGE and CREATE on it, or set search_path to one$/)
  t.same(await schemasOf(admin), schemasBefore, 'no schema created')
})

t.test('on PostgreSQL a failed migration leaves nothing behind, not even its bookkeeping table', onPostgres, async (t) => {
  const databaseUrl = await freshPostgresUrl(POSTGRES_URL)
  const admin = await adminOf(t, databaseUrl)
  // Another application's table where the newest migration creates its last one, after others.
  const newest = migrationFiles('postgres').at(-1)!
  const clash = [...readFileSync(new URL(`postgres/${newest}`, MIGRATIONS), 'utf8').matchAll(/CREATE TABLE "(\w+)"/g)].at(-1)![1]!
  await admin.query(`create table public.${clash} (other int)`)
  await t.rejects(build(t, { DATABASE_URL: databaseUrl }), new RegExp(`relation "${clash}" already exists`))
  const { rows } = await admin.query<{ name: string }>("select table_name as name from information_schema.tables where table_schema = 'public'")
  t.same(rows.map((row) => row.name), [clash], 'only the other application\'s table')
})

t.test('a migration older than the newest applied but never applied (merged late) stops the start, naming it', async (t) => {
  const journalOf = (dialect: 'sqlite' | 'postgres') =>
    (JSON.parse(readFileSync(new URL(`${dialect}/meta/_journal.json`, MIGRATIONS), 'utf8')) as { entries: Array<{ when: number, tag: string }> }).entries
  const url = `file:${join(t.testdir(), 'gatehouse.db')}`
  const journal = journalOf('sqlite')
  const [oldest, newest] = [journal[0]!, journal.at(-1)!]
  const database = await openDatabase(url)
  // As if the oldest migration had come in a merge after the database had applied the newer ones.
  await database.query(`delete from ${MIGRATIONS_TABLE} where created_at = ${oldest.when}`)
  await database.close()
  const refusal = `migration ${oldest.tag} was never applied, and is older than ${newest.tag}, which was: ` +
    'give it a later "when" than the others in migrations/sqlite/meta/_journal.json, so that it is applied after them'
  // Drizzle's rule alone would skip it for good: the start would record nothing and serve without its tables.
  await t.rejects(openDatabase(url), { message: `Cannot open the database at ${url}: ${refusal}` }, 'the start stops')
  await t.rejects(openDatabase(url), { message: `Cannot open the database at ${url}: ${refusal}` }, 'and again: nothing was recorded meanwhile')

  // On PostgreSQL, the oldest migration skipped behind one this checkout does not have: named by its
  // time. However many migrations there are (a fork adds its own).
  const postgresJournal = journalOf('postgres')
  const later = postgresJournal.at(-1)!.when + 1000
  const another = { hash: 'another', created_at: String(later) }
  const postgresApplied = pendingMigrations('postgres', []).map((migration) => ({ hash: migration.hash, created_at: String(migration.folderMillis) }))
  t.throws(() => pendingMigrations('postgres', [...postgresApplied.slice(1), another]),
    { message: `migration ${postgresJournal[0]!.tag} was never applied, and is older than the migration of ${new Date(later).toISOString()}, which was: give it a later "when" than the others in migrations/postgres/meta/_journal.json, so that it is applied after them` })
  t.same(pendingMigrations('postgres', [...postgresApplied, another]), [], 'all applied: nothing pending')

  // Given a later time as the refusal says, a migration is applied where it was missing, and known by
  // its content where it was applied under its old time: not applied again.
  const sqliteMigrations = pendingMigrations('sqlite', [])
  const underOldTime = sqliteMigrations.map((migration, index) => ({ hash: migration.hash, created_at: index === 0 ? migration.folderMillis - 5000 : migration.folderMillis }))
  t.same(pendingMigrations('sqlite', underOldTime), [], 'recorded under another time, known by its hash')
  const missing = sqliteMigrations.slice(1).map((migration) => ({ hash: migration.hash, created_at: migration.folderMillis }))
  t.throws(() => pendingMigrations('sqlite', missing), /^migration /, 'recorded by neither: refused, as above')

  // A column added, dropped, then added again: the third migration repeats the first's SQL. A row
  // records one migration, so the first's row does not stand for the third.
  const journalNames = { path: 'meta/_journal.json', nameOf: String }
  const migration = (folderMillis: number, hash: string) => ({ sql: [], bps: true, folderMillis, hash })
  const [add, drop, addAgain] = [migration(1000, 'add'), migration(2000, 'drop'), migration(3000, 'add')]
  const row = (time: number, hash: string) => ({ hash, created_at: String(time) })
  t.same(unappliedMigrations([add, drop, addAgain], [row(1000, 'add'), row(2000, 'drop')], journalNames), [addAgain], 'the repeat is applied')
  t.same(unappliedMigrations([add, drop, addAgain], [row(1000, 'add'), row(2000, 'drop'), row(3000, 'add')], journalNames), [], 'then recorded')
  // The repeat given a later time after it was applied: its row, of a time no longer in the journal, stands for it.
  const redated = migration(4000, 'add')
  t.same(unappliedMigrations([add, drop, redated], [row(1000, 'add'), row(2000, 'drop'), row(3000, 'add')], journalNames), [], 're-dated, known by its hash')
  t.same(unappliedMigrations([add, drop, redated], [row(1000, 'add'), row(2000, 'drop')], journalNames), [redated], 're-dated where it was missing: applied')
})

t.test('on SQLite a start waits for another process\'s migration of the same file, then finds it done', async (t) => {
  const file = join(t.testdir(), 'gatehouse.db')
  // Another instance, migrating: it holds the write lock.
  const other = new Database(file)
  other.pragma('journal_mode = WAL')
  other.exec('BEGIN IMMEDIATE')
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/db-migrate.ts'], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    env: { ...process.env, DATABASE_URL: `file:${file}` }
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  let done = false
  exited.then(() => { done = true }, () => {})

  // Long past a request's 1 s busy timeout, and past the child's start-up.
  await sleep(5000)
  t.notOk(done, `still waiting for the lock (${stderr.trim()})`)
  other.exec('COMMIT')
  other.close()
  t.equal(await exited, 0, stderr)

  const migrated = new Database(file, { readonly: true })
  t.teardown(() => migrated.close())
  const applied = migrated.prepare('select count(*) as n from __drizzle_migrations').get() as { n: number }
  t.equal(applied.n, migrationFiles('sqlite').length, 'every migration applied once')
  t.ok(migrated.prepare("select 1 from sqlite_master where type = 'table' and name = 'users'").get(), 'the tables exist')
})

/**
 * Instances of the app that have loaded their code and open the SQLite file named on each line of
 * their stdin the moment it arrives, answering "ok" or why not: every instance gets the same line
 * within a millisecond or so, which their start-ups (a second or two each) would otherwise spread out.
 */
const OPENER = `
import { createInterface } from 'node:readline'
import { openDatabase } from './src/db/index.ts'
await import('./src/db/sqlite/open.ts')
console.log('ready')
for await (const file of createInterface({ input: process.stdin })) {
  try {
    await (await openDatabase('file:' + file)).close()
    console.log('ok')
  } catch (error) {
    console.log('failed: ' + error.message)
  }
}
`

function opener (t: Test) {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', OPENER], {
    cwd: fileURLToPath(new URL('..', import.meta.url)),
    stdio: ['pipe', 'pipe', 'inherit']
  })
  t.teardown(() => { child.kill() })
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]()
  const exited = new Promise((resolve) => child.on('close', resolve))
  return {
    child,
    exited,
    async answer () { return (await lines.next()).value as string | undefined }
  }
}

t.test('on SQLite instances starting at once on a database with a migration pending all start, and apply it once', async (t) => {
  const migrations = pendingMigrations('sqlite', [])
  const added = [...migrations.at(-1)!.sql.join('\n').matchAll(/CREATE TABLE `(\w+)`/g)].map((match) => match[1]!)
  const instances = Array.from({ length: 3 }, () => opener(t))
  t.same(await Promise.all(instances.map((instance) => instance.answer())), ['ready', 'ready', 'ready'], 'every instance loaded its code')
  const dir = t.testdir()
  // An upgrade, not a new file: on a new file the transaction's first statement (creating the
  // bookkeeping table) is a write, which waits for the lock. Here each instance first reads which
  // migrations are pending; only a transaction that takes the write lock before that read (BEGIN
  // IMMEDIATE) keeps the others from failing at their first write ("database is locked"). Under a
  // deferred BEGIN they collided in 15 to 55 % of the rounds of a run on a loaded two-core machine:
  // fifty rounds (about 2 s) miss it in fewer than one run in a thousand.
  for (let round = 1; round <= 50; round++) {
    const file = join(dir, `round-${round}.db`)
    // As the release before the newest migration left it, recorded as Drizzle's migrator records.
    const older = new Database(file)
    older.pragma('journal_mode = WAL')
    older.exec(`CREATE TABLE ${MIGRATIONS_TABLE} (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at numeric)`)
    for (const migration of migrations.slice(0, -1)) {
      for (const statement of migration.sql) older.exec(statement)
      older.prepare(`INSERT INTO ${MIGRATIONS_TABLE} (hash, created_at) VALUES (?, ?)`).run(migration.hash, migration.folderMillis)
    }
    older.close()

    for (const instance of instances) instance.child.stdin.write(`${file}\n`)
    t.same(await Promise.all(instances.map((instance) => instance.answer())), ['ok', 'ok', 'ok'], `round ${round}: every instance started`)
    const migrated = new Database(file, { readonly: true })
    t.same(migrated.prepare(`select hash from ${MIGRATIONS_TABLE} order by created_at`).pluck().all(), migrations.map((migration) => migration.hash),
      `round ${round}: each migration recorded once`)
    const tables = migrated.prepare("select name from sqlite_master where type = 'table'").pluck().all()
    t.same(added.filter((table) => !tables.includes(table)), [], `round ${round}: the newest migration's tables exist`)
    migrated.close()
  }
  for (const instance of instances) instance.child.stdin.end()
  t.same(await Promise.all(instances.map((instance) => instance.exited)), [0, 0, 0], 'and end with their input')
})

t.test('on SQLite instances starting at once on a new file all start, and migrate it once', async (t) => {
  const migrations = pendingMigrations('sqlite', [])
  const instances = Array.from({ length: 3 }, () => opener(t))
  t.same(await Promise.all(instances.map((instance) => instance.answer())), ['ready', 'ready', 'ready'], 'every instance loaded its code')
  const dir = t.testdir()
  // Each switches the new file to WAL first, which SQLite may refuse one of them at once (busy, with
  // no wait) while another switches it: a few rounds in a hundred, without the retry.
  for (let round = 1; round <= 100; round++) {
    const file = join(dir, `round-${round}.db`)
    for (const instance of instances) instance.child.stdin.write(`${file}\n`)
    t.same(await Promise.all(instances.map((instance) => instance.answer())), ['ok', 'ok', 'ok'], `round ${round}: every instance started`)
    const migrated = new Database(file, { readonly: true })
    t.equal(migrated.pragma('journal_mode', { simple: true }), 'wal', `round ${round}: in WAL mode`)
    t.same(migrated.prepare(`select hash from ${MIGRATIONS_TABLE} order by created_at`).pluck().all(), migrations.map((migration) => migration.hash),
      `round ${round}: each migration recorded once`)
    migrated.close()
  }
  for (const instance of instances) instance.child.stdin.end()
  t.same(await Promise.all(instances.map((instance) => instance.exited)), [0, 0, 0], 'and end with their input')
})

t.test('on PostgreSQL a start waits for another instance\'s migration lock, then migrates', {
  skip: await postgresReachable() ? false : `PostgreSQL is not reachable at ${POSTGRES_URL}`
}, async (t) => {
  const url = await freshPostgresUrl(POSTGRES_URL)
  const holder = new pg.Client({ connectionString: url })
  await holder.connect()
  t.teardown(() => holder.end())
  await holder.query('select pg_advisory_lock($1)', [ADVISORY_LOCKS.migrations])
  let opened = false
  let waitsTold = 0
  const opening = openDatabase(url, { onMigrationWait: () => { waitsTold++ } }).then((database) => { opened = true; return database })
  // The app's start says why it waits, in its log.
  const log = new PassThrough()
  let logged = ''
  log.on('data', (chunk) => { logged += chunk })
  const app = buildApp(loadConfig({ ...TEST_ENV, DATABASE_URL: url, LOG_LEVEL: 'info' }), { logStream: log })
  await sleep(1500)
  t.equal(opened, false, 'still waiting for the lock')
  t.equal(waitsTold, 1, 'and said so, once')
  t.match(logged, /"msg":"waiting for another instance to finish migrating the database"/, 'the app logs why its start waits')
  const { rows: [before] } = await holder.query("select count(*)::int as n from information_schema.tables where table_schema = current_schema() and table_name = 'users'")
  t.equal(before.n, 0, 'and nothing migrated meanwhile')
  await holder.query('select pg_advisory_unlock($1)', [ADVISORY_LOCKS.migrations])
  const database = await opening
  t.teardown(() => database.close())
  t.same(await database.query("select count(*)::int as n from information_schema.tables where table_schema = current_schema() and table_name = 'users'"), [{ n: 1 }])
  await (await app).close()
  // With no one holding the lock, nothing is said.
  const unheld = await openDatabase(url, { onMigrationWait: () => { waitsTold++ } })
  await unheld.close()
  t.equal(waitsTold, 1, 'a start that takes the lock at once says nothing')
})
