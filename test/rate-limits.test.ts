import { createHash, randomBytes } from 'node:crypto'
import { createServer, type AddressInfo } from 'node:net'
import { setImmediate } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { App } from '../src/app.ts'
import { type FailureCounter, type SharedFailureCounter, checkPasswordLimited, failureCounterWithFallback, memoryFailureCounter } from '../src/auth/sign-in-limit.ts'
import { ipLimitSubject } from '../src/plugins/rate-limits.ts'
import { TEST_PASSWORD, bearer, build, dbAll, signup, uniqueEmail } from './helper.ts'
import { REDIS_URL, redisReachable } from './services.ts'

const retryAfter = async (counter: FailureCounter, account: string) => (await counter.attempt(account)).retryAfter

const login = (app: App, email: string, password: string, remoteAddress = '127.0.0.1') =>
  app.inject({ method: 'POST', url: '/auth/login', payload: { email, password }, remoteAddress })
const randomIp = () => `10.${[...randomBytes(3)].join('.')}`

t.test('per account: past the limit every sign-in answers 429, right password or not', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '3' })
  const email = uniqueEmail()
  const bystander = uniqueEmail()
  await signup(app, email)
  await signup(app, bystander)

  for (let attempt = 1; attempt <= 3; attempt++) {
    t.equal((await login(app, email, 'wrong password!', randomIp())).statusCode, 401, `failure ${attempt}, from anywhere`)
  }
  const blocked = await login(app, email, TEST_PASSWORD)
  t.equal(blocked.statusCode, 429, 'the correct password is refused too: no oracle')
  t.equal(blocked.json().code, 'rate_limited')
  const retryAfter = Number(blocked.headers['retry-after'])
  t.ok(retryAfter > 800 && retryAfter <= 900, `Retry-After ${retryAfter}s is the rest of the 15-minute window`)
  t.same((await login(app, email, 'wrong password!')).json(), blocked.json(), 'a wrong password answers the same')

  const token = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: email, password: TEST_PASSWORD } })
  t.equal(token.statusCode, 429, 'the password grant shares the limit')
  t.equal(token.json().error, 'rate_limited')
  const tokenRetryAfter = Number(token.headers['retry-after'])
  t.ok(Number.isInteger(tokenRetryAfter) && tokenRetryAfter > 800 && tokenRetryAfter <= 900, `Retry-After ${tokenRetryAfter}s is the rest of the window`)

  t.equal((await login(app, bystander, TEST_PASSWORD)).statusCode, 200, 'other accounts are unaffected')
})

t.test('per account: unknown emails count too, and a success resets the count', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '3' })
  const ghost = uniqueEmail('ghost')
  for (let attempt = 0; attempt < 3; attempt++) await login(app, ghost, 'any password 1')
  t.equal((await login(app, ghost, 'any password 1')).statusCode, 429)

  const email = uniqueEmail()
  await signup(app, email)
  await login(app, email, 'wrong password!')
  await login(app, email, 'wrong password!')
  t.equal((await login(app, email, TEST_PASSWORD)).statusCode, 200)
  await login(app, email, 'wrong password!')
  await login(app, email, 'wrong password!')
  t.equal((await login(app, email, TEST_PASSWORD)).statusCode, 200, 'the count started again after the success')
})

t.test('per account: password change guesses are limited', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '2' })
  const session = await signup(app)
  const change = (current: string) => app.inject({
    method: 'POST', url: '/auth/password', headers: bearer(session.access_token), payload: { current_password: current, new_password: 'a new password 2' }
  })
  t.equal((await change('wrong password!')).statusCode, 401)
  t.equal((await change('wrong password!')).statusCode, 401)
  const blocked = await change(TEST_PASSWORD)
  t.equal(blocked.statusCode, 429)
  t.equal(blocked.json().code, 'rate_limited')
  t.equal((await login(app, session.user.email, TEST_PASSWORD)).statusCode, 429, 'the account\'s sign-ins share the count')

  // And the other way: failed sign-ins for the email count against a password change.
  const other = await signup(app)
  const hashOf = async () => (await dbAll(app, 'select password_hash from users where id = ?', other.user.id))[0]!.password_hash
  const hashBefore = await hashOf()
  t.equal((await login(app, other.user.email, 'wrong password!')).statusCode, 401)
  t.equal((await login(app, other.user.email, 'wrong password!')).statusCode, 401)
  const shared = await app.inject({
    method: 'POST', url: '/auth/password', headers: bearer(other.access_token), payload: { current_password: TEST_PASSWORD, new_password: 'a new password 2' }
  })
  t.equal(shared.statusCode, 429, 'the correct current password is refused once sign-ins used the limit')
  t.equal(shared.json().code, 'rate_limited')
  t.equal(await hashOf(), hashBefore, 'the password was not changed')
})

