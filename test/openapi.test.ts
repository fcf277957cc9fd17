import { Validator } from '@seriousme/openapi-schema-validator'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { Type } from 'typebox'
import { buildApp } from '../src/app.ts'
import { loadConfig } from '../src/config.ts'
import { ERROR_CODES } from '../src/errors.ts'
import { TEST_ENV, build } from './helper.ts'

const BEARER = [{ bearerAuth: [] }, { oauth2: [] }]
const toOpenApiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}')

t.test('GET /openapi.json is a valid OpenAPI 3.1 document', async (t) => {
  const app = await build(t)
  const response = await app.inject({ url: '/openapi.json' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /application\/json/)
  const document = response.json()
  t.equal(document.openapi, '3.1.0')
  const result = await new Validator().validate(document)
  t.same(result.errors ?? [], [], 'no schema errors')
  t.ok(result.valid)
  t.same(document.components.securitySchemes.oauth2.flows.password.tokenUrl, '/auth/token')
  // Swagger UI refreshes with grant_type=refresh_token, form-encoded: the token endpoint, not /auth/refresh (JSON).
  t.equal(document.components.securitySchemes.oauth2.flows.password.refreshUrl, '/auth/token')
  t.equal(document.components.securitySchemes.bearerAuth.scheme, 'bearer')
  t.equal(document.components.securitySchemes.bearerAuth.bearerFormat, 'JWT')
})

t.test('every registered route is documented with its security requirement', async (t) => {
  const app = await build(t)
  const document = (await app.inject({ url: '/openapi.json' })).json()
  const apiRoutes = app.accessPolicies.filter((route) => route.method !== 'HEAD' && !route.url.startsWith('/docs') && route.url !== '/openapi.json')
  t.ok(apiRoutes.length >= 20, `${apiRoutes.length} routes`)
  for (const route of apiRoutes) {
    const operation = document.paths[toOpenApiPath(route.url)]?.[route.method.toLowerCase()]
    t.ok(operation, `${route.method} ${route.url} is documented`)
    if (!operation) continue
    if (route.access === 'guarded') {
      t.same(operation.security, BEARER, `${route.method} ${route.url} needs a bearer token`)
      t.ok(operation.responses['401'], `${route.method} ${route.url} documents 401`)
      t.match(operation.responses['400']?.description, /invalid_request/, `${route.method} ${route.url} documents the malformed Authorization header`)
      t.match(operation.responses['400']?.headers?.['WWW-Authenticate'], { schema: { type: 'string' } }, `${route.method} ${route.url} documents its challenge`)
      t.notOk(operation.responses['400']?.headers?.['WWW-Authenticate']?.required, `${route.method} ${route.url}: which a validation_error has not`)
    } else if (route.url !== '/auth/logout') {
      t.same(operation.security, [], `${route.method} ${route.url} is public`)
    }
    t.ok(Object.keys(operation.responses).some((status) => status.startsWith('2')), `${route.method} ${route.url} documents its success`)
    if (route.url.startsWith('/auth')) {
      t.ok(operation.responses['429']?.headers?.['Retry-After'], `${route.method} ${route.url} documents 429 and its Retry-After`)
      t.ok(operation.responses['429']?.headers?.['X-RateLimit-Reset'], `${route.method} ${route.url} documents the per-IP limit's headers`)
    }
    if (['POST', 'PATCH', 'DELETE'].includes(route.method) && route.url !== '/auth/token') {
      t.match(operation.responses['400']?.description, /invalid_body/, `${route.method} ${route.url} documents a body it cannot parse`)
      t.match(operation.responses['413']?.description, /payload_too_large/, `${route.method} ${route.url} documents 413`)
      t.match(operation.responses['415']?.description, /unsupported_media_type/, `${route.method} ${route.url} documents 415`)
    }
    if (operation.responses['401']) t.ok(operation.responses['401'].headers?.['WWW-Authenticate'], `${route.method} ${route.url} documents the 401 challenge`)
    // Only the stateless route never reads the database (its answer comes from the token alone).
    if (route.url === '/me/permissions') t.notOk(operation.responses['503'], `${route.method} ${route.url} never answers 503`)
    else t.ok(operation.responses['503']?.headers?.['Retry-After'], `${route.method} ${route.url} documents 503 and its Retry-After`)
    t.match(operation.operationId, /^[a-z]+[A-Za-z]+$/, `${route.method} ${route.url} has an operationId`)
    // Swagger UI groups operations by tag; an undeclared one gets no description (docs.ts lists them).
    t.ok(operation.tags?.length > 0, `${route.method} ${route.url} has a tag`)
    for (const tag of operation.tags ?? []) {
      t.ok(document.tags.some((declared: { name: string }) => declared.name === tag), `${route.method} ${route.url}: tag ${tag} is declared in src/plugins/docs.ts`)
    }
    for (const [status, answer] of Object.entries(operation.responses as Record<string, { description: string }>)) {
      t.not(answer.description, 'Default Response', `${route.method} ${route.url} ${status} says what it is`)
    }
    for (const [status, answer] of Object.entries(operation.responses as Record<string, { description: string }>)) {
      if (Number(status) >= 400) t.match(answer.description, /\b[a-z]+_[a-z_]+\b/, `${route.method} ${route.url} ${status} names its error codes`)
    }
  }
  // The codes a client of each route has to tell apart (contract: Endpoints).
  const described = (path: string, method: string, status: number) => document.paths[path][method].responses[status].description
  t.match(described('/auth/signup', 'post', 400), /weak_password.*validation_error/)
  t.match(described('/auth/signup', 'post', 409), /email_taken/)
  t.match(described('/auth/login', 'post', 400), /invalid_body for a body that is not JSON or not UTF-8, or names a member twice, or none/, 'a body it needs')
  t.notMatch(described('/auth/logout', 'post', 400), /or none/, 'a body it may go without')
  t.match(described('/videos/{id}', 'delete', 400), /validation_error for a body other than \{\}/, 'a body it takes none of')
  t.match(described('/auth/login', 'post', 401), /invalid_credentials/)
  t.match(described('/auth/login', 'post', 403), /user_disabled/)
  t.match(described('/auth/refresh', 'post', 401), /invalid_refresh_token/)
  t.match(described('/auth/password', 'post', 401), /invalid_credentials.*invalid_token/)
  t.match(described('/admin/users', 'get', 400), /invalid_cursor/)
  t.match(described('/admin/users/{id}', 'delete', 409), /last_admin/)
  t.match(described('/videos/{id}', 'patch', 403), /forbidden/)
  t.ok(document.paths['/videos/{id}'].patch.responses['403'].headers['WWW-Authenticate'], 'forbidden comes with insufficient_scope')
  t.notOk(document.paths['/auth/login'].post.responses['403'].headers['WWW-Authenticate'], 'user_disabled comes with no challenge')
  t.ok(document.paths['/auth/logout'].post.responses['400'].headers['WWW-Authenticate'], 'logout, which reads a bearer token if sent, documents its invalid_request challenge')
  t.notOk(document.paths['/auth/login'].post.responses['400'].headers['WWW-Authenticate'], 'login, which reads none, no challenge')
  for (const [path, method, status] of [['/auth/token', 'post', '200'], ['/auth/login', 'post', '429'], ['/videos/{id}', 'patch', '403']] as const) {
    t.match(document.paths[path][method].responses[status].headers['Cache-Control'], { required: true, schema: { const: 'no-store' } }, `${method} ${path} ${status}: no-store`)
  }
  t.notOk(document.paths['/health'].get.responses['200'].headers, 'a public route outside /auth: no no-store')
  // Headers always sent are required; the per-IP counts come only with that limit's 429.
  for (const [path, method, status, header] of [['/auth/login', 'post', '429', 'Retry-After'], ['/health', 'get', '503', 'Retry-After'],
    ['/auth/me', 'get', '401', 'WWW-Authenticate']] as const) {
    t.match(document.paths[path][method].responses[status].headers[header], { required: true }, `${method} ${path} ${status}: ${header} is required`)
  }
  t.notOk(document.paths['/auth/login'].post.responses['429'].headers['X-RateLimit-Limit'].required, 'X-RateLimit-Limit is not always sent')
  t.match(described('/videos/{id}', 'patch', 404), /not_found/)
  t.match(described('/auth/token', 'post', 413), /invalid_request/, 'the token endpoint keeps its RFC 6749 codes')
  t.notMatch(described('/auth/token', 'post', 413), /payload_too_large/)
  // The policy is for passwords being set; a password presented to sign in is only length-checked.
  const bodyPropertiesOf = (path: string) => document.paths[path].post.requestBody.content['application/json'].schema.properties
  t.match(bodyPropertiesOf('/auth/signup').password.description, /common password/)
  t.notMatch(bodyPropertiesOf('/auth/login').password.description, /common password/)
  t.notMatch(bodyPropertiesOf('/auth/password').current_password.description, /common password/)
  t.match(bodyPropertiesOf('/auth/password').new_password.description, /common password/)
  // The email is normalised before validation: a client validating against the schema must know.
  t.match(bodyPropertiesOf('/auth/signup').email.description, /trimmed.*lower-cased first/)
  t.match(bodyPropertiesOf('/auth/login').email.description, /trimmed.*lower-cased first/)
  t.equal(document.paths['/auth/logout'].post.requestBody.required, false, 'logout takes no body, or one')
  t.equal(document.paths['/auth/signup'].post.requestBody.required, true)
  const documented = Object.entries(document.paths as Record<string, Record<string, unknown>>)
    .flatMap(([path, operations]) => Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`))
  const registered = new Set(apiRoutes.map((route) => `${route.method} ${toOpenApiPath(route.url)}`))
  t.same(documented.filter((operation) => !registered.has(operation)), [], 'nothing documented that does not exist')
  const operationIds = Object.values(document.paths as Record<string, Record<string, { operationId: string }>>)
    .flatMap((operations) => Object.values(operations).map((operation) => operation.operationId))
  t.equal(new Set(operationIds).size, operationIds.length, 'operationIds are unique')
  t.equal(document.paths['/admin/users/{id}'].patch.operationId, 'patchAdminUsersById')
  t.same(document.servers, [{ url: '/' }], 'generated clients call the server that serves the document')

  // Shared shapes are named components, so generated clients get a User type, not copies.
  const schemaOf = (path: string, method: string, status: number) => document.paths[path][method].responses[status].content['application/json'].schema
  t.match(schemaOf('/auth/login', 'post', 200), { $ref: '#/components/schemas/Session' })
  t.match(schemaOf('/auth/signup', 'post', 201), { $ref: '#/components/schemas/Session' })
  t.match(schemaOf('/auth/me', 'get', 200), { $ref: '#/components/schemas/User' })
  t.match(schemaOf('/auth/login', 'post', 401), { $ref: '#/components/schemas/Error', description: /invalid_credentials/ })
  t.match(schemaOf('/auth/token', 'post', 400), { $ref: '#/components/schemas/OAuthError' })
  t.same(document.components.schemas.Session.properties.user, { $ref: '#/components/schemas/User' })
  t.same(document.components.schemas.User.required, ['id', 'email', 'name', 'roles', 'created_at', 'updated_at'])
  t.notMatch(JSON.stringify(document.paths), /"required":\["id","email","name","roles"/, 'no inlined copy of User left')
})

t.test('a fork\'s routes get usable operationIds, and the document is checked at start', async (t) => {
  const app = await buildApp(loadConfig(TEST_ENV))
  t.teardown(() => app.close())
  // Names no fork is likely to choose: README's own example resource is notes.
  const Widget = Type.Object({ id: Type.String() }, { title: 'FixtureWidget' })
  app.route({ method: ['GET', 'POST'], url: '/password-reset/:token_id', config: { access: 'public' }, handler: async () => ({}) })
  app.get('/fixture-widgets', {
    config: { access: 'public' },
    schema: { response: { 200: { ...Widget, examples: [{ title: 'An example, not a schema', type: 'object' }] } } }
  }, async () => ({ id: 'n' }))
  await app.ready()
  const document = (await app.inject({ url: '/openapi.json' })).json()
  t.equal(document.paths['/password-reset/{token_id}'].get.operationId, 'getPasswordResetByTokenId')
  t.equal(document.paths['/password-reset/{token_id}'].post.operationId, 'postPasswordResetByTokenId', 'one per method')
  t.same(Object.keys(document.components.schemas).filter((name) => !/^[A-Z]\w*$/.test(name)), [])
  t.notOk(document.components.schemas['An example, not a schema'], 'examples are not hoisted')
  t.ok(document.components.schemas.FixtureWidget)

  const clash = await buildApp(loadConfig(TEST_ENV))
  t.teardown(() => clash.close())
  clash.get('/a', { config: { access: 'public' }, schema: { response: { 200: Type.Object({ a: Type.String() }, { title: 'Thing' }) } } }, async () => ({ a: '' }))
  clash.get('/b', { config: { access: 'public' }, schema: { response: { 200: Type.Object({ b: Type.String() }, { title: 'Thing' }) } } }, async () => ({ b: '' }))
  await t.rejects(async () => { await clash.ready() }, /Two different schemas are titled Thing/, 'a title on two shapes stops the start')
})

t.test('Swagger UI is served at /docs', async (t) => {
  const app = await build(t)
  const page = await app.inject({ url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /text\/html/)
  t.match(page.body, /swagger-ui/i)
  t.notMatch(String(page.headers['content-security-policy']), /upgrade-insecure-requests/, 'docs work over plain http')
  // The token Authorize gets stays in the page's memory: persisted, any script of the origin could read it from localStorage.
  const initializer = await app.inject({ url: '/docs/static/swagger-initializer.js' })
  t.equal(initializer.statusCode, 200)
  t.match(initializer.body, /"persistAuthorization":false/)
})

t.test('error codes: one list serves apiError, the OpenAPI document and the README\'s table', async (t) => {
  const app = await build(t)
  const document = (await app.inject({ url: '/openapi.json' })).json()
  t.same(document.components.schemas.Error.properties.code.enum, [...ERROR_CODES], 'the Error component lists every code')
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const table = readme.slice(readme.indexOf('### Error codes'), readme.indexOf('### Beyond the HTTP contract'))
  const documented = [...table.matchAll(/^\| `([a-z_]+)` \|/gm)].map((row) => row[1])
  t.same([...documented].sort(), [...ERROR_CODES].sort(), 'and the README explains each, and no other')
})

t.test('what Swagger UI\'s files answer besides 200 carries a listed code', async (t) => {
  const app = await build(t)
  const file = '/docs/static/swagger-ui.css'
  t.equal((await app.inject({ url: file })).statusCode, 200)
  for (const [headers, status, code] of [
    [{ range: 'bytes=99999999-' }, 416, 'range_not_satisfiable'],
    [{ 'if-match': '"not-this-one"' }, 412, 'precondition_failed']
  ] as const) {
    const response = await app.inject({ url: file, headers })
    t.equal(response.statusCode, status, code)
    t.equal(response.json().code, code)
    t.ok((ERROR_CODES as readonly string[]).includes(response.json().code), `${code} is in ERROR_CODES`)
  }
})
