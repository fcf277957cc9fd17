import Sqlite from 'better-sqlite3'
import { sql, type SQL } from 'drizzle-orm'
import { drizzle as drizzleSqlite } from 'drizzle-orm/better-sqlite3'
import { migrate as migrateSqlite } from 'drizzle-orm/better-sqlite3/migrator'
import { drizzle as drizzlePostgres, type NodePgDatabase } from 'drizzle-orm/node-postgres'
import { migrate as migratePostgres } from 'drizzle-orm/node-postgres/migrator'
import type { PgColumn } from 'drizzle-orm/pg-core'
import { mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { isPostgresUrl, sqlitePath } from '../config.ts'
import * as postgresSchema from './postgres/schema.ts'
import * as sqliteSchema from './sqlite/schema.ts'

/**
 * The query builder the repositories use. Both dialects' Drizzle builders have the same shape for
 * what the repositories do (select, insert/update/delete … returning, joins, awaited), so the
 * repositories are written once, typed against the PostgreSQL tables, and SQLite's tables stand in
 * for them at run time. What differs between the dialects is in `Dialect` below, and nowhere else.
 */
export type Db = NodePgDatabase<typeof postgresSchema>
export type Tables = typeof postgresSchema
type Column = PgColumn

export type UserRow = Tables['users']['$inferSelect']
export type SessionRow = Tables['sessions']['$inferSelect']
export type VideoRow = Tables['videos']['$inferSelect']
export type ClothingRow = Tables['clothes']['$inferSelect']

/** Serialises a group of writers across instances: one lock for the last-admin guard. */
export type AtomicLock = 'admins'

export interface Dialect {
  name: 'sqlite' | 'postgres'
  /**
   * Runs `work` as one transaction that no other writer interleaves with: on SQLite an immediate
   * transaction (the database's single writer lock), on PostgreSQL a transaction in which
   * `forUpdate` locks rows and `lock` takes a transaction-scoped advisory lock.
   */
  atomic<T> (work: (tx: Db) => Promise<T>, lock?: AtomicLock): Promise<T>
  /** Locks the selected rows until the transaction ends (PostgreSQL); SQLite already holds the write lock. */
  forUpdate<Q extends { for (strength: 'update'): unknown }> (query: Q): Q
  /** `roles` (a JSON array) contains `role`. */
  hasRole (roles: Column, role: string): SQL
  /** `text` contains `part` literally (no LIKE wildcards). */
  contains (text: Column, part: string): SQL
  isUniqueViolation (error: unknown): boolean
  /** A row points at one that no longer exists (e.g. a deleted user). */
  isForeignKeyViolation (error: unknown): boolean
}

export interface Database {
  db: Db
  tables: Tables
  dialect: Dialect
  /** The repository, its calls run one at a time on SQLite (see openSqlite); as is on PostgreSQL. */
  serialise<R extends object> (repository: R): R
  ping (): Promise<void>
  /** Raw SQL with `$1`-style parameters on PostgreSQL and `?` on SQLite; for tools and tests. */
  query (text: string, params?: unknown[]): Promise<Array<Record<string, unknown>>>
  close (): Promise<void>
}

const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), '../../migrations')
/** pg_advisory_lock keys: the migration run, and the admin-change lock. */
const ADVISORY_LOCKS = { migrations: 7_411_202_601, admins: 7_411_202_602 } as const

const errorCode = (error: unknown): unknown =>
  (error as { code?: unknown }).code ?? (error as { cause?: { code?: unknown } }).cause?.code

export function openDatabase (databaseUrl: string): Promise<Database> {
  return isPostgresUrl(databaseUrl) ? openPostgres(databaseUrl) : Promise.resolve(openSqlite(databaseUrl))
}

