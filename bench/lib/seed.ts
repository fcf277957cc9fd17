// A throw-away SQLite database for one app instance: the real migrations and demo data through
// the project's own CLIs, then N users inserted directly in one transaction, all sharing one
// precomputed argon2id hash (hashing 100,000 passwords would take an hour).
import Database from 'better-sqlite3'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { ROOT } from './processes.ts'

const run = promisify(execFile)

export const BENCH_PASSWORD = 'bench-password-of-some-length'
/** Every seeded user is a member, so the member-only route is open to all of them. */
const ROLES = JSON.stringify(['user', 'member'])

export const emailOf = (index: number) => `bench-user-${index}@example.com`

async function cli (script: string, databaseUrl: string) {
  await run(process.execPath, ['--import', 'tsx', script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', DATABASE_URL: databaseUrl, NODE_ENV: 'production' }
  })
}

export interface SeededDatabase {
  path: string
  url: string
  users: number
  seedSeconds: number
}

export async function prepareDatabase (dir: string, name: string, users: number, passwordHash: string): Promise<SeededDatabase> {
  const started = performance.now()
  const path = join(dir, `${name}.db`)
  const url = `file:${path}`
  await cli('src/cli/db-migrate.ts', url)
  // Demo videos (two member-only) and clothes, so the list routes answer real rows.
  await cli('src/cli/db-seed.ts', url)

  const sqlite = new Database(path)
  try {
    sqlite.pragma('journal_mode = WAL')
    sqlite.pragma('synchronous = OFF')
    const columns = sqlite.prepare('select name, "notnull" as "notNull", dflt_value as "defaultValue" from pragma_table_info(\'users\')')
      .all() as Array<{ name: string, notNull: number, defaultValue: unknown }>
    const ours = ['id', 'email', 'name', 'roles', 'password_hash', 'disabled', 'created_at', 'updated_at']
    const missing = columns.filter((column) => !ours.includes(column.name) && column.notNull && column.defaultValue === null)
    if (missing.length > 0) {
      throw new Error(`users has required columns the bench does not fill: ${missing.map((c) => c.name).join(', ')} (update bench/lib/seed.ts)`)
    }
    const insert = sqlite.prepare(
      'insert into users (id, email, name, roles, password_hash, disabled, created_at, updated_at) values (?, ?, ?, ?, ?, 0, ?, ?)'
    )
    const base = Date.now() - users
    sqlite.transaction(() => {
      for (let index = 0; index < users; index++) {
        insert.run(randomUUID(), emailOf(index), `Bench user ${index}`, ROLES, passwordHash, base + index, base + index)
      }
    })()
    sqlite.pragma('wal_checkpoint(TRUNCATE)')
  } finally {
    sqlite.close()
  }
  return { path, url, users, seedSeconds: (performance.now() - started) / 1000 }
}