t.test('per account, in memory: a flood of other emails cannot unlock an account, and memory stays bounded', async (t) => {
  const counter = memoryFailureCounter(3)
  const victim = 'victim@example.com'
  for (let attempt = 1; attempt <= 3; attempt++) t.equal(await retryAfter(counter, victim), 0, `attempt ${attempt}`)
  t.ok(await retryAfter(counter, victim) > 0, 'the fourth is refused')
  const early = 'early@example.com'
  t.equal(await retryAfter(counter, early), 0, 'an account with one failure, before the flood')

  // More accounts than the counter keeps windows for under the limit (about 0.5 s of hashing).
  for (let index = 0; index <= 100_000; index++) await retryAfter(counter, `made-up-${index}@example.com`)

  t.ok(await retryAfter(counter, victim) > 0, 'the locked account is still refused')
  for (let attempt = 1; attempt <= 3; attempt++) t.equal(await retryAfter(counter, early), 0, `attempt ${attempt}: the oldest open window made room`)
  t.ok(await retryAfter(counter, early) > 0, 'then its new window fills as any other')
  await counter.reset(victim)
  t.equal(await retryAfter(counter, victim), 0, 'a correct password still clears a lockout')
})

t.test('per IP: each auth endpoint allows RATE_LIMIT_IP_MAX requests a minute', async (t) => {
  const app = await build(t, { RATE_LIMIT_IP_MAX: '5' })
  const ip = randomIp()
  for (let request = 1; request <= 5; request++) {
    const response = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
    t.equal(response.statusCode, 401, `request ${request} is served`)
    t.equal(response.headers['x-ratelimit-remaining'], undefined, 'a served request says nothing about the limit')
  }
  const limited = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'rate_limited')
  const retryAfter = Number(limited.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter > 0 && retryAfter <= 60, `Retry-After ${retryAfter}s is within the minute`)
  t.equal(limited.headers['x-ratelimit-limit'], '5')
  t.equal(limited.headers['cache-control'], 'no-store')

  const otherEndpoint = await app.inject({ method: 'POST', url: '/auth/login', payload: { email: 'a@b.io', password: 'whatever 1' }, remoteAddress: ip })
  t.equal(otherEndpoint.statusCode, 401, 'each endpoint has its own budget')
  const otherIp = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: randomIp() })
  t.equal(otherIp.statusCode, 401, 'other clients are unaffected')
  const health = await app.inject({ url: '/health', remoteAddress: ip })
  t.equal(health.statusCode, 200, 'routes outside /auth are not limited')

  const session = await signup(app)
  const headIp = randomIp()
  const me = (method: 'GET' | 'HEAD') => app.inject({ method, url: '/auth/me', headers: bearer(session.access_token), remoteAddress: headIp })
  const answers = [await me('HEAD'), await me('HEAD'), await me('HEAD'), await me('GET'), await me('GET'), await me('GET'), await me('HEAD')]
  t.same(answers.map((answer) => answer.statusCode), [200, 200, 200, 200, 200, 429, 429], 'a HEAD counts with its GET, not on a budget of its own')
})

t.test('per IP: traffic from many other addresses does not reset a client\'s count', async (t) => {
  const app = await build(t, { RATE_LIMIT_IP_MAX: '2' })
  const ip = randomIp()
  const refresh = (from: string) => app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: from })
  t.same([(await refresh(ip)).statusCode, (await refresh(ip)).statusCode, (await refresh(ip)).statusCode], [401, 401, 429])
  // More addresses than @fastify/rate-limit's default store keeps (5,000), within the minute.
  for (let index = 0; index < 6_000; index++) {
    const other = await app.inject({ url: '/auth/me', remoteAddress: `10.${index >> 16}.${(index >> 8) & 255}.${index & 255}` })
    if (other.statusCode !== 401) t.fail(`request ${index} answered ${other.statusCode}`)
  }
  t.equal((await refresh(ip)).statusCode, 429, 'still refused')
})