/**
 * SQLite in WAL mode (readers never wait for the writer), with a busy timeout (another process
 * waits instead of failing with SQLITE_BUSY) and foreign keys enforced; migrations applied.
 *
 * better-sqlite3 is synchronous and one connection serves every request, so an atomic section
 * that awaits between its statements must not let another request's statement in: every
 * repository call runs through one queue (`serialise`), and `atomic` wraps its work in
 * BEGIN IMMEDIATE … COMMIT inside that queue. Each statement takes microseconds, so the queue
 * costs little; SQLite has a single writer anyway.
 */
function openSqlite (databaseUrl: string): Database {
  const path = sqlitePath(databaseUrl)
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
  const sqlite = new Sqlite(path)
  try {
    sqlite.pragma('journal_mode = WAL')
    sqlite.pragma('busy_timeout = 5000')
    sqlite.pragma('foreign_keys = ON')
    const drizzleDb = drizzleSqlite(sqlite, { schema: sqliteSchema })
    migrateSqlite(drizzleDb, { migrationsFolder: join(MIGRATIONS, 'sqlite') })
    const probe = sqlite.prepare('select 1')
    let queue: Promise<unknown> = Promise.resolve()
    const inTurn = <T>(call: () => Promise<T>): Promise<T> => {
      const turn = queue.then(call, call)
      queue = turn.catch(() => {})
      return turn
    }
    return {
      db: drizzleDb as unknown as Db,
      tables: sqliteSchema as unknown as Tables,
      serialise: (repository) => Object.fromEntries(Object.entries(repository).map(([name, method]) =>
        [name, typeof method === 'function' ? (...args: unknown[]) => inTurn(() => method(...args)) : method]
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
        hasRole: (roles, role) => sql`exists (select 1 from json_each(${roles}) where value = ${role})`,
        contains: (text, part) => sql`instr(${text}, ${part}) > 0`,
        isUniqueViolation: (error) => errorCode(error) === 'SQLITE_CONSTRAINT_UNIQUE',
        isForeignKeyViolation: (error) => errorCode(error) === 'SQLITE_CONSTRAINT_FOREIGNKEY'
      },
      async ping () { probe.get() },
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

/**
 * PostgreSQL through a node-postgres pool. Migrations run under an advisory lock, so instances
 * starting together apply them once; they go into the connection's current schema.
 */
async function openPostgres (databaseUrl: string): Promise<Database> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 })
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on('error', () => {})
  try {
    const client = await pool.connect()
    try {
      await client.query('select pg_advisory_lock($1)', [ADVISORY_LOCKS.migrations])
      const { rows: [current] } = await client.query<{ schema: string }>('select current_schema() as schema')
      await migratePostgres(drizzlePostgres(client), { migrationsFolder: join(MIGRATIONS, 'postgres'), migrationsSchema: current!.schema })
    } finally {
      await client.query('select pg_advisory_unlock($1)', [ADVISORY_LOCKS.migrations]).catch(() => {})
      client.release()
    }
  } catch (error) {
    await pool.end()
    throw error
  }
  const db = drizzlePostgres(pool, { schema: postgresSchema })
  return {
    db,
    tables: postgresSchema,
    serialise: (repository) => repository,
    dialect: {
      name: 'postgres',
      atomic: (work, lock) => db.transaction(async (tx) => {
        if (lock) await tx.execute(sql`select pg_advisory_xact_lock(${ADVISORY_LOCKS[lock]})`)
        return work(tx as unknown as Db)
      }),
      forUpdate: (query) => query.for('update') as typeof query,
      hasRole: (roles, role) => sql`${roles} @> ${JSON.stringify([role])}::jsonb`,
      contains: (text, part) => sql`strpos(${text}, ${part}) > 0`,
      isUniqueViolation: (error) => errorCode(error) === '23505',
      isForeignKeyViolation: (error) => errorCode(error) === '23503'
    },
    async ping () { await pool.query('select 1') },
    async query (text, params = []) { return (await pool.query(text, params)).rows },
    async close () {
      // Like better-sqlite3's close, safe to call twice (pool.end() is not).
      if (!pool.ended) await pool.end()
    }
  }
}
