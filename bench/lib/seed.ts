// A throw-away database for one app instance: the real migrations and demo data through the
// project's own CLIs, then N users inserted directly, all sharing one precomputed argon2id hash
// (hashing 100,000 passwords would take an hour). SQLite: a file in the run's temporary folder,
// users in one transaction. PostgreSQL: a fresh database on the given server, users in batched
// multi-row inserts, dropped again when the run ends.
import Database from 'better-sqlite3'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { createDatabase, databaseCpu, dropDatabase, type DatabaseCpu } from './postgres.ts'
import { ROOT } from './processes.ts'

const run = promisify(execFile)

export const BENCH_PASSWORD = 'bench-password-of-some-length'
/** Every seeded user is a member, so the member-only route is open to all of them. */
const ROLES = ['user', 'member']

export const emailOf = (index: number) => `bench-user-${index}@example.com`

/** The columns the bench fills; any other required column without a default stops the run. */
const OURS = ['id', 'email', 'name', 'roles', 'password_hash', 'disabled', 'created_at', 'updated_at']

async function cli (script: string, databaseUrl: string) {
  await run(process.execPath, ['--import', 'tsx', script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', DATABASE_URL: databaseUrl, NODE_ENV: 'production' }
  })
}

/** Migrations, then the demo videos (two member-only) and clothes, so the list routes answer real rows. */
async function migrateAndSeedDemo (url: string) {
  await cli('src/cli/db-migrate.ts', url)
  await cli('src/cli/db-seed.ts', url)
}

function checkColumns (columns: Array<{ name: string, notNull: boolean, hasDefault: boolean }>) {
  const missing = columns.filter((column) => !OURS.includes(column.name) && column.notNull && !column.hasDefault)
  if (missing.length > 0) {
    throw new Error(`users has required columns the bench does not fill: ${missing.map((c) => c.name).join(', ')} (update bench/lib/seed.ts)`)
  }
}

export type DatabaseKind = 'sqlite' | 'postgres'
export const DATABASE_NAMES: Record<DatabaseKind, string> = { sqlite: 'SQLite', postgres: 'PostgreSQL' }

export interface SeededDatabase {
  kind: DatabaseKind
  /** DATABASE_URL for the app. */
  url: string
  /** The SQLite file (SQLite only). */
  path?: string
  users: number
  seedSeconds: number
  /** CPU spent by the database server for this database (PostgreSQL only; SQLite runs inside the app). */
  cpu?: DatabaseCpu
  /** Removes the database (PostgreSQL; the SQLite file goes with the run's folder). */
  drop (): Promise<void>
}

export interface DatabaseChoice {
  kind: DatabaseKind
  /** PostgreSQL: a URL of an existing database on the server, used to create and drop the bench's own. */
  adminUrl?: string
}

export function prepareDatabase (choice: DatabaseChoice, dir: string, name: string, users: number, passwordHash: string): Promise<SeededDatabase> {
  return choice.kind === 'postgres'
    ? preparePostgres(choice.adminUrl!, name, users, passwordHash)
    : prepareSqlite(dir, name, users, passwordHash)
}

async function prepareSqlite (dir: string, name: string, users: number, passwordHash: string): Promise<SeededDatabase> {
  const started = performance.now()
  const path = join(dir, `${name}.db`)
  const url = `file:${path}`
  await migrateAndSeedDemo(url)

  const sqlite = new Database(path)
  try {
    sqlite.pragma('journal_mode = WAL')
    sqlite.pragma('synchronous = OFF')
    checkColumns((sqlite.prepare('select name, "notnull" as "notNull", dflt_value as "defaultValue" from pragma_table_info(\'users\')')
      .all() as Array<{ name: string, notNull: number, defaultValue: unknown }>)
      .map((column) => ({ name: column.name, notNull: column.notNull === 1, hasDefault: column.defaultValue !== null })))
    const insert = sqlite.prepare(
      'insert into users (id, email, name, roles, password_hash, disabled, created_at, updated_at) values (?, ?, ?, ?, ?, 0, ?, ?)'
    )
    const roles = JSON.stringify(ROLES)
    const base = Date.now() - users
    sqlite.transaction(() => {
      for (let index = 0; index < users; index++) {
        insert.run(randomUUID(), emailOf(index), `Bench user ${index}`, roles, passwordHash, base + index, base + index)
      }
    })()
    sqlite.pragma('wal_checkpoint(TRUNCATE)')
  } finally {
    sqlite.close()
  }
  return { kind: 'sqlite', path, url, users, seedSeconds: (performance.now() - started) / 1000, drop: async () => {} }
}

/** Rows per INSERT: one statement of parallel arrays unnested server-side (7 parameters, whatever the size). */
const PG_BATCH = 10_000

async function preparePostgres (adminUrl: string, name: string, users: number, passwordHash: string): Promise<SeededDatabase> {
  const started = performance.now()
  const url = await createDatabase(adminUrl, name)
  try {
    await migrateAndSeedDemo(url)
    const client = new pg.Client({ connectionString: url })
    await client.connect()
    try {
      const { rows: columns } = await client.query<{ name: string, notNull: boolean, hasDefault: boolean }>(
        'select column_name as name, is_nullable = \'NO\' as "notNull", column_default is not null as "hasDefault" ' +
        'from information_schema.columns where table_schema = current_schema() and table_name = \'users\'')
      checkColumns(columns)
      // Not durable until the end: the whole seed is one transaction without waiting for each flush.
      await client.query('begin')
      await client.query('set local synchronous_commit = off')
      const roles = JSON.stringify(ROLES)
      const base = Date.now() - users
      for (let from = 0; from < users; from += PG_BATCH) {
        const size = Math.min(PG_BATCH, users - from)
        const ids: string[] = []
        const emails: string[] = []
        const names: string[] = []
        const times: Date[] = []
        for (let index = from; index < from + size; index++) {
          ids.push(randomUUID())
          emails.push(emailOf(index))
          names.push(`Bench user ${index}`)
          times.push(new Date(base + index))
        }
        await client.query(
          'insert into users (id, email, name, roles, password_hash, disabled, created_at, updated_at) ' +
          'select id, email, name, $4::jsonb, $5, false, at, at from unnest($1::text[], $2::text[], $3::text[], $6::timestamptz[]) as u(id, email, name, at)',
          [ids, emails, names, roles, passwordHash, times]
        )
      }
      await client.query('commit')
      // Planner statistics and the visibility map, as a database that has lived a while would have.
      await client.query('vacuum analyze users')
    } finally {
      await client.end()
    }
  } catch (error) {
    await dropDatabase(adminUrl, url).catch(() => {})
    throw error
  }
  const cpu = databaseCpu(adminUrl, url)
  return {
    kind: 'postgres',
    url,
    users,
    seedSeconds: (performance.now() - started) / 1000,
    cpu,
    async drop () {
      await cpu.close()
      await dropDatabase(adminUrl, url)
    }
  }
}