t.test('with TRUST_PROXY listing proxies, one written with its port is still a proxy, and each client behind it counts on its own', async (t) => {
  const app = await build(t, { TRUST_PROXY: '10.0.0.0/8', RATE_LIMIT_IP_MAX: '3' })
  // An outer proxy writes the client with no port, the inner one (trusted) is written with its own.
  const refresh = (client: string, proxyPort: number) => app.inject({
    method: 'POST',
    url: '/auth/refresh',
    payload: { refresh_token: 'x' },
    remoteAddress: '10.0.0.1',
    headers: { 'x-forwarded-for': `${client}, 10.0.0.5:${proxyPort}` }
  }).then((response) => response.statusCode)
  const clients = []
  for (let index = 1; index <= 5; index++) clients.push(await refresh(`198.51.100.${index}`, 41000 + index))
  t.same(clients, [401, 401, 401, 401, 401], 'five clients, five budgets: not one for the proxy')
  const one = []
  for (let index = 0; index < 3; index++) one.push(await refresh('198.51.100.1', 42000 + index))
  t.same(one, [401, 401, 429], 'one client through ever new proxy ports: one budget')
})

t.test('with TRUST_PROXY=true, a forwarded address of any length is kept, counted and listed at an address\'s length', async (t) => {
  const app = await build(t, { TRUST_PROXY: 'true', RATE_LIMIT_IP_MAX: '2' })
  const { user } = await signup(app)
  const forwarded = `${'a'.repeat(8_000)}, 203.0.113.9`
  const send = () => app.inject({ method: 'POST', url: '/auth/login', payload: { email: user.email, password: TEST_PASSWORD }, headers: { 'x-forwarded-for': forwarded } })
  const first = await send()
  t.equal(first.statusCode, 200)
  const listed = await app.inject({ url: '/auth/sessions', headers: bearer(first.json().access_token) })
  t.same(listed.json().map((session: { ip: string | null }) => session.ip), ['a'.repeat(45), '127.0.0.1'], 'listed cut to 45 characters (after signup\'s session, sent directly)')
  const stored = await dbAll(app, 'select ip from sessions where user_id = ? order by created_at', user.id)
  t.same(stored.map((row) => row.ip), ['127.0.0.1', 'a'.repeat(45)], 'stored cut')
  t.equal((await send()).statusCode, 200)
  t.equal((await send()).statusCode, 429, 'and counted as one client')
})

t.test('per IP: an IPv6 client counts by its /64, an IPv4 address written as IPv6 as IPv4', async (t) => {
  t.equal(ipLimitSubject('203.0.113.9'), '203.0.113.9')
  t.equal(ipLimitSubject('::ffff:203.0.113.9'), '203.0.113.9')
  t.equal(ipLimitSubject('2001:db8:a:b::1'), '2001:db8:a:b::/64')
  t.equal(ipLimitSubject('2001:0DB8:000a:000b:ffff:ffff:ffff:ffff'), '2001:db8:a:b::/64', 'written in full, in capitals')
  t.equal(ipLimitSubject('2001:db8::1'), '2001:db8:0:0::/64')
  t.equal(ipLimitSubject('2001:db8:a::'), '2001:db8:a:0::/64')
  t.equal(ipLimitSubject('fe80::1%eth0'), 'fe80:0:0:0::/64', 'with a zone')
  t.equal(ipLimitSubject('::ffff:c633:6407'), '198.51.100.7', 'IPv4-mapped, in hex')
  t.equal(ipLimitSubject('0:0:0:0:0:ffff:198.51.100.7'), '198.51.100.7', 'IPv4-mapped, in full')
  t.equal(ipLimitSubject('2001:db8::1:2:3:1.2.3.4'), '2001:db8:0:1::/64', 'with an IPv4 tail, two groups long')
  t.equal(ipLimitSubject('not an address'), 'not an address')
  // As some proxies write X-Forwarded-For: a new port must not be a new budget.
  t.equal(ipLimitSubject('203.0.113.9:51234'), '203.0.113.9', 'IPv4 with a port')
  t.equal(ipLimitSubject('[2001:db8:a:b::1]:51234'), '2001:db8:a:b::/64', 'IPv6 in brackets with a port')
  t.equal(ipLimitSubject('[2001:db8:a:b::1]'), '2001:db8:a:b::/64', 'IPv6 in brackets')
  t.equal(ipLimitSubject('[::ffff:203.0.113.9]:80'), '203.0.113.9', 'IPv4-mapped, in brackets with a port')
  t.equal(ipLimitSubject('[not an address]:80'), '[not an address]:80', 'no address in the brackets: the text as it is')

  const app = await build(t, { RATE_LIMIT_IP_MAX: '3' })
  const refresh = (remoteAddress: string) =>
    app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress }).then((response) => response.statusCode)
  const answers = [await refresh('2001:db8:a:b::1'), await refresh('2001:db8:a:b::2'), await refresh('2001:db8:a:b:1:2:3:4')]
  t.same(answers, [401, 401, 401])
  t.equal(await refresh('2001:db8:a:b:ffff::9'), 429, 'a fourth address of the same /64 is refused')
  t.equal(await refresh('2001:db8:a:c::1'), 401, 'the next /64 is another client')
  t.same([await refresh('198.51.100.7'), await refresh('::ffff:198.51.100.7'), await refresh('198.51.100.7')], [401, 401, 401])
  t.equal(await refresh('::ffff:198.51.100.7'), 429, 'one IPv4 client, however its address is written')
})

