import t from 'tap'
import { verifiedTokenCache } from '../src/auth/verified-tokens.ts'

const userOf = (id: string) => Object.freeze({ id, sid: `session-of-${id}`, roles: ['user' as const] })

t.test('a remembered token answers its user until it expires, then is forgotten', async (t) => {
  const cache = verifiedTokenCache(10)
  const user = userOf('a')
  cache.remember('token-a', user, 2_000)
  t.equal(cache.get('token-a', 1_999), user)
  t.equal(cache.get('token-b', 1_999), undefined, 'a token never remembered')
  t.equal(cache.get('token-a', 2_000), undefined, 'at its expiry it no longer counts')
  t.equal(cache.size, 0, 'the expired entry is dropped, not kept')
  t.equal(cache.get('token-a', 0), undefined, 'and stays gone')
})

t.test('past its capacity the oldest token goes first, so memory stays bounded', async (t) => {
  const cache = verifiedTokenCache(3)
  for (const id of ['1', '2', '3', '4', '5']) cache.remember(`token-${id}`, userOf(id), 10_000)
  t.equal(cache.size, 3)
  t.equal(cache.get('token-1', 0), undefined)
  t.equal(cache.get('token-2', 0), undefined)
  t.same(['3', '4', '5'].map((id) => cache.get(`token-${id}`, 0)?.id), ['3', '4', '5'])
})
