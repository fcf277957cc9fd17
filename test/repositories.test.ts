// How repositories behave through app.database.serialise (README "Adding a resource", step 3),
// on SQLite, where it queues their calls, as on PostgreSQL, where it returns them as they are.
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { build } from './helper.ts'

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