t.test('per IP: the token endpoint shares login\'s count, so using both gives no more guesses', async (t) => {
  const app = await build(t, { RATE_LIMIT_IP_MAX: '4' })
  const ip = randomIp()
  const tokenRequest = (grant: Record<string, string>) => app.inject({
    method: 'POST', url: '/auth/token', payload: new URLSearchParams(grant).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' }, remoteAddress: ip
  })
  const answers = [
    (await login(app, uniqueEmail(), 'wrong password!', ip)).statusCode,
    (await tokenRequest({ grant_type: 'password', username: uniqueEmail(), password: 'wrong password!' })).statusCode,
    (await login(app, uniqueEmail(), 'wrong password!', ip)).statusCode,
    (await tokenRequest({ grant_type: 'refresh_token', refresh_token: 'x' })).statusCode
  ]
  t.same(answers, [401, 400, 401, 400], 'four requests served in all')
  const loginLimited = await login(app, uniqueEmail(), 'wrong password!', ip)
  t.equal(loginLimited.statusCode, 429, 'then login is refused')
  const tokenLimited = await tokenRequest({ grant_type: 'password', username: uniqueEmail(), password: 'wrong password!' })
  t.equal(tokenLimited.statusCode, 429, 'and the token endpoint')
  t.same(Object.keys(tokenLimited.json()).sort(), ['error', 'error_description'], 'in its RFC 6749 shape')
  t.equal(tokenLimited.json().error, 'rate_limited')
  t.match(tokenLimited.json().error_description, /^Too many attempts\. Try again in \d+ seconds\.$/)
  t.ok(Number(tokenLimited.headers['retry-after']) > 0, 'with Retry-After')
  const signup = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD }, remoteAddress: ip })
  t.equal(signup.statusCode, 201, 'other endpoints keep their own count')
})

