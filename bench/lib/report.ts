// Tables for the terminal and BENCHMARKS.md, and the facts about the machine and the versions.
import { existsSync, readFileSync } from 'node:fs'
import { cpus, release, totalmem } from 'node:os'
import { join } from 'node:path'
import type { Compatibility, HasherName, HasherRound } from './hasher.ts'
import type { Measurement } from './load.ts'
import { ROOT } from './processes.ts'

export interface Machine {
  cpu: string
  cores: number
  memoryGiB: number
  kernel: string
  node: string
}

export function machine (): Machine {
  let cpu = cpus()[0]?.model ?? 'unknown'
  try {
    cpu = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpu
  } catch {}
  return { cpu, cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30 * 10) / 10, kernel: release(), node: process.version }
}

const PACKAGES = [
  'fastify', '@fastify/jwt', 'fast-jwt', 'better-sqlite3', 'drizzle-orm', 'argon2', '@node-rs/argon2',
  'pg', 'express', 'jsonwebtoken', 'autocannon', 'tsx'
]

/** Installed versions, read from node_modules (nested copies, e.g. fast-jwt under @fastify/jwt, too). */
export function versions (): Record<string, string> {
  const found: Record<string, string> = {}
  for (const name of PACKAGES) {
    for (const dir of [join(ROOT, 'node_modules', name), join(ROOT, 'node_modules/@fastify/jwt/node_modules', name)]) {
      const file = join(dir, 'package.json')
      if (existsSync(file)) {
        found[name] = (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version
        break
      }
    }
  }
  return found
}

export const median = (values: number[]): number => {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

/** (max − min) / median: how far rounds of one target disagree. */
export const spread = (values: number[]): number => values.length < 2 ? 0 : (Math.max(...values) - Math.min(...values)) / median(values)

export interface Row {
  id: string
  label: string
  /** Which database the server of this row read ('SQLite', 'PostgreSQL'); none for bare Fastify. */
  database?: string
  rounds: number
  rps: number
  p50: number
  p99: number
  cpuUs: number
  cpuCores: number
  /** CPU of the database server's backends per answer (PostgreSQL; SQLite's is inside cpuUs). */
  dbCpuUs?: number
  non2xx: number
  errors: number
  spread: number
  rssMiB: number
}

export function summarise (measurements: Measurement[], labels: Map<string, string>, databases = new Map<string, string>()): Row[] {
  const rows: Row[] = []
  for (const [id, label] of labels) {
    const own = measurements.filter((m) => m.id === id)
    if (own.length === 0) continue
    const database = databases.get(id)
    const dbCpu = own.map((m) => m.dbCpuUs).filter((value): value is number => value !== undefined)
    rows.push({
      id,
      label,
      ...(database ? { database } : {}),
      rounds: own.length,
      rps: median(own.map((m) => m.rps)),
      p50: median(own.map((m) => m.p50)),
      p99: median(own.map((m) => m.p99)),
      cpuUs: median(own.map((m) => m.cpuUs)),
      cpuCores: median(own.map((m) => m.cpuCores)),
      ...(dbCpu.length > 0 ? { dbCpuUs: median(dbCpu) } : {}),
      non2xx: own.reduce((sum, m) => sum + m.non2xx, 0),
      errors: own.reduce((sum, m) => sum + m.errors, 0),
      spread: spread(own.map((m) => m.rps)),
      rssMiB: Math.round(Math.max(...own.map((m) => m.rssMaxBytes)) / 2 ** 20)
    })
  }
  return rows
}

export interface Ratio {
  name: string
  value: number
  /** e.g. '≥ 0.8' */
  target: string
  met: boolean | null
  note?: string
  /** How `value` reads: a ratio (default) or mebibytes. */
  unit?: 'MiB'
}

const digits = (value: number, fraction = 0) => Number.isFinite(value)
  ? value.toLocaleString('en-US', { minimumFractionDigits: fraction, maximumFractionDigits: fraction })
  : 'n/a'
export const ms = (value: number) => Number.isFinite(value) ? (value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : value.toFixed(0)) : 'n/a'
export const ratio = (value: number) => Number.isFinite(value) ? `${value.toFixed(2)}×` : 'n/a'
export const verdict = (met: boolean | null) => met === null ? 'n/a' : met ? 'met' : 'NOT met'

/** Rows written before the bench knew other databases (no `database` field) all ran on SQLite. */
export const rowDatabase = (row: Row) => row.database ?? (row.id.startsWith('bare') ? '—' : 'SQLite')

export function rowCells (row: Row): string[] {
  const database = rowDatabase(row)
  return [
    row.label,
    database,
    digits(row.rps),
    ms(row.p50),
    ms(row.p99),
    digits(row.cpuUs, 0),
    row.dbCpuUs !== undefined ? digits(row.dbCpuUs, 0) : database === 'SQLite' ? 'in app' : '—',
    `${Math.round(row.cpuCores * 100)}%`,
    `${Math.round(row.spread * 100)}%`,
    String(row.rssMiB),
    String(row.non2xx + row.errors)
  ]
}
export const ROW_HEADERS = ['target', 'database', 'req/s', 'p50 ms', 'p99 ms', 'CPU µs/req', 'DB CPU µs/req', 'server CPU', 'rps spread', 'RSS MiB', 'non-2xx+err']

export function hasherCells (rounds: HasherRound[], name: HasherName, inUse: HasherName): string[] {
  const own = rounds.filter((round) => round.hasher === name)
  return [
    name + (name === inUse ? ' (in use)' : ''),
    digits(median(own.map((r) => r.perSecond)), 1),
    ms(median(own.map((r) => r.singleMs))),
    ms(median(own.map((r) => r.cpuMsPerVerify)))
  ]
}
export const HASHER_HEADERS = ['hasher (argon2id m=19456 t=2 p=1)', 'verifies/s (4 in flight)', 'ms per verify (alone)', 'CPU ms/verify']

export const ratioCells = (r: Ratio) => [r.name, r.unit === 'MiB' ? `${r.value.toFixed(0)} MiB` : ratio(r.value), r.target, verdict(r.met), r.note ?? '']
export const RATIO_HEADERS = ['target', 'measured', 'goal', 'result', 'note']

export function compatibilityLines (c: Compatibility): string[] {
  return [
    `same PHC parameters (argon2id, v=19, m=19456, t=2, p=1; argon2 writes m,p,t and @node-rs/argon2 m,t,p): ${c.sameParameters ? 'yes' : 'NO'}`,
    `@node-rs/argon2 verifies the argon2 package's hash: ${c.nodeRsVerifiesArgon2 ? 'yes' : 'NO'}`,
    `argon2 package verifies the @node-rs/argon2 hash: ${c.argon2VerifiesNodeRs ? 'yes' : 'NO'}`,
    `both refuse a wrong password for the other's hash: ${c.bothRefuseWrong ? 'yes' : 'NO'}`
  ]
}

/** A fixed-width table for the terminal. */
export function textTable (headers: string[], rows: string[][]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)))
  const line = (cells: string[]) => cells.map((cell, column) => column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)).join('  ').trimEnd()
  return [line(headers), widths.map((width) => '-'.repeat(width)).join('  '), ...rows.map(line)].join('\n')
}

/** Numbers right-aligned; the first column and words (result, note, measure) left. */
export function markdownTable (headers: string[], rows: string[][]): string {
  const escape = (cell: string) => cell.replace(/\|/g, '\\|')
  const left = (header: string, column: number) => column === 0 || ['result', 'note', 'goal', 'database'].includes(header)
  return [
    `| ${headers.map(escape).join(' | ')} |`,
    `|${headers.map((header, column) => left(header, column) ? '---' : '---:').join('|')}|`,
    ...rows.map((row) => `| ${row.map(escape).join(' | ')} |`)
  ].join('\n')
}
