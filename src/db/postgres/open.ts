import { sql } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import pg from 'pg'
import { MIGRATIONS_TABLE, Rollback, driverMessage, errorCode, pendingMigrations, requireUsersTable, type AppliedMigration, type Database, type Db, type OpenOptions } from '../index.ts'
import * as postgresSchema from './schema.ts'

/** pg_advisory_lock keys: the migration run, and each AtomicLock. */
export const ADVISORY_LOCKS = { migrations: 7_411_202_601, admins: 7_411_202_602, seed: 7_411_202_603 } as const

/**
 * No request waits on the database for long; each case then answers 503 database_unavailable.
 * - Connecting, or waiting for a pooled connection: CONNECT_TIMEOUT_MS.
 * - A statement (lock waits included): the server cancels it after STATEMENT_TIMEOUT_MS, and
 *   the connection stays usable.
 * - A server that stops answering (a dropped route, a failover): the client gives up after
 *   QUERY_TIMEOUT_MS, later than the server's own timeout.
 * /health gives up sooner.
 */
const CONNECT_TIMEOUT_MS = 5_000
const STATEMENT_TIMEOUT_MS = 8_000
const QUERY_TIMEOUT_MS = 10_000
const PING_TIMEOUT_MS = 2_000

/** PostgreSQL's connection and availability failures: worth a retry, not a bug. */
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTFOUND', 'EAI_AGAIN',
  '57P01', '57P02', '57P03', // shutdowns, cannot connect now
  '57014', '55P03', // statement_timeout, lock_timeout
  // Writes refused by a database turned read-only: a failover's standby, or
  // default_transaction_read_only set by an operator. Clients retry; a connection whose
  // transaction failed is dropped, and new ones read the setting afresh.
  '25006',
  '58030', // an I/O error on the server's disk
  // Refused at connection start by an operator's change (the database dropped or renamed, the role
  // or its password changed): the requests cannot be served, and the error log says why.
  '3D000', '28000', '28P01',
  // A deadlock victim or a serialization failure was rolled back whole: a retry can succeed. Writers
  // lock a user's row before its sessions' and a session's before its tokens', so this is a
  // backstop; the error log still shows it.
  '40P01', '40001'
])
// The last: SQLSTATE 55000 (ALTER DATABASE … ALLOW_CONNECTIONS false), a code other errors share.
const UNAVAILABLE_MESSAGE = /Query read timeout|timeout exceeded when trying to connect|Connection terminated|not queryable|is not currently accepting connections/i

/**
 * Migrations run on a connection of their own, without the query timeout (a migration or the
 * wait for another instance's may take as long as it needs), under an advisory lock, so instances
 * starting together apply them once. They go into the connection's current schema, in one
 * transaction with their bookkeeping, so a failed one leaves nothing behind. Unlike Drizzle's
 * migrator this never runs CREATE SCHEMA, which needs CREATE on the database: a role that owns
 * only its schema can migrate.
 */
async function migratePostgres (databaseUrl: string, { onMigrationWait }: OpenOptions): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: CONNECT_TIMEOUT_MS })
  // A connection lost mid-migration fails the migration; it must not also crash the process.
  client.on('error', () => {})
  await client.connect()
  try {
    const { rows: [first] } = await client.query<{ locked: boolean }>('select pg_try_advisory_lock($1) as locked', [ADVISORY_LOCKS.migrations])
    if (!first!.locked) {
      // Another instance is migrating (or a stuck one holds the lock): say why the start waits.
      onMigrationWait?.()
      await client.query('select pg_advisory_lock($1)', [ADVISORY_LOCKS.migrations])
    }
    const { rows: [current] } = await client.query<{ schema: string | null, path: string }>(
      'select current_schema() as schema, current_setting(\'search_path\') as path')
    if (current!.schema === null) {
      // current_schema() is null both when no schema on the path exists and when the role may not use it.
      throw new Error(`no schema on the search_path (${current!.path}) exists that this role may use: create it, grant USAGE and CREATE on it, or set search_path to one`)
    }
    await client.query('begin')
    try {
      await client.query(`create table if not exists ${MIGRATIONS_TABLE} (id serial primary key, hash text not null, created_at bigint)`)
      const { rows: applied } = await client.query<AppliedMigration>(`select hash, created_at from ${MIGRATIONS_TABLE}`)
      for (const migration of pendingMigrations('postgres', applied)) {
        for (const statement of migration.sql) await client.query(statement)
        await client.query(`insert into ${MIGRATIONS_TABLE} (hash, created_at) values ($1, $2)`, [migration.hash, migration.folderMillis])
      }
      await client.query('commit')
    } catch (error) {
      await client.query('rollback').catch(() => {})
      throw error
    }
  } finally {
    // Ending the session releases the advisory lock.
    await client.end().catch(() => {})
  }
}

