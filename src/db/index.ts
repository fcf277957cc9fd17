import type { NodePgDatabase } from 'drizzle-orm/node-postgres'
import type { PgColumn } from 'drizzle-orm/pg-core'
import type { SQL } from 'drizzle-orm'
import { readMigrationFiles, type MigrationMeta } from 'drizzle-orm/migrator'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isPostgresUrl, redactUrl } from '../config.ts'
import { startupProblem } from '../errors.ts'
import type * as postgresSchema from './postgres/schema.ts'
import type * as sqliteSchema from './sqlite/schema.ts'

/**
 * The query builder the repositories use. Both dialects' Drizzle builders have the same shape for
 * what the repositories do (select, insert/update/delete … returning, joins, awaited), so the
 * repositories are written once, typed against the PostgreSQL tables, and SQLite's tables stand in
 * for them at run time. What differs between the dialects is in `Dialect` below, implemented by
 * sqlite/open.ts and postgres/open.ts, and nowhere else. No builder is given the schema, so Drizzle's
 * relational queries (`db.query.users`) are neither typed nor there: a transaction's builder,
 * made per transaction on PostgreSQL, would lack them.
 */
export type Db = NodePgDatabase
export type Tables = typeof postgresSchema
type Column = PgColumn

/**
 * That SQLite's tables can stand in: both dialects have the same tables with the same row types.
 * A table or column missing from one, or typed differently, fails `npm run typecheck`, naming it.
 */
type RowsOf<Schema> = { [Table in keyof Schema]: Schema[Table] extends { $inferSelect: infer Row } ? Row : never }
type Differences<A, B> = {
  [Table in keyof A | keyof B]: Table extends keyof A & keyof B
    ? [A[Table]] extends [B[Table]] ? [B[Table]] extends [A[Table]] ? never : Table : Table
    : Table
}[keyof A | keyof B]
type None<Found extends never> = Found
// "Type '"notes"' does not satisfy the constraint 'never'" here: the table `notes` is missing from
// one schema, or a column of it differs (src/db/sqlite/schema.ts, src/db/postgres/schema.ts).
export type DialectSchemasAgree = None<Differences<RowsOf<Tables>, RowsOf<typeof sqliteSchema>>>

export type UserRow = Tables['users']['$inferSelect']
export type SessionRow = Tables['sessions']['$inferSelect']
export type VideoRow = Tables['videos']['$inferSelect']
export type ClothingRow = Tables['clothes']['$inferSelect']

/** Serialises a group of writers across instances: the last-admin guard, and db:seed runs. */
export type AtomicLock = 'admins' | 'seed'

/**
 * Thrown inside `atomic` to undo its work on purpose (a check inside the transaction failed); it
 * reaches the caller. When the rollback succeeded the connection is sound and stays pooled; any
 * other error, or a rollback that failed, closes it.
 */
export class Rollback extends Error {}

export interface Dialect {
  name: 'sqlite' | 'postgres'
  /**
   * Runs `work` as one transaction that no other writer interleaves with: on SQLite an immediate
   * transaction (the database's single writer lock), on PostgreSQL a transaction in which
   * `forUpdate` locks rows and `lock` takes a transaction-scoped advisory lock. `work` lets a
   * failed statement's error through (it may map it to another error): PostgreSQL aborts the
   * transaction there, and its `atomic` then throws, where SQLite would commit the other writes.
   */
  atomic<T> (work: (tx: Db) => Promise<T>, lock?: AtomicLock): Promise<T>
  /**
   * Locks the selected rows until the transaction ends (PostgreSQL); SQLite already holds the write
   * lock. With `skipLocked`, rows another transaction holds are left out instead of waited for.
   */
  forUpdate<Q extends { for (strength: 'update', config?: { skipLocked: true }): unknown }> (query: Q, options?: { skipLocked: true }): Q
  /**
   * As forUpdate, but other transactions may still insert rows that refer to the locked ones (a
   * foreign key's check takes a key-share lock, which this lets through): `FOR NO KEY UPDATE`.
   */
  forNoKeyUpdate<Q extends { for (strength: 'no key update'): unknown }> (query: Q): Q
  /** `roles` (a JSON array) contains `role`. */
  hasRole (roles: Column, role: string): SQL
  /** `text` contains `part` literally (no LIKE wildcards). */
  contains (text: Column, part: string): SQL
  /**
   * `text` ordered alike on both databases: ASCII letters without their case, then by code point
   * (SQLite's own order; PostgreSQL's would follow the database's locale, often en_US).
   */
  textOrder (text: Column): SQL[]
  isUniqueViolation (error: unknown): boolean
  /** The database cannot serve now (unreachable, timed out, locked by another process): 503. */
  isUnavailable (error: unknown): boolean
}

export interface Database {
  db: Db
  tables: Tables
  dialect: Dialect
  /** The repository, its calls run one at a time on SQLite (see openSqlite); as is on PostgreSQL. */
  serialise<R extends object> (repository: R): R
  /** Fails on a database that cannot be reached or has no users table (requireUsersTable). */
  ping (): Promise<void>
  /** Raw SQL with `$1`-style parameters on PostgreSQL and `?` on SQLite; for tools and tests. */
  query (text: string, params?: unknown[]): Promise<Array<Record<string, unknown>>>
  close (): Promise<void>
}

