// How repositories behave through app.database.serialise (README "Adding a resource", step 3),
// on SQLite, where it queues their calls, as on PostgreSQL, where it returns them as they are.
import { setTimeout as sleep } from 'node:timers/promises'
import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { build, dbCount, signup } from './helper.ts'

t.test('a serialised repository\'s method keeps `this` and may call another of its methods in its turn', async (t) => {
  const app = await build(t)
  const notes = app.database.serialise({
    async count () {
      const [row] = await app.database.query('select count(*) as n from users')
      return Number(row!.n)
    },
    async countPlusOne () {
      return (await this.count()) + 1
    }
  })
  t.equal(await Promise.race([notes.countPlusOne(), sleep(5000, 'still waiting after 5 s', { ref: false })]), 1)
})

t.test('transactions of concurrent repository calls do not interleave: each runs whole, in its turn', async (t) => {
  const app = await build(t)
  const { user } = await signup(app)
  const times = { now: new Date(), ttl: 3600, maxAge: 0 }
  const passwordHash = (await app.usersRepository.findPasswordHash(user.id))!
  // Each sign-in is a transaction with awaits between its statements; on SQLite's one connection,
  // the second's BEGIN inside the first's transaction would fail without the queue.
  const opened = await Promise.all(Array.from({ length: 5 }, () => app.sessionsRepository.open({ userId: user.id, passwordHash }, times)))
  t.equal(opened.filter((result) => result?.session.userId === user.id).length, 5, 'every one opened its session')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ?', user.id), 6, 'all stored, with the signup\'s')
  t.equal(await dbCount(app, 'select count(*) as n from refresh_tokens where session_id in (select id from sessions where user_id = ?)', user.id), 6)
})

// On PostgreSQL a prepared statement's name is shared by every statement of a connection: two
// statements of one name fail only when both reach the same connection, so at random at run time.
t.test('prepared statement names are unique across the repositories', async (t) => {
  const folder = new URL('../src/repositories/', import.meta.url)
  const names = readdirSync(folder).filter((file) => file.endsWith('.ts')).flatMap((file) =>
    [...readFileSync(new URL(file, folder), 'utf8').matchAll(/\.prepare\(([^)]*)\)/g)]
      .flatMap(([, argument]) => [...argument!.matchAll(/'([^']+)'/g)].map(([, name]) => `${name} (${file})`)))
  t.ok(names.length >= 5, `found: ${names.join(', ')}`)
  const seen = new Map<string, string>()
  for (const entry of names) {
    const name = entry.split(' ')[0]!
    t.notOk(seen.has(name), `${entry}${seen.has(name) ? ` repeats ${seen.get(name)}` : ''}`)
    seen.set(name, entry)
  }
})

t.test('a session\'s maximum age ends it at the same millisecond wherever it is judged, in SQL and in code', async (t) => {
  const app = await build(t)
  const { user } = await signup(app)
  const [session] = await app.sessionsRepository.listActive(user.id, { now: new Date(), maxAge: 0 })
  const maxAge = 3600
  const endsAt = session!.createdAt.getTime() + maxAge * 1000
  const judged = async (now: number) => {
    const age = { now: new Date(now), maxAge }
    return {
      listed: (await app.sessionsRepository.listActive(user.id, age)).length === 1,
      found: (await app.sessionsRepository.findActiveAccount(session!.id, age)) !== undefined
    }
  }
  t.same(await judged(endsAt - 1), { listed: true, found: true }, 'a millisecond before its maximum age')
  t.same(await judged(endsAt), { listed: false, found: false }, 'at it')
})
