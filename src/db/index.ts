import Database from 'better-sqlite3'
import { drizzle, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3'
import { migrate } from 'drizzle-orm/better-sqlite3/migrator'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { sqlitePath } from '../config.ts'
import * as schema from './schema.ts'

export type Db = BetterSQLite3Database<typeof schema> & { $client: Database.Database }

export interface DatabaseHandle {
  db: Db
  /** Cheap liveness probe for /health. */
  ping (): void
  close (): void
}

const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), '../../migrations/sqlite')

/**
 * Opens the SQLite database in WAL mode (readers never wait for the writer), with a busy timeout
 * (a second process or a checkpoint waits instead of failing with SQLITE_BUSY) and foreign keys
 * enforced, then applies pending migrations.
 */
export function openDatabase (databaseUrl: string): DatabaseHandle {
  const path = sqlitePath(databaseUrl)
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const sqlite = new Database(path)
  try {
    sqlite.pragma('journal_mode = WAL')
    sqlite.pragma('busy_timeout = 5000')
    sqlite.pragma('foreign_keys = ON')
    const db = drizzle(sqlite, { schema })
    migrate(db, { migrationsFolder: MIGRATIONS })
    const probe = sqlite.prepare('select 1')
    return { db, ping: () => { probe.get() }, close: () => sqlite.close() }
  } catch (error) {
    sqlite.close()
    throw error
  }
}
