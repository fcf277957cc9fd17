// The real server as a child process (`node --import tsx src/server.ts`, or `npm start`), for
// tests that crash, restart or multiply it. Killed at the end of the test that started it, whatever happened.
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
/** `npm start` compiles first. */
const LISTEN_TIMEOUT_MS = 60_000

export interface ServerProcess {
  child: ChildProcess
  origin: string
  /** Last log lines (stdout and stderr), for failure messages. */
  log: string[]
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

export function withTimeout<T> (promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

const FROM_SOURCE = [process.execPath, '--import', 'tsx', 'src/server.ts']

/** Starts the server on a free loopback port and resolves once it logs that it listens. */
export async function startServer (t: Test, env: Record<string, string>, [command, ...args] = FROM_SOURCE): Promise<ServerProcess> {
  const child = spawn(command!, args, {
    cwd: ROOT,
    env: { ...process.env, NODE_ENV: 'test', PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const log: string[] = []
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
  const listening = new Promise<string>((resolve) => {
    for (const stream of [child.stdout!, child.stderr!]) {
      // Read everything, so a chatty log never fills the pipe and stalls the server.
      createInterface({ input: stream }).on('line', (line) => {
        log.push(line)
        if (log.length > 50) log.shift()
        const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line)
        if (match) resolve(match[1]!)
      })
    }
  })
  const died = exited.then(({ code, signal }) => {
    throw new Error(`server exited before listening (code ${code}, signal ${signal}):\n${log.join('\n')}`)
  })
  const origin = await withTimeout(Promise.race([listening, died]), LISTEN_TIMEOUT_MS,
    () => `waiting for "Server listening at":\n${log.join('\n')}`)
  died.catch(() => {})
  return { child, origin, log, exited }
}
