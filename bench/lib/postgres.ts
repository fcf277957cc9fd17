// PostgreSQL for the bench: a database of its own per app instance (created for the run and
// dropped after), the server's settings for the report, and the CPU its backends spend, read from
// /proc like the app's own, so a request's cost can include the database's share of it.
import { createHash } from 'node:crypto'
import { hostname } from 'node:os'
import pg from 'pg'
import { cpuMicros } from './processes.ts'

/** The local server of this machine (trust auth); `--postgres` uses it. */
export const DEFAULT_POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/test'
const PREFIX = 'gatehouse_bench_'

const databaseOf = (url: string) => decodeURIComponent(new URL(url).pathname.slice(1))

function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + encodeURIComponent(database)
  return parsed.toString()
}

const quoted = (identifier: string) => `"${identifier.replace(/"/g, '""')}"`

async function withClient<T> (url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, application_name: 'gatehouse-bench' })
  await client.connect()
  try {
    return await work(client)
  } finally {
    await client.end()
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** This machine's (or container's) tag in database names: pids mean something only where they were issued. */
const HOST = createHash('sha1').update(hostname()).digest('hex').slice(0, 6)

/**
 * Creates `gatehouse_bench_<host>_<runner pid>_<name>` next to the admin URL's database and returns
 * its URL. First drops what bench runs of this host that no longer exist left behind (killed before
 * their clean-up): only databases of this naming whose runner pid is gone, and nobody is connected to
 * (a plain DROP refuses a database in use).
 */
export async function createDatabase (adminUrl: string, name: string): Promise<string> {
  const database = `${PREFIX}${HOST}_${process.pid}_${name.toLowerCase().replace(/[^a-z0-9_]/g, '_')}`.slice(0, 63)
  await withClient(adminUrl, async (client) => {
    const { rows } = await client.query<{ datname: string }>('select datname from pg_database where starts_with(datname, $1)', [`${PREFIX}${HOST}_`])
    for (const { datname } of rows) {
      const pid = Number(datname.slice(PREFIX.length + HOST.length + 1).split('_')[0])
      if (pid > 0 && pid !== process.pid && !alive(pid)) await client.query(`drop database if exists ${quoted(datname)}`).catch(() => {})
    }
    await client.query(`drop database if exists ${quoted(database)} with (force)`)
    await client.query(`create database ${quoted(database)}`)
  })
  return withDatabase(adminUrl, database)
}

export async function dropDatabase (adminUrl: string, url: string): Promise<void> {
  await withClient(adminUrl, (client) => client.query(`drop database if exists ${quoted(databaseOf(url))} with (force)`))
}

export interface PostgresInfo {
  /** e.g. 15.20 */
  version: string
  /** Where it runs, without a password. */
  server: string
  /** On this machine: its backends share the cores with the app and the load generator. */
  local: boolean
  settings: Record<string, string>
}

const SETTINGS = ['shared_buffers', 'synchronous_commit', 'fsync', 'max_connections', 'work_mem']

export async function postgresInfo (adminUrl: string): Promise<PostgresInfo> {
  return withClient(adminUrl, async (client) => {
    const { rows } = await client.query<{ name: string, setting: string }>(
      'select name, current_setting(name) as setting from unnest($1::text[]) as name', [['server_version', ...SETTINGS]])
    const settings = Object.fromEntries(rows.map((row) => [row.name, row.setting]))
    const { hostname, port } = new URL(adminUrl)
    return {
      version: settings.server_version?.split(' ')[0] ?? 'unknown',
      server: `${hostname}:${port || '5432'}`,
      local: ['127.0.0.1', 'localhost', '[::1]', ''].includes(hostname),
      settings: Object.fromEntries(SETTINGS.map((name) => [name, settings[name] ?? '?']))
    }
  })
}

export type CpuSnapshot = Map<number, number>

/**
 * The backends serving one database (the app's and the Express peer's pool connections,
 * autovacuum workers), found in pg_stat_activity through one connection to the admin database
 * (not counted), and their CPU from /proc (the server runs on this machine). Shared processes
 * (WAL writer, checkpointer) are not attributed to any request.
 */
export interface DatabaseCpu {
  snapshot (): Promise<CpuSnapshot>
  /** Microseconds spent between two snapshots by the backends alive at the second. */
  spent (before: CpuSnapshot, after: CpuSnapshot): number
  pids (): Promise<number[]>
  close (): Promise<void>
}

export function databaseCpu (adminUrl: string, url: string): DatabaseCpu {
  const database = databaseOf(url)
  let client: Promise<pg.Client> | undefined
  const connected = () => {
    client ??= (async () => {
      const c = new pg.Client({ connectionString: adminUrl, application_name: 'gatehouse-bench-watch' })
      c.on('error', () => {})
      await c.connect()
      return c
    })()
    return client
  }
  const pids = async () => {
    const { rows } = await (await connected()).query<{ pid: number }>('select pid from pg_stat_activity where datname = $1', [database])
    return rows.map((row) => row.pid)
  }
  return {
    pids,
    async snapshot () {
      const snapshot: CpuSnapshot = new Map()
      for (const pid of await pids()) {
        try {
          snapshot.set(pid, cpuMicros(pid))
        } catch {} // gone in between
      }
      return snapshot
    },
    spent (before, after) {
      let total = 0
      for (const [pid, micros] of after) total += micros - (before.get(pid) ?? 0)
      return total
    },
    async close () {
      if (client) await (await client).end().catch(() => {})
      client = undefined
    }
  }
}
