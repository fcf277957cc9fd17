// What the app answers is what /openapi.json documents: a scenario exercises every operation, its
// successes and its main failures, records each answer, and checks its status, body and headers
// against the document the app serves. test/openapi.test.ts checks the document itself; this checks
// that a client generated from it can read every answer it gets.
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js'
import addFormats from 'ajv-formats'
import type { InjectOptions, LightMyRequestResponse } from 'fastify'
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { App } from '../src/app.ts'
import { TEST_PASSWORD, bearer, build, uniqueEmail, type SessionBody } from './helper.ts'

type JsonSchema = Record<string, unknown>
interface MediaType { schema?: JsonSchema }
interface ResponseObject { description?: string, headers?: Record<string, { schema?: JsonSchema, required?: boolean }>, content?: Record<string, MediaType> }
interface Operation { operationId?: string, security?: Array<Record<string, string[]>>, responses: Record<string, ResponseObject> }
interface OpenApiDocument { paths: Record<string, Record<string, Operation>>, components?: { schemas?: Record<string, JsonSchema> } }

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace']
const BODY_METHODS = new Set(['post', 'put', 'patch', 'delete'])
const DOCUMENT_ID = 'urn:gatehouse:openapi'
const ADMIN = { ADMIN_EMAIL: 'root@example.com', ADMIN_PASSWORD: 'the admin password of this test' }

/** Every operation of the document: `METHOD /path/{param}`, with the operation. */
function operationsOf (document: OpenApiDocument): Array<{ method: string, path: string, operation: Operation }> {
  return Object.entries(document.paths).flatMap(([path, item]) => Object.entries(item)
    .filter(([method]) => HTTP_METHODS.includes(method))
    .map(([method, operation]) => ({ method: method.toUpperCase(), path, operation })))
}

/**
 * The documented path template a request URL falls under, as a client reads the document: literal
 * segments before parameters (`/videos/member` before `/videos/{id}`). build() hands over an app
 * that is ready, so no hook can report the route Fastify matched; the scenario first checks that each
 * template is a registered route.
 */
function pathMatcher (document: OpenApiDocument) {
  const templates = Object.keys(document.paths)
    .map((path) => ({
      path,
      parameters: (path.match(/\{[^}]+\}/g) ?? []).length,
      pattern: new RegExp(`^${path.split(/\{[^}]+\}/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[^/]+')}$`)
    }))
    .sort((a, b) => a.parameters - b.parameters)
  return (url: string) => {
    const pathname = url.split('?')[0]!
    return templates.find(({ pattern }) => pattern.test(pathname))?.path
  }
}

/** JSON pointer into the document, as a URI fragment. */
const pointer = (...tokens: string[]) => tokens.map((token) => `/${encodeURIComponent(token.replaceAll('~', '~0').replaceAll('/', '~1'))}`).join('')

/**
 * Validators of the document's schemas, JSON Schema 2020-12 as OpenAPI 3.1 has them: the document
 * is one schema resource, so each `#/components/schemas/…` reference resolves inside it.
 */
