// npm run db:seed: demo videos and clothes, so a new user sees real lists. Adds nothing to a table
// that already has rows, so it is safe to run twice, even at once. Seeded videos have no owner: admins manage them.
import { startupProblem } from '../errors.ts'
import { databaseName, openDatabaseOrExit } from './open-database.ts'
import { createClothingRepository } from '../repositories/clothes.ts'
import { createVideoRepository, type VideoFields } from '../repositories/videos.ts'

const VIDEOS: VideoFields[] = [
  { title: 'Getting started with Gatehouse', author: 'Gatehouse team', url: 'https://videos.example.com/getting-started.mp4', isMemberOnly: false },
  { title: 'Bearer tokens in five minutes', author: 'Ada Lovelace', url: 'https://videos.example.com/bearer-tokens.mp4', isMemberOnly: false },
  { title: 'Refresh token rotation, explained', author: 'Grace Hopper', url: 'https://videos.example.com/rotation.mp4', isMemberOnly: false },
  { title: 'Members: building a role model that lasts', author: 'Barbara Liskov', url: 'https://videos.example.com/roles.mp4', isMemberOnly: true },
  { title: 'Members: threat modelling an auth API', author: 'Whitfield Diffie', url: 'https://videos.example.com/threats.mp4', isMemberOnly: true }
]

const CLOTHES = [
  { name: 'Gatehouse hoodie', color: 'navy', size: 'M', price: 4900 },
  { name: 'Gatehouse hoodie', color: 'navy', size: 'L', price: 4900 },
  { name: 'Bearer T-shirt', color: 'white', size: 'S', price: 1999 },
  { name: 'Rotation socks', color: 'black', size: '42', price: 999 },
  { name: 'Key-rotation cap', color: null, size: null, price: 1500 }
]

const database = await openDatabaseOrExit()
try {
  // Checked and written in one transaction under the seed lock: two runs at once (two instances'
  // start scripts, say) cannot both find the tables empty and seed them twice.
  const { hasVideos, hasClothes } = await database.dialect.atomic(async (db) => {
    // Repositories on this transaction's builder: seed() only, as their changes for a signed-in
    // caller open transactions of their own (nested, SQLite would refuse them).
    const videos = createVideoRepository({ ...database, db })
    const clothes = createClothingRepository({ ...database, db })
    const hasVideos = (await videos.list(false)).length + (await videos.list(true)).length > 0
    const hasClothes = (await clothes.list()).length > 0
    if (!hasVideos) for (const video of VIDEOS) await videos.seed(video)
    if (!hasClothes) for (const item of CLOTHES) await clothes.seed(item)
    return { hasVideos, hasClothes }
  }, 'seed')
  console.log(`videos: ${hasVideos ? 'already present' : `${VIDEOS.length} added`}; clothes: ${hasClothes ? 'already present' : `${CLOTHES.length} added`}; in ${databaseName()}`)
} catch (error) {
  // One line, as for a database that cannot be opened; nothing was added (one transaction).
  console.error(`could not seed: ${startupProblem(error)}`)
  process.exitCode = 1
} finally {
  await database.close()
}
