import Sqlite from 'better-sqlite3'
import { sql } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/better-sqlite3'
import { closeSync, mkdirSync, openSync } from 'node:fs'
import { dirname } from 'node:path'
import { sqlitePath } from '../../config.ts'
import { MIGRATIONS_TABLE, errorCode, pendingMigrations, requireUsersTable, type AppliedMigration, type Database, type Db, type Tables } from '../index.ts'
import * as sqliteSchema from './schema.ts'

/**
 * Errors of the database's state, not of the request (with their extended codes): another process
 * held the write lock past the busy timeout, the file became read-only (a remount), the disk is
 * full or failing, the file is gone. The request answers 503 and may be retried.
 */
const UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|READONLY|FULL|IOERR|CANTOPEN)/

/**
 * Stops the start when this process may read the database but not write it (a file of another
 * user, mode 0444), with a message that says so, before anything else tries to write (migrations
 * would fail with SQLite's bare "attempt to write a readonly database"). The probe rewrites a
 * header field with its own value and rolls back; another process holding the write lock proves
 * nothing.
 */
export function refuseReadOnly (sqlite: Sqlite.Database): void {
  const version = sqlite.pragma('user_version', { simple: true }) as number
  try {
    sqlite.exec(`BEGIN IMMEDIATE; PRAGMA user_version = ${version}; ROLLBACK`)
  } catch (error) {
    if (sqlite.inTransaction) sqlite.exec('ROLLBACK')
    if (/^SQLITE_READONLY/.test(String(errorCode(error)))) {
      throw new Error(`this process may read the database but not write it (${(error as Error).message})`)
    }
    if (!/^SQLITE_BUSY/.test(String(errorCode(error)))) throw error
  }
}

/** How long a starting process waits for another one's migration of the same file. */
const MIGRATION_WAIT_MS = 60_000

/** How long a starting process retries the switch to WAL: another's switch takes milliseconds. */
const WAL_SWITCH_WAIT_MS = 5_000
const sleeper = new Int32Array(new SharedArrayBuffer(4))

/**
 * Switches the file to WAL. Processes opening a new file at once each try to, and SQLite may refuse
 * one at once, busy without its busy wait, while another switches it ("database is locked"): it
 * tries again a few milliseconds later, for 5 s at most (longer means another process holds the
 * file: an open sqlite3 shell's transaction). Synchronous like the rest of opening: nothing is
 * served before the database is open.
 */
function switchToWal (sqlite: Sqlite.Database): void {
  const deadline = Date.now() + WAL_SWITCH_WAIT_MS
  for (;;) {
    try {
      sqlite.pragma('journal_mode = WAL')
      return
    } catch (error) {
      if (errorCode(error) === 'SQLITE_READONLY_DIRECTORY') {
        throw new Error(`this process may not create files in the database's folder, as SQLite's -wal and -shm files beside it need (${(error as Error).message})`)
      }
      if (!/^SQLITE_BUSY/.test(String(errorCode(error))) || Date.now() >= deadline) throw error
      Atomics.wait(sleeper, 0, 0, 5)
    }
  }
}

/**
 * The pending migrations in one BEGIN IMMEDIATE: Drizzle's own migrator reads which ones ran before
 * it takes the write lock, so two processes opening a new file at once could both apply the first
 * one, and one of them failed ("table `users` already exists"). Here the second waits for the
 * first, then finds them applied.
 */
