import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type BrowserContext, type Request } from 'playwright-core'
import t from 'tap'
import { TEST_PASSWORD, build, signup, uniqueEmail } from './helper.ts'

/**
 * End to end through a real browser: sign in with Swagger UI's oauth2 password flow, as the
 * README's "Swagger UI" section tells people to, then "Try it out" on GET /auth/me.
 * Uses the system Chromium (Debian's package); Playwright never downloads a browser here.
 */
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const skip = existsSync(executablePath)
  ? false
  : process.env.CHROMIUM_PATH
    ? `CHROMIUM_PATH=${executablePath} does not exist`
    : 'Debian chromium is not installed (apt-get install chromium); .ci/run installs it'

const STEP_TIMEOUT = 10_000

t.test('Swagger UI: Authorize with the oauth2 password flow, then Try it out on GET /auth/me', { skip, timeout: 45_000 }, async (t) => {
  const app = await build(t)
  const email = uniqueEmail('swagger')
  await signup(app, email)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const origin = `http://127.0.0.1:${port}`

  const profileDir = mkdtempSync(join(tmpdir(), 'gatehouse-chromium-'))
  t.teardown(() => rmSync(profileDir, { recursive: true, force: true }))
  // A fresh profile per run. Playwright takes it as launchPersistentContext's userDataDir
  // (it refuses --user-data-dir in launch()'s args).
  const context: BrowserContext = await chromium.launchPersistentContext(profileDir, {
    executablePath,
    headless: true,
    timeout: STEP_TIMEOUT,
    viewport: { width: 1280, height: 1000 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'
    ]
  })
  // Registered after build()'s teardown, so it runs first: the browser goes before the server.
  t.teardown(() => context.close())
  context.setDefaultTimeout(STEP_TIMEOUT)
  // Only this app: anything else the page (or Chromium) tries to reach is refused, not attempted.
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url())
    return url.host === `127.0.0.1:${port}` ? route.continue() : route.abort('blockedbyclient')
  })
  const page = await context.newPage()

  const consoleErrors: string[] = []
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()) })
  page.on('pageerror', (error) => consoleErrors.push(`pageerror: ${error.message}`))
  const offOrigin: string[] = []
  const meRequests: Request[] = []
  page.on('request', (request) => {
    const url = new URL(request.url())
    if (url.origin !== origin && url.protocol !== 'data:') offOrigin.push(request.url())
    if (url.origin === origin && url.pathname === '/auth/me') meRequests.push(request)
  })

  try {
    await page.goto(`${origin}/docs`)
    await page.locator('.swagger-ui .info .title').filter({ hasText: 'Gatehouse' }).waitFor()

    // Authorize → oauth2 (password): the email as username, the password, client id/secret left empty.
    await page.locator('.scheme-container button.authorize').click()
    const dialog = page.locator('.dialog-ux .modal-ux')
    await dialog.waitFor()
    const oauth2 = dialog.locator('.auth-container').filter({ hasText: 'oauth2' })
    await oauth2.locator('#oauth_username').fill(email)
    await oauth2.locator('#oauth_password').fill(TEST_PASSWORD)
    const [tokenResponse] = await Promise.all([
      page.waitForResponse((response) => new URL(response.url()).pathname === '/auth/token'),
      // Its accessible name is its aria-label, "Apply given OAuth2 credentials"; its text is "Authorize".
      oauth2.locator('button.authorize').filter({ hasText: 'Authorize' }).click()
    ])
    t.equal(tokenResponse.status(), 200, 'the token request succeeds')
    // Signed in, the section shows "Authorized" and its button turns into "Logout".
    await oauth2.getByRole('button', { name: 'Remove authorization' }).filter({ hasText: 'Logout' }).waitFor()
    t.ok(await oauth2.locator('h6', { hasText: 'Authorized' }).isVisible(), 'the oauth2 section says Authorized')
    t.notOk(await oauth2.locator('.errors').isVisible(), 'no auth error is shown in the dialog')
    await dialog.locator('button.close-modal').click()
    await dialog.waitFor({ state: 'detached' })

    // GET /auth/me → Try it out → Execute.
    const operation = page.locator('.opblock-get').filter({
      has: page.locator('.opblock-summary-path', { hasText: /^\/auth\/me$/ })
    })
    await operation.locator('.opblock-summary-control').click()
    const tryItOut = operation.locator('button.try-out__btn')
    // tryItOutEnabled opens the form at once; otherwise press "Try it out".
    if (await tryItOut.isVisible() && (await tryItOut.textContent())?.trim() === 'Try it out') await tryItOut.click()
    await Promise.all([
      page.waitForResponse((response) => new URL(response.url()).pathname === '/auth/me'),
      operation.locator('button.execute').click()
    ])

    const live = operation.locator('.live-responses-table .response')
    await live.locator('.response-col_status').waitFor()
    t.equal((await live.locator('.response-col_status').textContent())?.trim(), '200', 'the live response is 200')
    const body = await live.locator('.response-col_description .microlight, .response-col_description pre').first().textContent()
    t.match(body, email, 'the response body shows the signed-in user')
    await live.scrollIntoViewIfNeeded()

    t.equal(meRequests.length, 1, 'one request to /auth/me')
    const authorization = await meRequests[0]?.headerValue('authorization')
    t.match(authorization, /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/, '/auth/me carried the access token as a bearer token')
    t.same(offOrigin, [], 'the page reached nothing but the app')
    t.same(consoleErrors.filter((text) => /content[- ]security[- ]policy/i.test(text)), [], 'no Content-Security-Policy violations')
  } finally {
    // For debugging, pass or fail: outside the repository, e.g. /tmp/gatehouse-swagger-ui-1234.png.
    const screenshot = join(tmpdir(), `gatehouse-swagger-ui-${process.pid}.png`)
    await page.screenshot({ path: screenshot, timeout: STEP_TIMEOUT }).then(() => t.comment(`screenshot: ${screenshot}`), () => {})
  }
})
