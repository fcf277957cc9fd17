// Summarises V8 .cpuprofile files (from `npm run bench -- --profile`): where the server spent its
// time, by function (self time) and by package.
// Samples before the first HTTP request (start-up: compiling, migrations) are left out.
// Usage: node --import tsx bench/profile-summary.ts <file-or-dir> [--top N] [--all]
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
  children?: number[]
}
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[], startTime: number, endTime: number }

const [target = 'bench/profiles', ...rest] = process.argv.slice(2)
const top = rest.includes('--top') ? Number(rest[rest.indexOf('--top') + 1]) || 30 : 30
const everything = rest.includes('--all')
const files = statSync(target).isDirectory()
  ? readdirSync(target).filter((name) => name.endsWith('.cpuprofile')).map((name) => join(target, name))
  : [target]

function where (url: string): string {
  if (url === '') return '(native/V8)'
  if (url.startsWith('node:')) return 'node core'
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (match) return match[1]!
  const local = /\/(src|bench)\/.+$/.exec(url)
  return local ? local[0].slice(1) : url
}

for (const file of files) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const parent = new Map<number, number>()
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id)
  const serving = (id: number | undefined): boolean => {
    for (; id !== undefined; id = parent.get(id)) if (byId.get(id)?.callFrame.functionName === 'parserOnIncoming') return true
    return false
  }
  const first = everything ? 0 : Math.max(0, profile.samples.findIndex((id) => serving(id)))
  const self = new Map<number, number>()
  profile.samples.forEach((id, index) => {
    if (index >= first) self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0))
  })
  const total = [...self.values()].reduce((a, b) => a + b, 0)
  const byFunction = new Map<string, number>()
  const byPackage = new Map<string, number>()
  for (const [id, micros] of self) {
    const { callFrame } = byId.get(id)!
    const name = `${callFrame.functionName || '(anonymous)'}  ${where(callFrame.url)}${callFrame.url ? `:${callFrame.lineNumber + 1}` : ''}`
    byFunction.set(name, (byFunction.get(name) ?? 0) + micros)
    const pkg = where(callFrame.url).replace(/^src\/.*/, 'src (Gatehouse)')
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + micros)
  }
  const show = (title: string, entries: Map<string, number>, limit: number) => {
    console.log(`\n${title}`)
    for (const [name, micros] of [...entries].sort((a, b) => b[1] - a[1]).slice(0, limit)) {
      console.log(`${(micros / total * 100).toFixed(1).padStart(5)}%  ${(micros / 1000).toFixed(0).padStart(7)} ms  ${name}`)
    }
  }
  // Inclusive time: a sample counts once for every distinct function on its stack.
  const inclusive = new Map<string, number>()
  const label = (node: ProfileNode) => `${node.callFrame.functionName || '(anonymous)'}  ${where(node.callFrame.url)}${node.callFrame.url ? `:${node.callFrame.lineNumber + 1}` : ''}`
  for (const [id, micros] of self) {
    const seen = new Set<string>()
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const node = byId.get(at)!
      if (node.callFrame.url === '' || node.callFrame.url.startsWith('node:')) continue
      const name = label(node)
      if (seen.has(name)) continue
      seen.add(name)
      inclusive.set(name, (inclusive.get(name) ?? 0) + micros)
    }
  }
  const idle = [...self].filter(([id]) => byId.get(id)!.callFrame.functionName === '(idle)').reduce((sum, [, micros]) => sum + micros, 0)
  console.log(`${file}: ${(total / 1e6).toFixed(1)} s sampled, ${((total - idle) / 1e6).toFixed(1)} s busy`)
  show('self time by package', byPackage, 20)
  show('self time by function', byFunction, top)
  show('inclusive time by function (JavaScript only)', inclusive, top)
}