function migrateSqlite (sqlite: Sqlite.Database): void {
  const busyTimeout = sqlite.pragma('busy_timeout', { simple: true }) as number
  sqlite.pragma(`busy_timeout = ${MIGRATION_WAIT_MS}`)
  try {
    sqlite.exec('BEGIN IMMEDIATE')
    try {
      sqlite.exec(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at numeric)`)
      const applied = sqlite.prepare(`SELECT hash, created_at FROM ${MIGRATIONS_TABLE}`).all() as AppliedMigration[]
      const record = sqlite.prepare(`INSERT INTO ${MIGRATIONS_TABLE} ("hash", "created_at") VALUES (?, ?)`)
      for (const migration of pendingMigrations('sqlite', applied)) {
        for (const statement of migration.sql) sqlite.exec(statement)
        record.run(migration.hash, migration.folderMillis)
      }
      sqlite.exec('COMMIT')
    } catch (error) {
      if (sqlite.inTransaction) sqlite.exec('ROLLBACK')
      throw error
    }
  } finally {
    sqlite.pragma(`busy_timeout = ${busyTimeout}`)
  }
}

/**
 * SQLite in WAL mode (readers never wait for the writer), with a busy timeout (a write waits a
 * moment for another process's instead of failing at once) and foreign keys enforced; migrations
 * applied.
 *
 * better-sqlite3 is synchronous and one connection serves every request, so an atomic section
 * that awaits between its statements must not let another request's statement in: every
 * repository call runs through one queue (`serialise`), and `atomic` wraps its work in
 * BEGIN IMMEDIATE … COMMIT inside that queue. Each statement takes microseconds, so the queue
 * costs little; SQLite has a single writer anyway.
 */
export function openSqlite (databaseUrl: string): Database {
  const path = sqlitePath(databaseUrl)
  if (path !== ':memory:') {
    // It holds password hashes and emails: only the server's user may read it. SQLite gives the
    // -wal and -shm files the database file's mode; an existing file keeps the mode it has.
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
    try {
      closeSync(openSync(path, 'wx', 0o600))
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
  }
  const sqlite = new Sqlite(path)
  try {
    switchToWal(sqlite)
    // A write that answered 2xx (a revocation, a password change, a signup) survives an OS crash or
    // a power loss, not only a crash of this process: every commit is synced to disk. better-sqlite3
    // builds SQLite with WAL's default at NORMAL (synced only at checkpoints), which SQLite applies
    // when it opens a file already in WAL mode: every start but the first. Cost: one fsync per write
    // transaction, during which better-sqlite3 holds the event loop (0.4 to 1 ms here, bench/micro.ts).
    sqlite.pragma('synchronous = FULL')
    // better-sqlite3 waits synchronously, stopping every request meanwhile: wait 1 s at most
    // (ample for the CLI tools' writes), then answer 503 database_unavailable.
    sqlite.pragma('busy_timeout = 1000')
    sqlite.pragma('foreign_keys = ON')
    // Before migrating, which takes the write lock even when nothing is pending.
    refuseReadOnly(sqlite)
    migrateSqlite(sqlite)
    const drizzleDb = drizzle(sqlite)
    const probe = sqlite.prepare("select 1 from sqlite_schema where type = 'table' and name = 'users'").pluck()
    let queue: Promise<unknown> = Promise.resolve()
    const inTurn = <T>(call: () => Promise<T>): Promise<T> => {
      const turn = queue.then(call, call)
      queue = turn.catch(() => {})
      return turn
    }
    return {
      db: drizzleDb as unknown as Db,
      tables: sqliteSchema as unknown as Tables,
      // A method runs as the repository's own (`this` is the unqueued repository, so one method may
      // call another within its turn); a call to another serialised repository from inside a turn
      // would wait for that turn to end, and never run.
      serialise: (repository) => Object.fromEntries(Object.entries(repository).map(([name, method]) =>
        [name, typeof method === 'function' ? (...args: unknown[]) => inTurn(() => method.apply(repository, args)) : method]
      )) as typeof repository,
      dialect: {
        name: 'sqlite',
        async atomic (work) {
          sqlite.exec('BEGIN IMMEDIATE')
          try {
            const result = await work(drizzleDb as unknown as Db)
            sqlite.exec('COMMIT')
            return result
          } catch (error) {
            if (sqlite.inTransaction) sqlite.exec('ROLLBACK')
            throw error
          }
        },
        forUpdate: (query) => query,
        forNoKeyUpdate: (query) => query,
        hasRole: (roles, role) => sql`exists (select 1 from json_each(${roles}) where value = ${role})`,
        contains: (text, part) => sql`instr(${text}, ${part}) > 0`,
        textOrder: (text) => [sql`lower(${text})`, sql`${text}`],
        isUniqueViolation: (error) => errorCode(error) === 'SQLITE_CONSTRAINT_UNIQUE',
        isUnavailable: (error) => UNAVAILABLE.test(String(errorCode(error)))
      },
      async ping () { requireUsersTable(probe.get()) },
      async query (text, params = []) {
        const statement = sqlite.prepare(text)
        if (statement.reader) return statement.all(...params) as Array<Record<string, unknown>>
        statement.run(...params)
        return []
      },
      async close () { sqlite.close() }
    }
  } catch (error) {
    sqlite.close()
    throw error
  }
}