function schemaValidators (document: OpenApiDocument) {
  const ajv = new Ajv2020({ strict: false, allErrors: true })
  addFormats.default(ajv)
  ajv.addSchema(document, DOCUMENT_ID)
  const cache = new Map<string, ValidateFunction>()
  const at = (fragment: string): ValidateFunction => {
    let validate = cache.get(fragment)
    if (!validate) {
      validate = ajv.getSchema(`${DOCUMENT_ID}#${fragment}`)
      if (!validate) throw new Error(`no schema at ${fragment}`)
      cache.set(fragment, validate)
    }
    return validate
  }
  /** `$ref`s followed to the schema they name. */
  const resolve = (schema: JsonSchema): JsonSchema => {
    let resolved = schema
    for (let hops = 0; typeof resolved.$ref === 'string' && hops < 10; hops++) {
      const name = /^#\/components\/schemas\/([^/]+)$/.exec(resolved.$ref)?.[1]
      const target = name === undefined ? undefined : document.components?.schemas?.[decodeURIComponent(name)]
      if (!target) break
      resolved = target
    }
    return resolved
  }
  /**
   * Properties in the body that the schema does not name (where it names them and says nothing of
   * others): a client generated from the document would never see them.
   */
  const undocumented = (schema: JsonSchema, value: unknown, at: string): string[] => {
    const resolved = resolve(schema)
    const branches = [resolved.anyOf, resolved.oneOf].flatMap((list) => Array.isArray(list) ? list as JsonSchema[] : [])
    if (branches.length > 0) {
      const kind = Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value
      const fitting = branches.filter((branch) => {
        const type = resolve(branch).type
        return type === kind || (kind === 'number' && type === 'integer')
      })
      return fitting.length === 1 ? undocumented(fitting[0]!, value, at) : []
    }
    if (Array.isArray(value)) {
      const items = resolved.items as JsonSchema | undefined
      return items ? value.flatMap((item, index) => undocumented(items, item, `${at}/${index}`)) : []
    }
    if (value === null || typeof value !== 'object') return []
    const properties = resolved.properties as Record<string, JsonSchema> | undefined
    if (!properties || resolved.additionalProperties !== undefined || resolved.patternProperties !== undefined) return []
    return Object.entries(value).flatMap(([key, item]) => properties[key]
      ? undocumented(properties[key], item, `${at}/${key}`)
      : [`${at}/${key}`])
  }
  return { at, undocumented }
}

interface Answer {
  method: string
  url: string
  /** The documented path template the URL falls under, if any. */
  path: string | undefined
  status: number
  headers: LightMyRequestResponse['headers']
  body: string
}

type Request = InjectOptions & { url: string }

/**
 * app.inject that keeps every answer, and checks the scenario got the answer it set out to get
 * (any answer, when it names no status).
 */
function recorder (t: Test, app: App, document: OpenApiDocument) {
  const answers: Answer[] = []
  const pathOf = pathMatcher(document)
  async function call (request: Request, status?: number, code?: string) {
    const response = await app.inject(request)
    const method = request.method ?? 'GET'
    answers.push({ method, url: request.url, path: pathOf(request.url), status: response.statusCode, headers: response.headers, body: response.body })
    const name = `${method} ${request.url}`
    if (status === undefined) return response
    t.equal(response.statusCode, status, `scenario: ${name} answers ${status}${code ? ` ${code}` : ''}`)
    if (code !== undefined && response.statusCode === status) {
      const body = response.json() as { code?: string, error?: string }
      t.equal(body.code ?? body.error, code, `scenario: ${name} answers ${code}`)
    }
    return response
  }
  return { call, answers }
}

/** The response object documented for this status: the code itself, its range (4XX), or default. */
function documentedAnswer (operation: Operation, status: number): [string, ResponseObject] | undefined {
  for (const key of [String(status), `${String(status)[0]}XX`, 'default']) {
    const answer = operation.responses[key]
    if (answer) return [key, answer]
  }
  return undefined
}

