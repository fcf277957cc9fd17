// Child processes of the bench: the servers under test, how much CPU they spend and how much
// memory they hold, read from /proc so nothing inside the measured process has to cooperate.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

export const ROOT = new URL('../../', import.meta.url).pathname.replace(/\/$/, '')

/** Clock ticks per second of /proc/<pid>/stat (utime, stime). */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
  } catch {
    return 100
  }
})()

/** User + system CPU time of a process (all its threads), in microseconds. */
export function cpuMicros (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // The command name may contain spaces and parentheses: fields are counted after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // Fields 14 (utime) and 15 (stime) of proc(5); this slice starts at field 3.
  return (Number(fields[11]) + Number(fields[12])) * 1e6 / CLK_TCK
}

function statusField (pid: number, name: string): number {
  try {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match ? Number(match[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** Resident set size now, in bytes. */
export const rssBytes = (pid: number) => statusField(pid, 'VmRSS')
/** Peak resident set size since the process started, in bytes. */
export const peakRssBytes = (pid: number) => statusField(pid, 'VmHWM')

/** A free loopback port (the tiny race until the child binds it is acceptable here). */
export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')))
    })
  })
}

export interface Server {
  name: string
  /** The running process's pid, port and URL: each restart changes them. */
  pid: number
  port: number
  url: string
  /** The highest peak RSS (VmHWM) of all its processes so far, in bytes. */
  peakRssBytes (): number
  /** The running process's last 8,000 characters of output (stdout and stderr). */
  output (): string
  /** Stops the process and starts a new one with the same options. */
  restart (): Promise<void>
  stop (): Promise<void>
}

const children = new Set<ChildProcess>()

/** Whatever happens to the runner, no server it started outlives it. */
function killAll () {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
}
process.once('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killAll()
    process.exit(130)
  })
}

export interface StartOptions {
  name: string
  /** Script path relative to the repository root: a .ts file runs with `node --import tsx`, a .js file with plain node. */
  script: string
  env: Record<string, string>
  /** GET path that answers 2xx once the server is ready. */
  readyPath: string
  nodeArgs?: string[]
}

interface Running {
  child: ChildProcess
  port: number
  exited: Promise<void>
  output: () => string
}

async function launch ({ name, script, env, readyPath, nodeArgs = [] }: StartOptions): Promise<Running> {
  const port = await freePort()
  const loader = script.endsWith('.ts') ? ['--import', 'tsx'] : []
  const child = spawn(process.execPath, [...nodeArgs, ...loader, script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  children.add(child)
  let output = ''
  const keep = (chunk: Buffer) => { output = (output + chunk.toString()).slice(-8000) }
  child.stdout!.on('data', keep)
  child.stderr!.on('data', keep)
  const exited = new Promise<void>((resolve) => child.once('exit', () => { children.delete(child); resolve() }))

  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited during start-up (code ${child.exitCode}):\n${output}`)
    try {
      const response = await fetch(url + readyPath, { signal: AbortSignal.timeout(1000) })
      await response.arrayBuffer()
      if (response.ok) break
    } catch {}
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`${name} did not answer ${readyPath} within 60 s:\n${output}`)
    }
    await sleep(100)
  }
  return { child, port, exited, output: () => output }
}

async function terminate (name: string, { child, exited, output }: Running): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  await exited
  clearTimeout(timer)
  if (output().trim() !== '' && process.env.BENCH_VERBOSE) console.error(`[${name}] ${output().trim()}`)
}

export async function startServer (options: StartOptions): Promise<Server> {
  let running = await launch(options)
  let pastPeak = 0
  const server: Server = {
    name: options.name,
    pid: running.child.pid!,
    port: running.port,
    url: `http://127.0.0.1:${running.port}`,
    peakRssBytes: () => Math.max(pastPeak, peakRssBytes(running.child.pid!)),
    output: () => running.output(),
    async restart () {
      pastPeak = server.peakRssBytes()
      await terminate(options.name, running)
      running = await launch(options)
      server.pid = running.child.pid!
      server.port = running.port
      server.url = `http://127.0.0.1:${running.port}`
    },
    stop: () => terminate(options.name, running)
  }
  return server
}

/**
 * Waits until none of the processes spends CPU (leftover work from the previous target, e.g.
 * queued argon2 verifies, must not be billed to the next one). Gives up after `maxMs`; says
 * whether they went idle.
 */
export async function waitIdle (pids: number[], maxMs = 5000): Promise<boolean> {
  const deadline = Date.now() + maxMs
  // A process that is gone (a database backend whose connection closed) reads NaN: idle.
  const read = (pid: number) => {
    try {
      return cpuMicros(pid)
    } catch {
      return NaN
    }
  }
  let quiet = 0
  let last = pids.map(read)
  while (Date.now() < deadline && quiet < 2) {
    await sleep(100)
    const now = pids.map(read)
    // /proc counts CPU in 10 ms ticks: one tick in 100 ms still counts as idle, two (20% of a core) as busy.
    quiet = now.every((value, index) => !(value - last[index]! > 10_000)) ? quiet + 1 : 0
    last = now
  }
  return quiet >= 2
}
