import { hash } from '@node-rs/argon2'
import argon2 from 'argon2'
import t from 'tap'
import { HASH_OPTIONS, hashPassword, hashSlots, needsRehash, passwordProblem, poolThreads, verifyPassword } from '../src/auth/passwords.ts'
import { TEST_PASSWORD, build, dbCount, dbGet, dbRun, signup, uniqueEmail } from './helper.ts'

t.test('needsRehash upgrades weaker hashes and leaves stronger ones alone', async (t) => {
  t.equal(needsRehash(await hashPassword('a password')), false, 'current parameters')
  t.equal(needsRehash(await hash('a password', { ...HASH_OPTIONS, memoryCost: 65536, timeCost: 3 })), false, 'stronger')
  t.equal(needsRehash(await hash('a password', { ...HASH_OPTIONS, memoryCost: 8192 })), true, 'less memory')
  t.equal(needsRehash(await hash('a password', { ...HASH_OPTIONS, timeCost: 1 })), true, 'fewer passes')
  t.equal(needsRehash(await hash('a password', { ...HASH_OPTIONS, algorithm: 1 })), true, 'argon2i')
  t.equal(needsRehash(await hash('a password', { ...HASH_OPTIONS, version: 0 })), true, 'argon2 version 0x10')
  t.equal(needsRehash('$2b$10$abcdefghijklmnopqrstuv'), true, 'not argon2 at all')
})

t.test('hashes made by the argon2 package (the earlier hasher) keep verifying, and vice versa', async (t) => {
  const earlier = await argon2.hash('a password', { type: argon2.argon2id, memoryCost: 19_456, timeCost: 2, parallelism: 1 })
  t.equal(await verifyPassword(earlier, 'a password'), true)
  t.equal(await verifyPassword(earlier, 'another password'), false)
  t.equal(needsRehash(earlier), false, 'same parameters: no rehash needed')
  t.equal(await argon2.verify(await hashPassword('a password'), 'a password'), true)
})

t.test('verifyPassword fails closed on a malformed hash', async (t) => {
  t.equal(await verifyPassword('not a hash', 'x'), false)
})

t.test('hashes leave a core and a thread of the libuv pool free', async (t) => {
  t.equal(hashSlots(2, 4), 1, '2 cores: one hashes')
  t.equal(hashSlots(16, 4), 3, '16 cores, the default pool of 4: one pool thread stays free for DNS and files')
  t.equal(hashSlots(16, 64), 15, 'a larger pool (UV_THREADPOOL_SIZE): the cores decide')
  t.equal(hashSlots(1, 4), 1, 'one core still hashes')
  t.equal(hashSlots(8, 1), 1, 'a pool of one still hashes')
  // As libuv reads UV_THREADPOOL_SIZE.
  t.same([undefined, '8', '0', 'junk', '-3', '5000', '12abc'].map(poolThreads), [4, 8, 1, 1, 1, 1024, 12])
  t.equal(hashSlots(16, poolThreads('0')), 1, 'UV_THREADPOOL_SIZE=0 is a pool of one: one slot, not three')
})

t.test('password policy', async (t) => {
  t.equal(passwordProblem('long enough password', 'a@b.io'), undefined)
  t.match(passwordProblem('short', 'a@b.io'), /8 to 128/)
  t.match(passwordProblem('x'.repeat(129), 'a@b.io'), /8 to 128/)
  t.match(passwordProblem(' Ada@Example.io ', 'ada@example.io'), /email/)
  t.match(passwordProblem(' password123 ', 'a@b.io'), /most commonly used/, 'spaces around a common password')
  t.match(passwordProblem('\tPassword123\n', 'a@b.io'), /most commonly used/)
  t.match(passwordProblem(' '.repeat(8), 'a@b.io'), /8 characters besides any whitespace/)
  t.match(passwordProblem(' \t '.repeat(4), 'a@b.io'), /8 characters besides any whitespace/)
  // The most common passwords are short: padded to the length, they would pass a list of longer ones.
  for (const padded of [' 123456 ', '  qwerty', 'abc123  ', ' 1234567', '\u00a0letmein']) {
    t.match(passwordProblem(padded, 'a@b.io'), /8 characters besides any whitespace/, JSON.stringify(padded))
  }
  // Exactly the minimum length: the list keeps the common passwords of 8 characters too.
  for (const common of ['password', '12345678', 'PassWord', 'iloveyou']) {
    t.match(passwordProblem(common, 'a@b.io'), /most commonly used/, common)
  }
  t.equal(passwordProblem(' a long passphrase ', 'a@b.io'), undefined, 'spaces are allowed, and kept')
  // Characters are code points, as the schemas' maxLength counts them: an emoji is one, not two UTF-16 units.
  t.equal(passwordProblem('🦄'.repeat(128), 'a@b.io'), undefined, '128 emoji are 128 characters')
  t.match(passwordProblem('🦄'.repeat(4), 'a@b.io'), /8 to 128/, 'four emoji are four characters, too few')
  t.match(passwordProblem(` ${'🦄'.repeat(4)} `, 'a@b.io'), /8 to 128|8 characters besides any whitespace/, 'and padded, still too few')
})