/** Checks each answer against the document: its operation, status, body and headers. */
function checkAnswers (t: Test, document: OpenApiDocument, answers: Answer[]) {
  const validators = schemaValidators(document)
  for (const answer of answers) {
    const method = answer.method.toLowerCase()
    const name = `${answer.method} ${answer.path ?? answer.url} ${answer.status}`
    const operation = answer.path === undefined ? undefined : document.paths[answer.path]?.[method]
    if (!t.ok(operation, `${answer.method} ${answer.url} is a documented operation`) || !operation) continue
    const documented = documentedAnswer(operation, answer.status)
    if (!t.ok(documented, `${name}: the status is documented (documented: ${Object.keys(operation.responses).join(', ')}) for ${answer.url}: ${answer.body.slice(0, 200)}`) || !documented) continue
    const [key, response] = documented
    const contentType = String(answer.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase()
    const mediaTypes = Object.keys(response.content ?? {})
    if (mediaTypes.length === 0) {
      t.equal(answer.body, '', `${name}: no body, as documented`)
    } else if (t.ok(mediaTypes.includes(contentType), `${name}: content type ${contentType || 'none'} is documented (${mediaTypes.join(', ')})`)) {
      const schema = response.content?.[contentType]?.schema
      if (schema && /^application\/(.+\+)?json$/.test(contentType)) {
        let body: unknown
        try {
          body = JSON.parse(answer.body)
        } catch {
          t.fail(`${name}: the body is JSON: ${answer.body.slice(0, 200)}`)
          continue
        }
        const validate = validators.at(pointer('paths', answer.path!, method, 'responses', key, 'content', contentType, 'schema'))
        validate(body)
        t.same(validate.errors ?? [], [], `${name}: the body matches the documented schema (${answer.url})`)
        t.same(validators.undocumented(schema, body, ''), [], `${name}: the body has no property the schema does not name (${answer.url})`)
      }
    }
    for (const [header, { schema, required }] of Object.entries(response.headers ?? {})) {
      const value = answer.headers[header.toLowerCase()]
      if (required) t.not(value, undefined, `${name}: header ${header} is sent, as documented (${answer.url})`)
      if (value === undefined || !schema) continue
      const type = schema.type
      const typed = type === 'integer' || type === 'number' ? (/^-?\d+(\.\d+)?$/.test(String(value)) ? Number(value) : value) : value
      const validate = validators.at(pointer('paths', answer.path!, method, 'responses', key, 'headers', header, 'schema'))
      validate(typed)
      t.same(validate.errors ?? [], [], `${name}: header ${header}: ${String(value)} is as documented`)
    }
  }
}

async function documentOf (app: App): Promise<OpenApiDocument> {
  const response = await app.inject({ url: '/openapi.json' })
  if (response.statusCode !== 200) throw new Error(`GET /openapi.json answered ${response.statusCode}`)
  return response.json()
}

const form = (fields: Record<string, string>) => ({
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  payload: new URLSearchParams(fields).toString()
})
const withParameters = (path: string) => path.replace(/\{[^}]+\}/g, () => randomUUID())

