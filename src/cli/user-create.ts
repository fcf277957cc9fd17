// npm run user:create -- --email ada@example.com --role admin [--name Ada]
// It asks for the password without echoing it, or reads one line from piped stdin: never from an
// argument, which every user of the machine sees in `ps` and the shell keeps in its history.
import { createInterface } from 'node:readline/promises'
import { Writable } from 'node:stream'
import { parseArgs } from 'node:util'
import { EMAIL_LOCAL_PART_MAX_LENGTH } from '../auth/email.ts'
import { ROLES, type Role } from '../auth/permissions.ts'
import { registerUser } from '../auth/registration.ts'
import { startupProblem } from '../errors.ts'
import { NAME_RULE, isName } from '../schemas/common.ts'
import { createUserRepository } from '../repositories/users.ts'
import { databaseName, openDatabaseOrExit } from './open-database.ts'

const USAGE = `usage: npm run user:create -- --email EMAIL [--role ${ROLES.join('|')}]... [--name NAME]
  Creates a user (role user, plus each --role given). The password is asked for, without echo,
  or read as one line from stdin: echo "$PASSWORD" | npm run user:create -- --email EMAIL`

const NOT_SHOWN = 'what was given is not shown: it may be a password'

/** Reads a password without showing it: a muted output stream swallows readline's echo. */
async function askPassword (prompt: string): Promise<string> {
  if (!process.stdin.isTTY) {
    const lines = createInterface({ input: process.stdin })
    const first = await lines[Symbol.asyncIterator]().next()
    lines.close()
    return first.done ? '' : first.value
  }
  let muted = false
  const output = new Writable({
    write (chunk, _encoding, done) {
      if (!muted) process.stdout.write(chunk)
      done()
    }
  })
  const rl = createInterface({ input: process.stdin, output, terminal: true })
  const answer = rl.question(prompt)
  muted = true
  try {
    return await answer
  } finally {
    rl.close()
    process.stdout.write('\n')
  }
}

async function main (): Promise<number> {
  let values
  try {
    ({ values } = parseArgs({
      options: {
        // Collected, so that one given twice is refused rather than the last silently kept.
        email: { type: 'string', multiple: true, default: [] },
        role: { type: 'string', multiple: true, default: [] },
        name: { type: 'string', multiple: true, default: [] },
        help: { type: 'boolean', short: 'h' }
      }
    }))
  } catch (error) {
    // parseArgs quotes what it does not know, a stray argument or an unknown option, and either may
    // well be the password: never repeat it. A missing or surplus value names only our own option.
    const ownOption = (error as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE'
    console.error(`${ownOption ? (error as Error).message : `user:create takes only the options below (${NOT_SHOWN})`}\n${USAGE}`)
    return 1
  }
  if (values.help) {
    console.log(USAGE)
    return 0
  }
  const unknownRole = values.role.find((role) => !ROLES.includes(role as Role))
  const [email, name] = [values.email[0], values.name[0]]
  if (values.email.length > 1 || values.name.length > 1) {
    console.error(`--${values.email.length > 1 ? 'email' : 'name'} given more than once\n${USAGE}`)
    return 1
  }
  if (!email || unknownRole !== undefined) {
    console.error(unknownRole !== undefined ? `unknown role given to --role (${NOT_SHOWN})\n${USAGE}` : USAGE)
    return 1
  }
  if (name !== undefined && !isName(name)) {
    console.error(`--name must be ${NAME_RULE}\n${USAGE}`)
    return 1
  }
  const password = await askPassword('Password: ')

  const database = await openDatabaseOrExit()
  try {
    let registration
    try {
      const users = createUserRepository(database)
      registration = await registerUser((user) => users.create(user), {
        email,
        password,
        name,
        roles: values.role as Role[]
      })
    } catch (error) {
      // One line, as for a database that cannot be opened: no stack, no query parameters (the hash).
      console.error(`could not create the user: ${startupProblem(error)}`)
      return 1
    }
    switch (registration.outcome) {
      case 'created':
        console.log(`created ${registration.created.email} (${registration.created.id}) with roles ${registration.created.roles.join(', ')} in ${databaseName()}`)
        return 0
      case 'weak_password':
        console.error(registration.message)
        return 1
      case 'email_taken':
        console.error(`an account with the email ${email} already exists`)
        return 1
      case 'invalid_email':
        console.error(`"${email}" is not an email address with at most ${EMAIL_LOCAL_PART_MAX_LENGTH} characters before the @`)
        return 1
    }
  } finally {
    await database.close()
  }
}

process.exitCode = await main()
