import { databaseUrlFrom, isPostgresUrl, redactUrl, sqlitePath } from '../config.ts'
import { openDatabase, type Database } from '../db/index.ts'
import { startupProblem } from '../errors.ts'

/**
 * The database DATABASE_URL names, for a CLI tool. A bad URL, or a database that cannot be opened
 * or migrated, ends the run here with one line saying why (exit 1), not a stack trace.
 */
export async function openDatabaseOrExit (): Promise<Database> {
  try {
    return await openDatabase(databaseUrlFrom())
  } catch (error) {
    console.error(startupProblem(error))
    process.exit(1)
  }
}

/**
 * Which database a tool wrote to, without its password: DATABASE_URL may be unset in this shell.
 * A SQLite file by the path it resolved to, as a relative one depends on the folder the tool ran in.
 */
export const databaseName = () => {
  const url = databaseUrlFrom()
  return isPostgresUrl(url) ? redactUrl(url) : sqlitePath(url)
}
