// Load generation: one autocannon run per target and round, with the server's CPU (from /proc)
// and memory sampled over exactly that window; and the background login load of the storm case.
import autocannon from 'autocannon'
import { Agent, request as httpRequest } from 'node:http'
import type { DatabaseCpu } from './postgres.ts'
import { cpuMicros, rssBytes, type Server } from './processes.ts'

export interface Target {
  id: string
  /** What the row is called in the table. */
  label: string
  server: Server
  /** Builds the requests of one run (called before each run, so token pools can be refilled). */
  requests: () => Promise<autocannon.Request[]> | autocannon.Request[]
  /** Runs beside the measured load and reports on itself (the storm's logins). */
  background?: () => Background
  /** Concurrent connections when not the run's default. */
  connections?: number
  /** The database the server reads, when it is another process (PostgreSQL); for its CPU. */
  database?: DatabaseCpu
}

export interface Background {
  stop (): Promise<Record<string, number>>
}

export interface Measurement {
  id: string
  round: number
  seconds: number
  responses: number
  ok: number
  non2xx: number
  errors: number
  rps: number
  p50: number
  p99: number
  /** Server CPU per completed response, microseconds. */
  cpuUs: number
  /** Server CPU as a share of one core. */
  cpuCores: number
  /** Database server CPU (its backends for this database) per completed response, microseconds; PostgreSQL only. */
  dbCpuUs?: number
  /** That CPU as a share of one core. */
  dbCpuCores?: number
  rssMaxBytes: number
  extra?: Record<string, number>
}

export function percentile (sorted: ArrayLike<number>, fraction: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))]!
}

export async function measure (target: Target, round: number, seconds: number, connections: number): Promise<Measurement> {
  const { pid } = target.server
  const requests = await target.requests()
  // 2xx latencies in ms with sub-millisecond precision (autocannon's own histogram keeps whole ms).
  const latencies: number[] = []
  let rssMax = rssBytes(pid)
  const sampler = setInterval(() => { rssMax = Math.max(rssMax, rssBytes(pid)) }, 200)
  const dbBefore = await target.database?.snapshot()
  const background = target.background?.()
  const cpuBefore = cpuMicros(pid)
  const started = performance.now()
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon({
      url: target.server.url,
      connections: target.connections ?? connections,
      duration: seconds,
      requests,
      timeout: 30
    }, (error, output) => error ? reject(error) : resolve(output))
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime)
    })
  })
  const elapsed = (performance.now() - started) / 1000
  const cpu = cpuMicros(pid) - cpuBefore
  const dbCpu = target.database && dbBefore ? target.database.spent(dbBefore, await target.database.snapshot()) : undefined
  clearInterval(sampler)
  rssMax = Math.max(rssMax, rssBytes(pid))
  const extra = background ? await background.stop() : undefined
  const sorted = Float64Array.from(latencies).sort()
  const responses = result['1xx'] + result['2xx'] + result['3xx'] + result['4xx'] + result['5xx']
  return {
    id: target.id,
    round,
    seconds: elapsed,
    responses,
    ok: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    rps: result['2xx'] / elapsed,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    cpuUs: responses > 0 ? cpu / responses : NaN,
    cpuCores: cpu / 1e6 / elapsed,
    rssMaxBytes: rssMax,
    ...(dbCpu !== undefined ? { dbCpuUs: responses > 0 ? dbCpu / responses : NaN, dbCpuCores: dbCpu / 1e6 / elapsed } : {}),
    ...(extra ? { extra } : {})
  }
}

export interface JsonResponse { status: number, body: unknown }

const agent = new Agent({ keepAlive: true, maxSockets: 64 })

/** One JSON request over a keep-alive agent (the background load and the token set-up). */
export function postJson (url: string, path: string, body: unknown): Promise<JsonResponse> {
  const payload = JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const request = httpRequest(url + path, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
    }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        let parsed: unknown = text
        try { parsed = JSON.parse(text) } catch {}
        resolve({ status: response.statusCode ?? 0, body: parsed })
      })
      response.on('error', reject)
    })
    request.on('error', reject)
    request.end(payload)
  })
}

/**
 * `perSecond` requests a second, on schedule whatever the answers take (an open loop, as real
 * sign-ins arrive), from `next()`; reports how many were sent, answered 2xx within the window
 * (`perSecond` counts only those, so a backlog the server never caught up with does not read as
 * keeping up), answered 2xx after it (`late`) or failed, and their latency.
 */
export function openLoop (url: string, path: string, perSecond: number, next: () => unknown, onOk?: (body: unknown) => void): Background {
  const started = performance.now()
  let sent = 0
  let ok = 0
  let late = 0
  let failed = 0
  let windowOpen = true
  const latencies: number[] = []
  const pending = new Set<Promise<void>>()
  const timer = setInterval(() => {
    const due = Math.floor((performance.now() - started) / 1000 * perSecond) + 1
    while (sent < due) {
      sent++
      const at = performance.now()
      const done = postJson(url, path, next()).then(({ status, body }) => {
        if (status >= 200 && status < 300) {
          if (windowOpen) ok++
          else late++
          latencies.push(performance.now() - at)
          onOk?.(body)
        } else failed++
      }, () => { failed++ }).finally(() => pending.delete(done))
      pending.add(done)
    }
  }, 10)
  return {
    async stop () {
      clearInterval(timer)
      windowOpen = false
      const seconds = (performance.now() - started) / 1000
      const inWindow = ok
      await Promise.all(pending)
      const sorted = Float64Array.from(latencies).sort()
      return { sent, ok: inWindow, late, failed, perSecond: inWindow / seconds, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }
    }
  }
}

/** Runs `task` over `items` with at most `limit` at once. */
export async function inBatches<T, R> (items: T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length)
  let nextIndex = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (nextIndex < items.length) {
      const index = nextIndex++
      results[index] = await task(items[index]!)
    }
  }))
  return results
}