const redisSkip = await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL} (.ci/run starts it)`

t.test('per account: a withdrawn attempt (its check never ran) no longer counts, in memory and in Redis', async (t) => {
  const counters: Array<[string, () => Promise<FailureCounter>]> = [
    ['memory', async () => memoryFailureCounter(2)]
  ]
  if (!redisSkip) counters.push(['Redis', async () => (await build(t, { REDIS_URL, RATE_LIMIT_ACCOUNT_MAX: '2' })).signInFailures])
  for (const [store, make] of counters) {
    const counter = await make()
    const account = uniqueEmail('withdrawn')
    const [first, second] = [await counter.attempt(account), await counter.attempt(account)]
    t.same([first.retryAfter, second.retryAfter], [0, 0], `${store}: two attempts`)
    await first.withdraw()
    t.equal(await retryAfter(counter, account), 0, `${store}: one was taken back, so a third is allowed`)
    t.ok(await retryAfter(counter, account) > 0, `${store}: then the limit holds`)
    const cleared = uniqueEmail('cleared')
    const stale = await counter.attempt(cleared)
    await counter.reset(cleared)
    t.same([await retryAfter(counter, cleared), await retryAfter(counter, cleared)], [0, 0], `${store}: a new count after a reset`)
    await stale.withdraw()
    t.ok(await retryAfter(counter, cleared) > 0, `${store}: an attempt of the cleared count gives the new one no credit`)
    const twice = uniqueEmail('twice')
    const [once] = [await counter.attempt(twice), await counter.attempt(twice)]
    await once.withdraw()
    await once.withdraw()
    t.equal(await retryAfter(counter, twice), 0, `${store}: taken back once`)
    t.ok(await retryAfter(counter, twice) > 0, `${store}: however often it is withdrawn`)
  }
})

t.test('per account: sign-ins refused while checks ran, none of which tested a password, are checked after all', async (t) => {
  const counter = memoryFailureCounter(2)
  const account = uniqueEmail('queued')
  // Two checks that end without a verdict (their clients left while they queued)...
  let dropQueued!: () => void
  const queued = new Promise<void>((resolve) => { dropQueued = resolve })
  const dropped = () => queued.then(() => { throw new Error('client left') })
  const first = checkPasswordLimited(counter, account, dropped, () => {})
  const second = checkPasswordLimited(counter, account, dropped, () => {})
  // ...and two more, past the limit while those run: they wait for them.
  const checked: string[] = []
  const third = checkPasswordLimited(counter, account, async () => { checked.push('third'); return false }, () => {})
  const fourth = checkPasswordLimited(counter, account, async () => { checked.push('fourth'); return false }, () => {})
  dropQueued()
  await t.rejects(first, { message: 'client left' })
  await t.rejects(second, { message: 'client left' })
  t.same(await Promise.all([third, fourth]), [false, false], 'each was checked (a wrong password), not refused with 429')
  t.same(checked.sort(), ['fourth', 'third'])
  t.ok(await retryAfter(counter, account) > 0, 'and they count: the account is now at its limit')
})

t.test('per account, across a Redis outage: an attempt is taken back from the count that holds it, never from the other', async (t) => {
  // Redis as a count that fails on demand, and an outage that never waits: each call asks it.
  let failing = false
  const unlessFailing = async <T>(run: () => Promise<T>) => {
    if (failing) throw new Error('Redis is down')
    return run()
  }
  const inRedis = memoryFailureCounter(2)
  const redis: SharedFailureCounter = {
    attempt: (account) => unlessFailing(async () => {
      const counted = await inRedis.attempt(account)
      return { retryAfter: counted.retryAfter, withdraw: () => unlessFailing(counted.withdraw) }
    }),
    reset: (account) => unlessFailing(() => inRedis.reset(account)),
    resetIfBegunBefore: () => unlessFailing(async () => {})
  }
  const inMemory = memoryFailureCounter(2)
  const outage = { waiting: false, failed () {}, recovered () {} }
  const counter = failureCounterWithFallback(redis, inMemory, outage)

  // Counted in memory while Redis failed, taken back after it recovered: from memory, where it is.
  const account = uniqueEmail('outage')
  await inRedis.attempt(account)
  await inRedis.attempt(account)
  failing = true
  const countedInMemory = await counter.attempt(account)
  failing = false
  await countedInMemory.withdraw()
  t.ok(await retryAfter(inRedis, account) > 0, 'the two other attempts Redis holds are still there: a third is past the limit')
  t.same([await retryAfter(inMemory, account), await retryAfter(inMemory, account)], [0, 0], 'and memory took it back')

  // Counted in Redis, taken back while Redis fails: memory, which never held it, gives no credit.
  const other = uniqueEmail('outage')
  const countedInRedis = await counter.attempt(other)
  await inMemory.attempt(other)
  await inMemory.attempt(other)
  failing = true
  await countedInRedis.withdraw()
  t.ok(await retryAfter(inMemory, other) > 0, 'memory\'s two attempts are still there')

  // Redis answering: taken back from Redis. Within the wait after a failure: left counted, Redis not asked.
  failing = false
  const third = uniqueEmail('outage')
  const [taken, kept] = [await counter.attempt(third), await counter.attempt(third)]
  await taken.withdraw()
  t.equal(await retryAfter(inRedis, third), 0, 'Redis took one back: a second is within the limit')
  outage.waiting = true
  await kept.withdraw()
  t.ok(await retryAfter(inRedis, third) > 0, 'while Redis is left alone, the other stays counted')
})
t.test('per account, after a Redis outage: each reset owed is sent once, whatever signs in at once, and before its account is asked', async (t) => {
  let failing = false
  const events: string[] = []
  let releaseResets = () => {}
  let resetsHeld = Promise.resolve()
  const inRedis = memoryFailureCounter(5)
  const redis: SharedFailureCounter = {
    attempt: async (account) => {
      if (failing) throw new Error('Redis is down')
      events.push(`asked ${account}`)
      return inRedis.attempt(account)
    },
    reset: async (account) => {
      if (failing) throw new Error('Redis is down')
      return inRedis.reset(account)
    },
    resetIfBegunBefore: async (account) => {
      if (failing) throw new Error('Redis is down')
      events.push(`reset ${account}`)
      await resetsHeld
      events.push(`settled ${account}`)
    }
  }
  const outage = { waiting: false, failed () {}, recovered () {} }
  const counter = failureCounterWithFallback(redis, memoryFailureCounter(5), outage)
  const sent = () => events.filter((event) => event.startsWith('reset ')).sort()

  failing = true
  await counter.reset('a@example.com')
  await counter.reset('b@example.com')
  failing = false
  resetsHeld = new Promise((resolve) => { releaseResets = resolve })
  const signIns = Array.from({ length: 20 }, (_, index) => counter.attempt(`other-${index}@example.com`))
  await setImmediate()
  t.same(sent(), ['reset a@example.com', 'reset b@example.com'], 'twenty sign-ins at once: one settling sends each owed reset once')
  t.notOk(events.some((event) => event.startsWith('asked')), 'and no account is asked before it is done')

  // Owed while that settling runs (a sign-in while Redis was left alone after a failure): not in
  // its list, but settled before its account is asked.
  outage.waiting = true
  await counter.reset('c@example.com')
  outage.waiting = false
  const late = counter.attempt('c@example.com')
  releaseResets()
  await Promise.all([...signIns, late])
  t.same(sent(), ['reset a@example.com', 'reset b@example.com', 'reset c@example.com'], 'the later one is sent, once')
  t.ok(events.indexOf('settled c@example.com') < events.indexOf('asked c@example.com'), 'before c is asked')
  t.equal(events.filter((event) => event.startsWith('asked')).length, 21, 'then every sign-in is asked')
})

t.test('with REDIS_URL the limits are shared between instances', { skip: redisSkip }, async (t) => {
  const dir = t.testdir()
  const env = { REDIS_URL, DATABASE_URL: `file:${dir}/shared.db`, RATE_LIMIT_ACCOUNT_MAX: '2', RATE_LIMIT_IP_MAX: '3' }
  const first = await build(t, env)
  const second = await build(t, env)
  // Redis outlives this run: fresh emails and addresses keep reruns from meeting old counts.
  const email = uniqueEmail(`redis-${randomBytes(4).toString('hex')}`)
  // From an address of its own too: an earlier run's signups from 127.0.0.1 still count.
  const created = await first.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD }, remoteAddress: randomIp() })
  t.equal(created.statusCode, 201)

  t.equal((await login(first, email, 'wrong password!', randomIp())).statusCode, 401)
  t.equal((await login(second, email, 'wrong password!', randomIp())).statusCode, 401)
  t.equal((await login(first, email, TEST_PASSWORD, randomIp())).statusCode, 429, 'failures on two instances add up')

  const ip = randomIp()
  for (const app of [first, second, first]) {
    await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  }
  const limited = await second.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  t.equal(limited.statusCode, 429, 'the per-IP budget is shared too')
})

t.test('when Redis is unreachable, limits fall back to each instance and requests are served', async (t) => {
  // Nothing listens on port 1: every Redis call fails at once.
  const app = await build(t, { REDIS_URL: 'redis://127.0.0.1:1', RATE_LIMIT_ACCOUNT_MAX: '2', RATE_LIMIT_IP_MAX: '4' })
  const email = uniqueEmail()
  await signup(app, email)
  t.equal((await login(app, email, TEST_PASSWORD)).statusCode, 200, 'served without Redis')
  await login(app, email, 'wrong password!')
  await login(app, email, 'wrong password!')
  t.equal((await login(app, email, TEST_PASSWORD)).statusCode, 429, 'the account limit still holds, per instance')
  const ip = randomIp()
  for (let request = 0; request < 4; request++) {
    await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  }
  const limited = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  t.equal(limited.statusCode, 429, 'and so does the IP limit')
})

/** A fake Redis on loopback answering every command with `reply` (RESP), for states a real one is rarely in. */
async function fakeRedis (t: Test, reply: (command: string) => string): Promise<string> {
  const server = createServer((socket) => socket.on('data', (data) => socket.write(reply(String(data)))))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.close(() => resolve()); server.unref() }))
  return `redis://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('a Redis that is full or still loading does not stop the start: limits fall back to memory', async (t) => {
  const full = await fakeRedis(t, () => '-ERR max number of clients reached\r\n')
  const info = '# Persistence\r\nloading:1\r\nloading_eta_seconds:60\r\n'
  const loading = await fakeRedis(t, (command) => /info/i.test(command)
    ? `$${Buffer.byteLength(info)}\r\n${info}\r\n`
    : '-LOADING Redis is loading the dataset in memory\r\n')
  // With a database number, ioredis's first command is SELECT, which a full Redis refuses.
  for (const [label, url] of [['full', `${full}/2`], ['loading', loading]] as const) {
    const app = await build(t, { REDIS_URL: url, RATE_LIMIT_ACCOUNT_MAX: '1' })
    const email = uniqueEmail()
    await signup(app, email)
    t.equal((await login(app, email, 'wrong password!')).statusCode, 401, `${label}: served`)
    t.equal((await login(app, email, TEST_PASSWORD)).statusCode, 429, `${label}: and limited, in memory`)
  }
})

