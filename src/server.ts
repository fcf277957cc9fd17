import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.ts'
import { serializeError, type LoggedError } from './logging.ts'
import { ConfigError, loadConfig } from './config.ts'
import { startupProblem } from './errors.ts'

let config
try {
  config = loadConfig()
} catch (error) {
  if (!(error instanceof ConfigError)) throw error
  console.error(error.message)
  process.exit(1)
}

let app
try {
  app = await buildApp(config)
  // Its onReady checks (every route's access policy, the OpenAPI document) fail here, not as a listen.
  await app.ready()
} catch (error) {
  // The database, the first admin (ADMIN_PASSWORD too weak), …: one line, not a stack trace.
  console.error(`Gatehouse could not start: ${startupProblem(error)}`)
  // At debug, each stack down the causes, with any failed query's parameters cut as in the log.
  if ((config.logLevel === 'debug' || config.logLevel === 'trace') && error instanceof Error) {
    for (let logged: LoggedError | undefined = serializeError(error); logged; logged = logged.cause) console.error(logged.stack)
  }
  process.exit(1)
}

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err) app.log.error({ err }, 'closing after an unexpected error')
  else app.log.info(`${signal} received, closing`)
  await app.close()
})

try {
  await app.listen({ port: config.port, host: config.host })
} catch (error) {
  // A port in use, a host that does not resolve or is not this machine's: one line, as any other
  // start-up failure, naming the variables to change.
  console.error(`Gatehouse could not start: cannot listen on HOST=${config.host} PORT=${config.port}: ${startupProblem(error)}`)
  process.exit(1)
}
