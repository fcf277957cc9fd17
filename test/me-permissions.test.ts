import t from 'tap'
import { PERMISSIONS } from '../src/auth/permissions.ts'
import { TEST_SECRET, bearer, build, dbRun, forgeToken, signup, signupWithRoles, validClaims } from './helper.ts'

t.test('GET /me/permissions lists the roles of the token and what they grant', async (t) => {
  const app = await build(t)
  const cases: Array<[string[], string[]]> = [
    [['user'], ['clothes:read']],
    [['user', 'member'], ['clothes:read', 'videos:watch-member']],
    [['user', 'developer'], ['clothes:read', 'videos:watch-member', 'videos:publish']],
    [['user', 'admin'], [...PERMISSIONS]]
  ]
  for (const [roles, permissions] of cases) {
    const session = await signupWithRoles(app, roles)
    const response = await app.inject({ url: '/me/permissions', headers: bearer(session.access_token) })
    t.equal(response.statusCode, 200, roles.join())
    t.same(response.json(), { user_id: session.user.id, roles, permissions }, roles.join())
    t.equal(response.headers['cache-control'], 'no-store', 'personal: never cached')
  }
})

t.test('GET /me/permissions answers from the token alone: no database read', async (t) => {
  const app = await build(t)
  const session = await signup(app)
  // The user is promoted and then deleted behind the token's back: the token still says what it
  // said when it was issued, for at most one access lifetime (contract: stateless checks).
  await dbRun(app, 'update users set roles = ? where id = ?', ['user', 'admin'], session.user.id)
  const promoted = await app.inject({ url: '/me/permissions', headers: bearer(session.access_token) })
  t.same(promoted.json().roles, ['user'], 'a role change shows after the next refresh, not before')
  await dbRun(app, 'delete from users where id = ?', session.user.id)
  const deleted = await app.inject({ url: '/me/permissions', headers: bearer(session.access_token) })
  t.equal(deleted.statusCode, 200)
  t.same(deleted.json().permissions, ['clothes:read'])
})

t.test('GET /me/permissions refuses missing, forged, expired and wrong-secret tokens', async (t) => {
  const app = await build(t)
  const session = await signup(app)

  const missing = await app.inject({ url: '/me/permissions' })
  t.equal(missing.statusCode, 401)
  t.equal(missing.json().code, 'missing_token')
  t.equal(missing.headers['www-authenticate'], 'Bearer realm="gatehouse"')

  const admin = forgeToken(validClaims(session, { roles: ['user', 'admin'] }), { secret: 'another-secret-that-is-at-least-32-bytes!!' })
  const forged = await app.inject({ url: '/me/permissions', headers: bearer(admin) })
  t.equal(forged.statusCode, 401, 'roles signed with another secret are refused')
  t.equal(forged.json().code, 'invalid_token')

  // One character in the middle of the signature: its last characters may carry padding bits.
  const at = session.access_token.lastIndexOf('.') + 10
  const tampered = session.access_token.slice(0, at) + (session.access_token[at] === 'A' ? 'B' : 'A') + session.access_token.slice(at + 1)
  t.equal((await app.inject({ url: '/me/permissions', headers: bearer(tampered) })).statusCode, 401)

  const past = Math.floor(Date.now() / 1000) - 3600
  const expired = forgeToken(validClaims(session, { iat: past - 900, exp: past }), { secret: TEST_SECRET })
  const late = await app.inject({ url: '/me/permissions', headers: bearer(expired) })
  t.equal(late.statusCode, 401)
  t.equal(late.json().code, 'token_expired')

  const malformed = await app.inject({ url: '/me/permissions', headers: { authorization: 'Bearer one two' } })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'invalid_request')
  for (const refused of [missing, forged, late, malformed]) t.equal(refused.headers['cache-control'], 'no-store', 'errors are not cached either')
})