/**
 * What ping asks besides an answer: whether the table every sign-in and account read needs is
 * there, so /health fails on a database emptied or recreated under a running instance, not only on
 * one that cannot be reached. Asked of the catalogue, which no lock on the table itself (a
 * migration's, an ALTER TABLE's) holds up.
 */
export function requireUsersTable (present: unknown): void {
  if (!present) throw new Error('the database has no users table: was it emptied or recreated?')
}

/** Each dialect's migrations live in its own folder here. */
export const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), '../../migrations')

/**
 * Drizzle's migration bookkeeping table (each applied migration's hash and folder time), kept so
 * databases migrated by Drizzle's own migrator carry on; `unappliedMigrations` decides what it
 * records as applied. Each dialect applies them in one transaction that holds a lock across this
 * read (sqlite/open.ts, postgres/open.ts), which Drizzle's migrator does not.
 */
export const MIGRATIONS_TABLE = '"__drizzle_migrations"'

/** A row of the bookkeeping table: the migration's hash (of its SQL) and folder time. */
export interface AppliedMigration { hash: unknown, created_at: unknown }

/**
 * The migrations of `migrations` (in journal order) that `applied` does not record. Each row
 * records one migration: the one of its time, else (a migration given a later time, as one merged
 * late must be, below) one of its hash, so a later migration repeating an earlier one's SQL is
 * still applied. One not applied and older than the newest applied (a branch's migration merged
 * after the database had moved past its time) is refused: Drizzle's rule, only those newer than the
 * newest applied, would skip it for good.
 */
export function unappliedMigrations (
  migrations: MigrationMeta[], applied: AppliedMigration[], journal: { path: string, nameOf: (time: number) => string }
): MigrationMeta[] {
  const times = new Set(applied.map((row) => Number(row.created_at)))
  const journalTimes = new Set(migrations.map((migration) => migration.folderMillis))
  const strayHashes = applied.filter((row) => !journalTimes.has(Number(row.created_at))).map((row) => row.hash)
  const unapplied = migrations.filter((migration) => {
    if (times.has(migration.folderMillis)) return false
    const stray = strayHashes.indexOf(migration.hash)
    if (stray === -1) return true
    strayHashes.splice(stray, 1)
    return false
  })
  const newest = Math.max(-Infinity, ...times)
  const skipped = unapplied.find((migration) => migration.folderMillis <= newest)
  if (skipped) {
    throw new Error(`migration ${journal.nameOf(skipped.folderMillis)} was never applied, and is older than ${journal.nameOf(newest)}, which was: ` +
      `give it a later "when" than the others in ${journal.path}, so that it is applied after them`)
  }
  return unapplied
}

/** The migrations of this dialect's folder still to apply (unappliedMigrations). */
export function pendingMigrations (dialect: Dialect['name'], applied: AppliedMigration[]): MigrationMeta[] {
  const folder = join(MIGRATIONS, dialect)
  const nameOf = (time: number) => {
    const journal = JSON.parse(readFileSync(join(folder, 'meta/_journal.json'), 'utf8')) as { entries: Array<{ when: number, tag: string }> }
    return journal.entries.find((entry) => entry.when === time)?.tag ?? `the migration of ${new Date(time).toISOString()}`
  }
  return unappliedMigrations(readMigrationFiles({ migrationsFolder: folder }), applied, { path: `migrations/${dialect}/meta/_journal.json`, nameOf })
}

/** The driver's error code, wherever Drizzle left it. */
export const errorCode = (error: unknown): unknown =>
  (error as { code?: unknown }).code ?? (error as { cause?: { code?: unknown } }).cause?.code

/**
 * The driver's own message, wherever Drizzle left it; never Drizzle's "Failed query" wrapper,
 * whose parameters are client text.
 */
export const driverMessage = (error: unknown): string => {
  const { message, cause } = error as { message?: unknown, cause?: { message?: unknown } }
  return String(cause instanceof Error ? cause.message : message)
}

export interface OpenOptions {
  /** Called when the start waits for another instance's migration (PostgreSQL's migration lock is held). */
  onMigrationWait?: () => void
}

/**
 * Opens the database DATABASE_URL names. Each dialect's driver is loaded only when it is used: a
 * SQLite deployment never loads node-postgres (about 5 MiB of memory), nor PostgreSQL better-sqlite3.
 */
export async function openDatabase (databaseUrl: string, options: OpenOptions = {}): Promise<Database> {
  try {
    if (isPostgresUrl(databaseUrl)) return await (await import('./postgres/open.ts')).openPostgres(databaseUrl, options)
    return (await import('./sqlite/open.ts')).openSqlite(databaseUrl)
  } catch (error) {
    // Says which database, without its password: the server and the CLI tools print this line.
    throw new Error(`Cannot open the database at ${redactUrl(databaseUrl)}: ${startupProblem(error)}`, { cause: error })
  }
}
