// The raw password-verify throughput of both argon2 bindings, at the parameters Gatehouse uses,
// measured in the runner while every server is idle. Also proves they read each other's hashes.
import { hash as rsHash, verify as rsVerify } from '@node-rs/argon2'
import argon2 from 'argon2'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { HASH_OPTIONS } from '../../src/auth/passwords.ts'
import { ROOT } from './processes.ts'

/** Gatehouse's argon2id parameters, given to both bindings. */
const { memoryCost, timeCost, parallelism } = HASH_OPTIONS

export type HasherName = 'argon2' | '@node-rs/argon2'
export const HASHERS: HasherName[] = ['argon2', '@node-rs/argon2']

export const hashWith = (hasher: HasherName, password: string): Promise<string> => hasher === 'argon2'
  ? argon2.hash(password, { type: argon2.argon2id, memoryCost, timeCost, parallelism })
  : rsHash(password, HASH_OPTIONS)

export const verifyWith = (hasher: HasherName, hash: string, password: string): Promise<boolean> => hasher === 'argon2'
  ? argon2.verify(hash, password)
  : rsVerify(hash, password)

/** Which binding src/auth/passwords.ts imports today. */
export function hasherInUse (): HasherName {
  const source = readFileSync(join(ROOT, 'src/auth/passwords.ts'), 'utf8')
  return /from ['"]@node-rs\/argon2['"]/.test(source) ? '@node-rs/argon2' : 'argon2'
}

export interface Compatibility {
  argon2Hash: string
  nodeRsHash: string
  /** Both PHC strings carry argon2id, v=19, m=19456, t=2, p=1 (in whatever order). */
  sameParameters: boolean
  nodeRsVerifiesArgon2: boolean
  argon2VerifiesNodeRs: boolean
  /** Both refuse a wrong password for the other's hash. */
  bothRefuseWrong: boolean
}

export async function compatibility (password: string): Promise<Compatibility> {
  const argon2Hash = await hashWith('argon2', password)
  const nodeRsHash = await hashWith('@node-rs/argon2', password)
  // `$argon2id$v=19$m=19456,t=2,p=1$salt$hash`; the bindings write the parameters in another order.
  const parameters = (hash: string) => {
    const [, variant, version, list] = hash.split('$')
    return `${variant} ${version} ${(list ?? '').split(',').sort().join(',')}`
  }
  return {
    argon2Hash,
    nodeRsHash,
    sameParameters: parameters(argon2Hash) === parameters(nodeRsHash) && parameters(argon2Hash) === 'argon2id v=19 m=19456,p=1,t=2',
    nodeRsVerifiesArgon2: await verifyWith('@node-rs/argon2', argon2Hash, password),
    argon2VerifiesNodeRs: await verifyWith('argon2', nodeRsHash, password),
    bothRefuseWrong: !await verifyWith('@node-rs/argon2', argon2Hash, password + 'x') &&
      !await verifyWith('argon2', nodeRsHash, password + 'x')
  }
}

export interface HasherRound {
  hasher: HasherName
  verifies: number
  perSecond: number
  /** Wall time of one verify when it runs alone. */
  singleMs: number
  /** Runner CPU per verify (all threads), in milliseconds. */
  cpuMsPerVerify: number
}

/**
 * `concurrency` verifies in flight (4 fill the libuv pool's 4 threads) for `seconds`; then
 * `singles` verifies one at a time for the latency of one.
 */
export async function measureVerify (hasher: HasherName, hash: string, password: string, seconds: number, concurrency = 4, singles = 3): Promise<HasherRound> {
  const cpuBefore = process.cpuUsage()
  const started = performance.now()
  const until = started + seconds * 1000
  let verifies = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < until) {
      if (!await verifyWith(hasher, hash, password)) throw new Error(`${hasher} refused the bench password`)
      verifies++
    }
  }))
  const elapsed = (performance.now() - started) / 1000
  const cpu = process.cpuUsage(cpuBefore)
  const singleStarted = performance.now()
  for (let index = 0; index < singles; index++) await verifyWith(hasher, hash, password)
  return {
    hasher,
    verifies,
    perSecond: verifies / elapsed,
    singleMs: singles > 0 ? (performance.now() - singleStarted) / singles : NaN,
    cpuMsPerVerify: (cpu.user + cpu.system) / 1000 / verifies
  }
}
