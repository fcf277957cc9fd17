import { sql } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import { migrate } from 'drizzle-orm/node-postgres/migrator'
import { join } from 'node:path'
import pg from 'pg'
import { MIGRATIONS, errorCode, type Database, type Db } from '../index.ts'
import * as postgresSchema from './schema.ts'

/** pg_advisory_lock keys: the migration run, and the admin-change lock. */
const ADVISORY_LOCKS = { migrations: 7_411_202_601, admins: 7_411_202_602 } as const

/**
 * PostgreSQL through a node-postgres pool. Migrations run under an advisory lock, so instances
 * starting together apply them once; they go into the connection's current schema.
 */
export async function openPostgres (databaseUrl: string): Promise<Database> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 10 })
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on('error', () => {})
  try {
    const client = await pool.connect()
    try {
      await client.query('select pg_advisory_lock($1)', [ADVISORY_LOCKS.migrations])
      const { rows: [current] } = await client.query<{ schema: string }>('select current_schema() as schema')
      await migrate(drizzle(client), { migrationsFolder: join(MIGRATIONS, 'postgres'), migrationsSchema: current!.schema })
    } finally {
      await client.query('select pg_advisory_unlock($1)', [ADVISORY_LOCKS.migrations]).catch(() => {})
      client.release()
    }
  } catch (error) {
    await pool.end()
    throw error
  }
  const db = drizzle(pool, { schema: postgresSchema })
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