const ignoreLostConnection = () => {}

/** PostgreSQL through a node-postgres pool, after migrating. */
export async function openPostgres (databaseUrl: string, options: OpenOptions = {}): Promise<Database> {
  await migratePostgres(databaseUrl, options)
  const pool = new pg.Pool({
    connectionString: databaseUrl,
    max: 10,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    query_timeout: QUERY_TIMEOUT_MS,
    keepAlive: true
  })
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on('error', () => {})
  const db = drizzle(pool)
  return {
    db,
    tables: postgresSchema,
    serialise: (repository) => repository,
    dialect: {
      name: 'postgres',
      // On a client of its own rather than through db.transaction, which releases its client to
      // the pool whatever happened: after a timeout the server may still be inside the
      // transaction (or a failed BEGIN kept the client checked out for good). A transaction that
      // failed destroys its connection instead (release with the error), unless it was rolled
      // back on purpose.
      async atomic (work, lock) {
        const client = await pool.connect()
        // pg-pool stops listening for a client's errors while it is checked out: a connection lost
        // mid-transaction (a failover, pg_terminate_backend) would be an unhandled 'error' event,
        // which ends the process. The statement in flight fails with it, and the client is
        // destroyed below (the listener stays with it); one kept goes back to the pool without it.
        client.on('error', ignoreLostConnection)
        const keep = () => {
          client.removeListener('error', ignoreLostConnection)
          client.release()
        }
        // Begun and ended here rather than by Drizzle's transaction(), whose ROLLBACK after a
        // failed statement or COMMIT fails too on a lost connection and is what it throws: the
        // request is answered, and logged, with the error that came first.
        try {
          // Read committed whatever the database's default: what a transaction reads after waiting
          // for the advisory lock or a row lock must be what the holder committed (the last-admin
          // and acting-admin checks), not a snapshot taken before the wait, as repeatable read keeps.
          await client.query('begin isolation level read committed')
          if (lock) await client.query('select pg_advisory_xact_lock($1)', [ADVISORY_LOCKS[lock]])
          const result = await work(drizzle(client) as unknown as Db)
          // PostgreSQL answers the COMMIT of a transaction a failed statement aborted with ROLLBACK,
          // not an error: work that caught that statement's error must not pass for saved.
          if ((await client.query('commit')).command !== 'COMMIT') throw new Error('the transaction was rolled back: a statement in it failed')
          keep()
          return result
        } catch (error) {
          const rolledBack = await client.query('rollback').then(() => true, () => false)
          if (rolledBack && error instanceof Rollback) keep()
          else client.release(error as Error)
          throw error
        }
      },
      forUpdate: (query, options) => query.for('update', options) as typeof query,
      forNoKeyUpdate: (query) => query.for('no key update') as typeof query,
      hasRole: (roles, role) => sql`${roles} @> ${JSON.stringify([role])}::jsonb`,
      contains: (text, part) => sql`strpos(${text}, ${part}) > 0`,
      // lower() under the "C" collation folds ASCII letters only, as SQLite's does.
      textOrder: (text) => [sql`lower(${text} collate "C")`, sql`${text} collate "C"`],
      isUniqueViolation: (error) => errorCode(error) === '23505',
      isUnavailable: (error) => {
        const code = errorCode(error)
        // Classes 08 (connection exceptions) and 53 (insufficient resources: disk full, out of
        // memory, too many connections) are the server's state, not the request's.
        return (typeof code === 'string' && (UNAVAILABLE_CODES.has(code) || code.startsWith('08') || code.startsWith('53'))) ||
          UNAVAILABLE_MESSAGE.test(driverMessage(error))
      }
    },
    // node-postgres reads query_timeout from a query's config too; its types leave it out.
    async ping () {
      // to_regclass looks the name up on the search_path, as the queries do.
      const { rows: [found] } = await pool.query({ text: "select to_regclass('users') is not null as present", query_timeout: PING_TIMEOUT_MS } as pg.QueryConfig)
      requireUsersTable(found?.present)
    },
    async query (text, params = []) { return (await pool.query(text, params)).rows },
    async close () {
      // Like better-sqlite3's close, safe to call twice (pool.end() is not).
      if (!pool.ended) await pool.end()
    }
  }
}