// Those waiting for the checks running before them are refused when those checks fail.
t.test('per account: 30 parallel guesses cannot get past the limit together', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '3' })
  const email = uniqueEmail()
  await signup(app, email)
  const answers = await Promise.all(Array.from({ length: 30 }, (_, index) =>
    login(app, email, index === 29 ? TEST_PASSWORD : 'wrong password!', randomIp())))
  const statuses = answers.map((answer) => answer.statusCode)
  t.equal(statuses.filter((status) => status === 401).length + statuses.filter((status) => status === 200).length, 3,
    'only RATE_LIMIT_ACCOUNT_MAX attempts reach the password check')
  t.equal(statuses.filter((status) => status === 429).length, 27)
})

t.test('per account: a burst of correct sign-ins past the limit is served, as its first checks clear the count', async (t) => {
  const app = await build(t, { RATE_LIMIT_ACCOUNT_MAX: '3' })
  const email = uniqueEmail()
  await signup(app, email)
  const answers = await Promise.all(Array.from({ length: 10 }, () => login(app, email, TEST_PASSWORD, randomIp())))
  t.same(answers.map((answer) => answer.statusCode), Array(10).fill(200), 'ten at once with a limit of three: all signed in')
  t.equal((await login(app, email, 'wrong password!')).statusCode, 401, 'and the count was cleared, not left past the limit')
})

