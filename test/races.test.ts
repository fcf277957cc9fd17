import t from 'tap'
import { TEST_PASSWORD, build, dbCount, signup, uniqueEmail } from './helper.ts'

t.test('50 concurrent signups with one email produce exactly one user', async (t) => {
  const app = await build(t)
  const email = uniqueEmail('race')
  const responses = await Promise.all(Array.from({ length: 50 }, (_, index) => app.inject({
    method: 'POST',
    url: '/auth/signup',
    // The same account spelled 50 ways: case and spaces differ, the normalised email does not.
    payload: { email: index % 2 ? email.toUpperCase() : ` ${email} `, password: TEST_PASSWORD }
  })))
  const statuses = responses.map((response) => response.statusCode)
  t.equal(statuses.filter((status) => status === 201).length, 1)
  t.equal(statuses.filter((status) => status === 409).length, 49)
  t.ok(responses.filter((response) => response.statusCode === 409).every((response) => response.json().code === 'email_taken'))
  t.equal(await dbCount(app, 'select count(*) as n from users where email = ?', email), 1)
  t.equal(await dbCount(app, 'select count(*) as n from sessions'), 1, 'only the winner got a session')
})

t.test('bodies over 8 KiB get 413 before any work is done', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD, name: 'x'.repeat(9000) } })
  t.equal(response.statusCode, 413)
  t.equal(response.json().code, 'payload_too_large')
  t.equal(await dbCount(app, 'select count(*) as n from users'), 0)
  await signup(app)
})

t.test('common passwords are refused with weak_password', async (t) => {
  const app = await build(t)
  for (const password of ['password', 'Password1', 'iloveyou2', '12345678', 'qwertyuiop']) {
    const response = await app.inject({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password } })
    t.equal(response.statusCode, 400, password)
    t.equal(response.json().code, 'weak_password', password)
  }
})