t.test('a password is the same password however its characters are composed (NFKC, NIST SP 800-63B §5.1.1.2)', async (t) => {
  const app = await build(t)
  const composed = 'Crème brûlée à la mode'.normalize('NFC')
  const decomposed = composed.normalize('NFD')
  t.not(composed, decomposed)
  const signIn = (email: string, password: string) => app.inject({ method: 'POST', url: '/auth/login', payload: { email, password } })
  for (const [setAs, typedAs] of [[composed, decomposed], [decomposed, composed]]) {
    const email = uniqueEmail()
    t.equal((await app.inject({ method: 'POST', url: '/auth/signup', payload: { email, password: setAs } })).statusCode, 201)
    t.equal((await signIn(email, typedAs!)).statusCode, 200, 'typed the other way')
    t.equal((await signIn(email, setAs!)).statusCode, 200, 'typed as set')
    t.equal((await signIn(email, 'Creme brulee a la mode')).statusCode, 401, 'without the accents it is another password')
  }
  // Compatibility forms too: fullwidth letters are the common password they spell.
  t.match(passwordProblem('ｐａｓｓｗｏｒｄ１２３', 'a@b.io'), /most commonly used/)
  const signup = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: 'ｐａｓｓｗｏｒｄ１２３' } })
  t.equal(signup.json().code, 'weak_password')
})

t.test('a hash made of a password as typed, before passwords were normalised, keeps verifying and is replaced at the next sign-in', async (t) => {
  const app = await build(t)
  const decomposed = 'Crème brûlée à la mode'.normalize('NFD')
  const email = uniqueEmail()
  const legacy = await hash(decomposed, HASH_OPTIONS)
  await app.usersRepository.create({ email, passwordHash: legacy, roles: ['user'] })
  t.equal(await verifyPassword(legacy, decomposed), true, 'verifyPassword takes the password as it was hashed')
  t.equal(await verifyPassword(legacy, 'Crème brûlée à la mode?'.normalize('NFD')), false)
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: decomposed } })
  t.equal(login.statusCode, 200)
  const { password_hash: replaced } = await dbGet(app, 'select password_hash from users where email = ?', email) as { password_hash: string }
  t.not(replaced, legacy, 'the hash is made again, of the normalised password')
  const composed = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: decomposed.normalize('NFC') } })
  t.equal(composed.statusCode, 200, 'so the password now signs in however it is typed')
  t.equal((await dbGet(app, 'select password_hash from users where email = ?', email))!.password_hash, replaced, 'and is not hashed again')
})

t.test('a hash of a password as typed is kept when, normalised, the password would be a common one', async (t) => {
  const app = await build(t)
  const fullwidth = 'ｐａｓｓｗｏｒｄ１２３'
  const email = uniqueEmail()
  const legacy = await hash(fullwidth, HASH_OPTIONS)
  await app.usersRepository.create({ email, passwordHash: legacy, roles: ['user'] })
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: fullwidth } })).statusCode, 200, 'the password as typed signs in')
  t.equal((await dbGet(app, 'select password_hash from users where email = ?', email))!.password_hash, legacy, 'its hash is kept')
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: 'password123' } })).statusCode, 401,
    'so the common password it spells does not open the account')
})

t.test('a login upgrades an outdated hash and keeps the password working', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const weak = await hash(TEST_PASSWORD, { ...HASH_OPTIONS, memoryCost: 4096, timeCost: 1 })
  await app.usersRepository.create({ email, passwordHash: weak, roles: ['user'] })
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  const { password_hash: upgraded } = await dbGet(app, 'select password_hash from users where email = ?', email) as { password_hash: string }
  t.not(upgraded, weak)
  t.equal(needsRehash(upgraded), false)
  t.equal((await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })).statusCode, 200)
  t.equal((await dbGet(app, 'select password_hash from users where email = ?', email))!.password_hash, upgraded,
    'the upgraded hash is current: the next login leaves it as it is')
})

t.test('a login with a current hash leaves it as it is, on both sign-in routes', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  await signup(app, email)
  const stored = async () => (await dbGet(app, 'select password_hash, updated_at from users where email = ?', email))!
  const before = await stored()
  t.equal(needsRehash(before.password_hash as string), false)
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 200)
  const token = await app.inject({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: email, password: TEST_PASSWORD } })
  t.equal(token.statusCode, 200)
  t.same(await stored(), before, 'no new hash was written, and updated_at did not move')
})

t.test('a disabled account\'s outdated hash is not upgraded: its sign-in is refused, not successful', async (t) => {
  const app = await build(t)
  const email = uniqueEmail()
  const weak = await hash(TEST_PASSWORD, { ...HASH_OPTIONS, memoryCost: 4096, timeCost: 1 })
  const user = await app.usersRepository.create({ email, passwordHash: weak, roles: ['user'] })
  await dbRun(app, 'update users set disabled = ? where email = ?', true, email)
  const stored = async () => (await dbGet(app, 'select password_hash, updated_at from users where email = ?', email))!
  const before = await stored()
  const login = await app.inject({ method: 'POST', url: '/auth/login', payload: { email, password: TEST_PASSWORD } })
  t.equal(login.statusCode, 403)
  t.equal(login.json().code, 'user_disabled')
  t.same(await stored(), before, 'the old hash stays, and updated_at does not move')
  t.equal(await dbCount(app, 'select count(*) as n from sessions where user_id = ?', user!.id), 0, 'and no session was opened')
})