// The in-memory window ends after 15 minutes, and Retry-After is what is left of it.
t.test('per account, in memory: a window lasts 15 minutes from its first attempt, then counting starts afresh', async (t) => {
  const realNow = Date.now
  let now = realNow()
  Date.now = () => now
  t.teardown(() => { Date.now = realNow })
  const counter = memoryFailureCounter(2)

  const locked = 'locked@example.com'
  t.same([await retryAfter(counter, locked), await retryAfter(counter, locked)], [0, 0])
  t.equal(await retryAfter(counter, locked), 900, 'locked for the whole window')
  now += 10 * 60_000
  t.equal(await retryAfter(counter, locked), 300, 'Retry-After counts down to the window\'s end')
  now += 5 * 60_000 + 1000
  t.equal(await retryAfter(counter, locked), 0, 'the window ended: a new count starts')

  const open = 'open@example.com'
  now += 1000
  t.same([await retryAfter(counter, open), await retryAfter(counter, open)], [0, 0], 'at the limit, not past it')
  now += 15 * 60_000 + 1000
  t.same([await retryAfter(counter, open), await retryAfter(counter, open)], [0, 0], 'a window that ended under the limit starts afresh')
  t.equal(await retryAfter(counter, open), 900, 'and the new window locks as the first did')
})