t.test('every answer of a full scenario is documented in /openapi.json', async (t) => {
  const app = await build(t, ADMIN)
  const document = await documentOf(app)
  const operations = operationsOf(document)
  t.ok(operations.length >= 20, `${operations.length} documented operations`)
  const unrouted = operations.filter(({ method, path }) => !app.hasRoute({ method: method as 'GET', url: path.replace(/\{(\w+)\}/g, ':$1') }))
    .map(({ method, path }) => `${method} ${path}`)
  t.same(unrouted, [], 'every documented operation is a route, so request URLs map to the route they reach')
  const { call, answers } = recorder(t, app, document)
  const session = async (request: Request, status = 200) => (await call(request, status)).json() as SessionBody
  const login = (email: string, password = TEST_PASSWORD) =>
    session({ method: 'POST', url: '/auth/login', payload: { email, password } })

  // Public
  await call({ url: '/health' }, 200)
  await call({ url: '/videos' }, 200)

  // Accounts: the admin from ADMIN_EMAIL, users who sign up, roles given by the admin.
  const admin = await login(ADMIN.ADMIN_EMAIL, ADMIN.ADMIN_PASSWORD)
  const aliceEmail = uniqueEmail('alice')
  let alice = await session({ method: 'POST', url: '/auth/signup', payload: { email: aliceEmail, password: TEST_PASSWORD, name: 'Alice' } }, 201)
  await call({ method: 'POST', url: '/auth/signup', payload: { email: aliceEmail, password: TEST_PASSWORD } }, 409, 'email_taken')
  await call({ method: 'POST', url: '/auth/signup', payload: { email: 'not an email', password: TEST_PASSWORD } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: 'short' } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: TEST_PASSWORD, admin: true } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail(), password: 'password' } }, 400, 'weak_password')
  await call({ method: 'POST', url: '/auth/signup', headers: { 'content-type': 'application/json' }, payload: '{"email":' }, 400, 'invalid_body')
  const withRoles = async (roles: string[]) => {
    const email = uniqueEmail(roles[0])
    const signedUp = await session({ method: 'POST', url: '/auth/signup', payload: { email, password: TEST_PASSWORD } }, 201)
    await call({ method: 'PATCH', url: `/admin/users/${signedUp.user.id}`, headers: bearer(admin.access_token), payload: { roles } }, 200)
    // A role change revokes the user's sessions: sign in again for a token with the roles.
    return login(email)
  }
  const developer = await withRoles(['developer'])
  const member = await withRoles(['member'])

  // Sign-in
  await call({ method: 'POST', url: '/auth/login', payload: { email: aliceEmail, password: 'not the password' } }, 401, 'invalid_credentials')
  await call({ method: 'POST', url: '/auth/login', payload: { email: uniqueEmail('nobody'), password: TEST_PASSWORD } }, 401, 'invalid_credentials')
  await call({ method: 'POST', url: '/auth/login', payload: { email: aliceEmail } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/login' }, 400, 'invalid_body')
  const aliceSecond = await login(` ${aliceEmail.toUpperCase()} `)

  // The token endpoint: RFC 6749 answers, JSON or form.
  await session({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password', username: aliceEmail, password: TEST_PASSWORD, client_id: 'postman' } })
  const aliceThird = await session({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'password', username: aliceEmail, password: TEST_PASSWORD }) })
  const aliceFourth = await session({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'refresh_token', refresh_token: aliceThird.refresh_token }) })
  await call({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'password', username: aliceEmail, password: 'not the password' }) }, 400, 'invalid_grant')
  await call({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'refresh_token', refresh_token: 'no such token' }) }, 400, 'invalid_grant')
  await call({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'client_credentials' }) }, 400, 'unsupported_grant_type')
  await call({ method: 'POST', url: '/auth/token', ...form({ username: aliceEmail }) }, 400, 'invalid_request')
  await call({ method: 'POST', url: '/auth/token', payload: { grant_type: 'password' } }, 400, 'invalid_request')
  await call({ method: 'POST', url: '/auth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'grant_type=password&grant_type=password' }, 400, 'invalid_request')
  await call({ method: 'POST', url: '/auth/token', payload: { grant_type: 42 } }, 400, 'invalid_request')

  // Refresh
  alice = await session({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: alice.refresh_token } })
  await call({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: 'no such token' } }, 401, 'invalid_refresh_token')
  await call({ method: 'POST', url: '/auth/refresh', payload: {} }, 400, 'validation_error')

  // The signed-in user
  await call({ url: '/auth/me', headers: bearer(alice.access_token) }, 200)
  await call({ url: '/auth/me' }, 401, 'missing_token')
  await call({ url: '/auth/me', headers: bearer('not.a.token') }, 401, 'invalid_token')
  await call({ url: '/auth/me', headers: { authorization: 'Bearer' } }, 400, 'invalid_request')
  await call({ url: '/auth/me', headers: { authorization: 'Bearer one two' } }, 400, 'invalid_request')
  await call({ method: 'PATCH', url: '/auth/me', headers: bearer(alice.access_token), payload: { name: 'Alice A.' } }, 200)
  await call({ method: 'PATCH', url: '/auth/me', headers: bearer(alice.access_token), payload: { name: null } }, 200)
  await call({ method: 'PATCH', url: '/auth/me', headers: bearer(alice.access_token), payload: { name: '' } }, 400, 'validation_error')
  await call({ method: 'PATCH', url: '/auth/me', payload: { name: 'Nobody' } }, 401, 'missing_token')
  await call({ url: '/me/permissions', headers: bearer(alice.access_token) }, 200)
  await call({ url: '/me/permissions', headers: bearer(admin.access_token) }, 200)
  await call({ url: '/me/permissions' }, 401, 'missing_token')
  await call({ url: '/me/permissions', headers: { authorization: 'Bearer one two' } }, 400, 'invalid_request')

  // Sessions
  const sessions = (await call({ url: '/auth/sessions', headers: bearer(alice.access_token) }, 200)).json() as Array<{ id: string, current: boolean }>
  t.ok(sessions.length >= 3, `alice has ${sessions.length} sessions`)
  const other = sessions.find((item) => !item.current)!
  await call({ method: 'DELETE', url: `/auth/sessions/${other.id}`, headers: bearer(alice.access_token) }, 204)
  await call({ method: 'DELETE', url: `/auth/sessions/${other.id}`, headers: bearer(alice.access_token) }, 404, 'not_found')
  await call({ method: 'DELETE', url: `/auth/sessions/${randomUUID()}`, headers: bearer(alice.access_token) }, 404, 'not_found')
  await call({ method: 'DELETE', url: '/auth/sessions/not-a-uuid', headers: bearer(alice.access_token) }, 400, 'validation_error')
  await call({ url: '/auth/sessions' }, 401, 'missing_token')

  // Videos: developers publish, owners and admins change, members watch.
  const free = (await call({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { title: 'Intro', author: 'Dev', url: 'https://videos.example.com/intro.mp4' } }, 201)).json() as { id: string }
  const paid = (await call({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { title: 'Deep dive', author: 'Dev', url: 'https://videos.example.com/deep.mp4', is_member_only: true } }, 201)).json() as { id: string }
  await call({ method: 'POST', url: '/videos', headers: bearer(admin.access_token), payload: { title: 'Admin', author: 'Root', url: 'http://videos.example.com/a' } }, 201)
  await call({ method: 'POST', url: '/videos', headers: bearer(alice.access_token), payload: { title: 'Mine', author: 'Alice', url: 'https://videos.example.com/m' } }, 403, 'forbidden')
  await call({ method: 'POST', url: '/videos', headers: bearer(developer.access_token), payload: { title: 'Bad', author: 'Dev', url: 'ftp://videos.example.com/bad' } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/videos', payload: { title: 'Anon', author: 'Anon', url: 'https://videos.example.com/x' } }, 401, 'missing_token')
  await call({ url: '/videos' }, 200)
  await call({ url: '/videos/member', headers: bearer(member.access_token) }, 200)
  await call({ url: '/videos/member', headers: bearer(developer.access_token) }, 200)
  await call({ url: '/videos/member', headers: bearer(alice.access_token) }, 403, 'forbidden')
  await call({ url: '/videos/member' }, 401, 'missing_token')
  await call({ method: 'PATCH', url: `/videos/${free.id}`, headers: bearer(developer.access_token), payload: { title: 'Intro, again' } }, 200)
  await call({ method: 'PATCH', url: `/videos/${free.id}`, headers: bearer(admin.access_token), payload: { is_member_only: false } }, 200)
  await call({ method: 'PATCH', url: `/videos/${free.id}`, headers: bearer(alice.access_token), payload: { title: 'Taken' } }, 403, 'forbidden')
  await call({ method: 'PATCH', url: `/videos/${free.id}`, headers: bearer(developer.access_token), payload: {} }, 400, 'validation_error')
  await call({ method: 'PATCH', url: `/videos/${randomUUID()}`, headers: bearer(developer.access_token), payload: { title: 'Gone' } }, 404, 'not_found')
  await call({ method: 'PATCH', url: '/videos/not-a-uuid', headers: bearer(developer.access_token), payload: { title: 'Bad' } }, 400, 'validation_error')
  await call({ method: 'DELETE', url: `/videos/${paid.id}`, headers: bearer(alice.access_token) }, 403, 'forbidden')
  await call({ method: 'DELETE', url: `/videos/${paid.id}`, headers: bearer(developer.access_token), payload: { dry_run: true } }, 400, 'validation_error')
  await call({ method: 'DELETE', url: `/videos/${paid.id}`, headers: bearer(developer.access_token) }, 204)
  await call({ method: 'DELETE', url: `/videos/${paid.id}`, headers: bearer(developer.access_token) }, 404, 'not_found')

  // Clothes: any signed-in user reads, admins add.
  await call({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Shirt', color: 'blue', size: 'M', price: 1999 } }, 201)
  await call({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Socks', price: 0 } }, 201)
  await call({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Coat', price: 19.99 } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/clothes', headers: bearer(alice.access_token), payload: { name: 'Hat', price: 500 } }, 403, 'forbidden')
  await call({ url: '/clothes', headers: bearer(alice.access_token) }, 200)
  await call({ url: '/clothes' }, 401, 'missing_token')

  // Admin: users
  const page = (await call({ url: '/admin/users?limit=1', headers: bearer(admin.access_token) }, 200)).json() as { next_cursor: string | null }
  t.type(page.next_cursor, 'string', 'a first page of one has a next page')
  await call({ url: `/admin/users?limit=100&cursor=${page.next_cursor}`, headers: bearer(admin.access_token) }, 200)
  await call({ url: `/admin/users?email=${encodeURIComponent(aliceEmail.toUpperCase())}`, headers: bearer(admin.access_token) }, 200)
  await call({ url: '/admin/users?cursor=not-a-cursor', headers: bearer(admin.access_token) }, 400, 'invalid_cursor')
  await call({ url: '/admin/users?limit=0', headers: bearer(admin.access_token) }, 400, 'validation_error')
  await call({ url: '/admin/users', headers: bearer(alice.access_token) }, 403, 'forbidden')
  await call({ url: '/admin/users' }, 401, 'missing_token')
  await call({ url: `/admin/users/${alice.user.id}`, headers: bearer(admin.access_token) }, 200)
  await call({ url: `/admin/users/${randomUUID()}`, headers: bearer(admin.access_token) }, 404, 'not_found')
  await call({ url: '/admin/users/not-a-uuid', headers: bearer(admin.access_token) }, 400, 'validation_error')
  await call({ url: `/admin/users/${admin.user.id}`, headers: bearer(alice.access_token) }, 403, 'forbidden')
  await call({ method: 'PATCH', url: `/admin/users/${alice.user.id}`, headers: bearer(admin.access_token), payload: { name: 'Alice' } }, 200)
  await call({ method: 'PATCH', url: `/admin/users/${alice.user.id}`, headers: bearer(admin.access_token), payload: {} }, 400, 'validation_error')
  await call({ method: 'PATCH', url: `/admin/users/${alice.user.id}`, headers: bearer(admin.access_token), payload: { roles: ['owner'] } }, 400, 'validation_error')
  await call({ method: 'PATCH', url: `/admin/users/${randomUUID()}`, headers: bearer(admin.access_token), payload: { name: 'Ghost' } }, 404, 'not_found')
  await call({ method: 'PATCH', url: `/admin/users/${admin.user.id}`, headers: bearer(admin.access_token), payload: { roles: [] } }, 409, 'last_admin')
  await call({ method: 'PATCH', url: `/admin/users/${alice.user.id}`, headers: bearer(alice.access_token), payload: { roles: ['admin'] } }, 403, 'forbidden')
  await call({ method: 'DELETE', url: `/admin/users/${admin.user.id}`, headers: bearer(admin.access_token) }, 409, 'last_admin')
  await call({ method: 'DELETE', url: `/admin/users/${randomUUID()}`, headers: bearer(admin.access_token) }, 404, 'not_found')
  await call({ method: 'DELETE', url: `/admin/users/${admin.user.id}`, headers: bearer(alice.access_token) }, 403, 'forbidden')
  // A disabled account: its right password answers 403 at login, invalid_grant at the token endpoint.
  const disabledEmail = uniqueEmail('disabled')
  const disabled = await session({ method: 'POST', url: '/auth/signup', payload: { email: disabledEmail, password: TEST_PASSWORD } }, 201)
  await call({ method: 'PATCH', url: `/admin/users/${disabled.user.id}`, headers: bearer(admin.access_token), payload: { disabled: true } }, 200)
  await call({ method: 'POST', url: '/auth/login', payload: { email: disabledEmail, password: TEST_PASSWORD } }, 403, 'user_disabled')
  await call({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'password', username: disabledEmail, password: TEST_PASSWORD }) }, 400, 'invalid_grant')
  await call({ url: '/auth/me', headers: bearer(disabled.access_token) }, 401, 'invalid_token')
  await call({ method: 'DELETE', url: `/admin/users/${disabled.user.id}`, headers: bearer(admin.access_token) }, 204)
  await call({ method: 'DELETE', url: `/admin/users/${disabled.user.id}`, headers: bearer(admin.access_token) }, 404, 'not_found')

  // Password change: refused, then done (every other session of alice's is revoked).
  await call({ method: 'POST', url: '/auth/password', headers: bearer(alice.access_token), payload: { current_password: 'not the password', new_password: 'a brand new passphrase' } }, 401, 'invalid_credentials')
  await call({ method: 'POST', url: '/auth/password', headers: bearer(alice.access_token), payload: { current_password: TEST_PASSWORD, new_password: aliceEmail } }, 400, 'weak_password')
  await call({ method: 'POST', url: '/auth/password', headers: bearer(alice.access_token), payload: { current_password: TEST_PASSWORD } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/password', headers: bearer(alice.access_token), payload: { current_password: TEST_PASSWORD, new_password: 'a brand new passphrase' } }, 204)
  await call({ url: '/auth/me', headers: bearer(aliceSecond.access_token) }, 401, 'invalid_token')

  // Logout: by refresh token (no bearer needed, unknown tokens too), by bearer, every session.
  const bob = await session({ method: 'POST', url: '/auth/signup', payload: { email: uniqueEmail('bob'), password: TEST_PASSWORD } }, 201)
  const bobAgain = await login(bob.user.email)
  const bobThird = await login(bob.user.email)
  await call({ method: 'POST', url: '/auth/logout', payload: { refresh_token: bob.refresh_token } }, 204)
  await call({ method: 'POST', url: '/auth/logout', payload: { refresh_token: 'no such token' } }, 204)
  await call({ method: 'POST', url: '/auth/logout', headers: bearer(bobAgain.access_token), payload: { scope: 'local', refresh_token: 'both' } }, 400, 'validation_error')
  await call({ method: 'POST', url: '/auth/logout', headers: bearer(bobAgain.access_token) }, 204)
  await call({ method: 'POST', url: '/auth/logout', headers: bearer(bobThird.access_token), payload: { scope: 'global' } }, 204)
  await call({ method: 'POST', url: '/auth/logout', headers: bearer(bobThird.access_token) }, 401, 'invalid_token')
  await call({ method: 'POST', url: '/auth/logout' }, 401, 'missing_token')
  await call({ method: 'POST', url: '/auth/logout', headers: { authorization: 'Bearer' } }, 400, 'invalid_request')
  await call({ method: 'POST', url: '/auth/refresh', payload: { refresh_token: aliceFourth.refresh_token } }, 401, 'invalid_refresh_token')

  // What every operation shares: a guarded one refuses no token, a bad one, a malformed header;
  // one that may take a body refuses one that is not JSON, too large, or not parseable.
  const bigBody = JSON.stringify({ name: 'x'.repeat(9 * 1024) })
  for (const { method, path, operation } of operations) {
    const url = withParameters(path)
    const methodName = method as NonNullable<InjectOptions['method']>
    const oauth = path === '/auth/token'
    if (operation.security?.some((requirement) => 'bearerAuth' in requirement)) {
      await call({ method: methodName, url }, 401, 'missing_token')
      await call({ method: methodName, url, headers: bearer('not.a.token') }, 401, 'invalid_token')
      await call({ method: methodName, url, headers: { authorization: 'Bearer one two' } }, 400, 'invalid_request')
    }
    if (BODY_METHODS.has(method.toLowerCase())) {
      await call({ method: methodName, url, headers: { 'content-type': 'text/plain' }, payload: 'hello' }, 415, oauth ? 'invalid_request' : 'unsupported_media_type')
      await call({ method: methodName, url, headers: { 'content-type': 'application/json' }, payload: bigBody }, 413, oauth ? 'invalid_request' : 'payload_too_large')
      await call({ method: methodName, url, headers: { 'content-type': 'application/json' }, payload: '{"name":' }, 400, oauth ? 'invalid_request' : 'invalid_body')
    }
  }

  // The database turning read-only (as a remount does): writes answer 503, each in its shape.
  if (app.database.dialect.name !== 'postgres') {
    await app.database.query('pragma query_only = 1')
    await call({ method: 'POST', url: '/auth/login', payload: { email: ADMIN.ADMIN_EMAIL, password: ADMIN.ADMIN_PASSWORD } }, 503, 'database_unavailable')
    await call({ method: 'POST', url: '/auth/token', ...form({ grant_type: 'password', username: ADMIN.ADMIN_EMAIL, password: ADMIN.ADMIN_PASSWORD }) }, 503, 'temporarily_unavailable')
    await call({ method: 'POST', url: '/clothes', headers: bearer(admin.access_token), payload: { name: 'Scarf', price: 900 } }, 503, 'database_unavailable')
    await app.database.query('pragma query_only = 0')
  }

  t.comment(`${answers.length} answers recorded`)
  checkAnswers(t, document, answers)

  // Coverage: the scenario cannot silently stop exercising an operation.
  const succeeded = new Set(answers.filter((answer) => answer.status >= 200 && answer.status < 300).map((answer) => `${answer.method} ${answer.path}`))
  t.same(operations.map(({ method, path }) => `${method} ${path}`).filter((operation) => !succeeded.has(operation)), [],
    'every documented operation answered a 2xx in the scenario')
  const seen = new Set(answers.map((answer) => `${answer.method} ${answer.path} ${answer.status}`))
  const unexercised = operations.flatMap(({ method, path, operation }) => Object.keys(operation.responses)
    .filter((status) => !seen.has(`${method} ${path} ${status}`)).map((status) => `${method} ${path} ${status}`))
  t.comment(`documented answers this test does not exercise (the next one gets 429s): ${unexercised.join(', ')}`)
})

t.test('429 answers of the rate limits are documented', async (t) => {
  const app = await build(t, { RATE_LIMIT_IP_MAX: '2', RATE_LIMIT_ACCOUNT_MAX: '2' })
  const document = await documentOf(app)
  const { call, answers } = recorder(t, app, document)

  // Per IP, on each auth endpoint (contract: "Per-IP limits apply to every auth endpoint"), from an
  // address of its own: whatever the first two get, the third is refused.
  let endpoint = 0
  for (const { method, path } of operationsOf(document).filter(({ path }) => path.startsWith('/auth/'))) {
    const request = { method: method as NonNullable<InjectOptions['method']>, url: withParameters(path), remoteAddress: `203.0.113.${++endpoint}` }
    await call(request)
    await call(request)
    await call(request, 429, 'rate_limited')
  }

  let address = 0
  // A fresh address for each request that must not count against the per-IP limit.
  const elsewhere = () => `192.0.2.${++address}`

  // Per IP: login and the token endpoint share one count, in their own shapes.
  const limited = '198.51.100.7'
  await call({ method: 'POST', url: '/auth/login', remoteAddress: limited, payload: { email: uniqueEmail('a'), password: TEST_PASSWORD } }, 401)
  await call({ method: 'POST', url: '/auth/login', remoteAddress: limited, payload: { email: uniqueEmail('b'), password: TEST_PASSWORD } }, 401)
  const refused = await call({ method: 'POST', url: '/auth/login', remoteAddress: limited, payload: { email: uniqueEmail('c'), password: TEST_PASSWORD } }, 429, 'rate_limited')
  t.ok(refused.headers['retry-after'], 'with Retry-After')
  await call({ method: 'POST', url: '/auth/token', remoteAddress: limited, ...form({ grant_type: 'password', username: uniqueEmail('d'), password: TEST_PASSWORD }) }, 429, 'rate_limited')

  // Per account: the password change counts wrong current passwords from anywhere.
  const user = (await call({ method: 'POST', url: '/auth/signup', remoteAddress: elsewhere(), payload: { email: uniqueEmail(), password: TEST_PASSWORD } }, 201)).json() as SessionBody
  const change = { method: 'POST' as const, url: '/auth/password', headers: bearer(user.access_token), payload: { current_password: 'not the password', new_password: 'a brand new passphrase' } }
  await call({ ...change, remoteAddress: elsewhere() }, 401, 'invalid_credentials')
  await call({ ...change, remoteAddress: elsewhere() }, 401, 'invalid_credentials')
  await call({ ...change, remoteAddress: elsewhere() }, 429, 'rate_limited')
  // …and sign-ins for that email, from an address with budget left.
  await call({ method: 'POST', url: '/auth/login', remoteAddress: elsewhere(), payload: { email: user.user.email, password: TEST_PASSWORD } }, 429, 'rate_limited')

  checkAnswers(t, document, answers)
})