// The per-IP limit counts a minute, so a refused client waits out the rest of that minute.
t.test('per IP: Retry-After is the rest of the one-minute window', async (t) => {
  const app = await build(t, { RATE_LIMIT_IP_MAX: '2' })
  const ip = randomIp()
  for (let request = 0; request < 2; request++) {
    await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  }
  const limited = await app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, remoteAddress: ip })
  t.equal(limited.statusCode, 429)
  const retryAfter = Number(limited.headers['retry-after'])
  t.ok(retryAfter > 50 && retryAfter <= 60, `Retry-After ${retryAfter}s: the rest of a minute`)
})

// With Redis the account window starts at the first attempt; later attempts do not extend it.
t.test('per account, in Redis: attempts inside the window do not extend it', {
  skip: await redisReachable() ? false : `Redis is not reachable at ${REDIS_URL}`
}, async (t) => {
  const app = await build(t, { REDIS_URL, RATE_LIMIT_ACCOUNT_MAX: '1' })
  const { Redis } = await import('ioredis')
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  const email = uniqueEmail(`window-${randomBytes(4).toString('hex')}`)
  t.equal((await login(app, email, 'wrong password!', randomIp())).statusCode, 401)
  // As if the first attempt were 14 min 57 s ago.
  const key = `gatehouse:signin-failures:${createHash('sha256').update(email).digest('base64url')}`
  t.equal(await redis.pexpire(key, 3000), 1, 'the count is kept under the email\'s digest')
  const limited = await login(app, email, 'wrong password!', randomIp())
  t.equal(limited.statusCode, 429)
  t.ok(Number(limited.headers['retry-after']) <= 3, `Retry-After ${limited.headers['retry-after']}s: the window was not restarted`)
  t.ok(await redis.pttl(key) <= 3000, 'nor its key\'s expiry')
})

t.test('per account, in Redis: a successful sign-in starts the count afresh', { skip: redisSkip }, async (t) => {
  const app = await build(t, { REDIS_URL, RATE_LIMIT_ACCOUNT_MAX: '2' })
  // Redis outlives this run: a fresh email keeps reruns from meeting old counts.
  const email = uniqueEmail(`reset-${randomBytes(4).toString('hex')}`)
  const created = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD }, remoteAddress: randomIp() })
  t.equal(created.statusCode, 201)
  t.equal((await login(app, email, 'wrong password!', randomIp())).statusCode, 401)
  t.equal((await login(app, email, TEST_PASSWORD, randomIp())).statusCode, 200, 'the second attempt, correct: the count is cleared')
  t.equal((await login(app, email, 'wrong password!', randomIp())).statusCode, 401, 'a first failure again')
  t.equal((await login(app, email, 'wrong password!', randomIp())).statusCode, 401, 'and a second, still within the limit')
  t.equal((await login(app, email, TEST_PASSWORD, randomIp())).statusCode, 429, 'the third attempt since the reset is past it')
})

t.test('per IP, in Redis: a forwarded address of any length is counted under an address-length key', { skip: redisSkip }, async (t) => {
  const app = await build(t, { REDIS_URL, TRUST_PROXY: 'true', RATE_LIMIT_IP_MAX: '2' })
  const { Redis } = await import('ioredis')
  const redis = new Redis(REDIS_URL)
  t.teardown(() => redis.disconnect())
  // Redis outlives this run: a fresh address keeps reruns from meeting old counts.
  const forwarded = `${randomBytes(4).toString('hex')}${'a'.repeat(8_000)}`
  const send = () => app.inject({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'x' }, headers: { 'x-forwarded-for': forwarded } })
  t.equal((await send()).statusCode, 401)
  const keys = await redis.keys(`gatehouse:ip-limit:${forwarded.slice(0, 8)}*`)
  t.equal(keys.length, 1, 'one count')
  t.ok(keys[0]!.startsWith(`gatehouse:ip-limit:${forwarded.slice(0, 45)}|`), 'keyed by the address cut to 45 characters')
  t.ok(keys[0]!.length < 200, `a key of ${keys[0]!.length} characters, not of the header's`)
  t.equal((await send()).statusCode, 401)
  t.equal((await send()).statusCode, 429, 'counted as one client')
})
