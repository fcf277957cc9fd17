import { and, desc, eq, gt, inArray, isNotNull, isNull, lt, ne, or, sql, type SQL } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { hashRefreshToken, newRefreshToken } from '../auth/tokens.ts'
import type { Database, Db, SessionRow } from '../db/index.ts'
import { insertUser, unlessEmailTaken, userColumns, type NewUser, type User } from './users.ts'

export type Session = SessionRow

export interface SessionTimes {
  now: Date
  /** Seconds a refresh token lives (REFRESH_TOKEN_TTL). */
  ttl: number
  /** Seconds after its sign-in that a session ends however often it is refreshed (SESSION_MAX_AGE); 0: never. */
  maxAge: number
}

export interface RotationRules extends SessionTimes {
  /** Seconds after rotation in which the newest rotated token may be replayed (REFRESH_REUSE_GRACE). */
  grace: number
}

/** The client a session is opened for, as GET /auth/sessions shows it. */
export interface SessionClient {
  userAgent?: string | undefined
  ip?: string | undefined
}

export interface OpenSession extends SessionClient {
  userId: string
  /** The hash the sign-in verified the password against. */
  passwordHash: string
}

/** A session just opened, with its first refresh token. */
export interface OpenedSession {
  user: User
  session: Session
  refreshToken: string
}

export type Rotation =
  | { outcome: 'rotated', session: Session, refreshToken: string }
  | { outcome: 'invalid' }
  | { outcome: 'superseded', session: Session }
  | { outcome: 'reused', session: Session }

const plus = (at: Date, seconds: number) => new Date(at.getTime() + seconds * 1000)

/** What ends a session besides its revocation and its sliding end: its maximum age, as configured now. */
export type SessionAge = Pick<SessionTimes, 'now' | 'maxAge'>
/** A session's age rules now, for SESSION_MAX_AGE (`maxAge`, in seconds; 0 for none). */
export const sessionAgeNow = (maxAge: number): SessionAge => ({ now: new Date(), maxAge })

/** Older than SESSION_MAX_AGE as configured now, so a lowered value ends older sessions too. */
const pastMaxAge = (session: Pick<Session, 'createdAt'>, { now, maxAge }: SessionAge) =>
  maxAge > 0 && plus(session.createdAt, maxAge) <= now

/** Whether a session has neither expired nor passed its maximum age: with no revocation, open (isOpen in SQL). */
const isUnended = (session: Pick<Session, 'expiresAt' | 'createdAt'>, age: SessionAge) =>
  session.expiresAt > age.now && !pastMaxAge(session, age)

/**
 * Where a session's window ends after a use now: `ttl` from now, but never past `maxAge` from its
 * sign-in, so a thief who keeps refreshing a stolen session cannot keep it for ever (ASVS 3.3.2).
 */
function windowEnd (signedInAt: Date, { now, ttl, maxAge }: SessionTimes): Date {
  const sliding = plus(now, ttl)
  return maxAge > 0 && plus(signedInAt, maxAge) < sliding ? plus(signedInAt, maxAge) : sliding
}

/**
 * Open sessions one user may have; a new one past it revokes the least recently used. Without a
 * bound, a client signing in over and over (30 times a minute within the per-IP limit) would grow
 * the user's sessions, and their GET /auth/sessions answer, for as long as sessions live.
 */
export const MAX_OPEN_SESSIONS = 100

/** Revoked sessions are kept this long before cleanup, so their tokens still read as revoked. */
const REVOKED_RETENTION_SECONDS = 86_400

export function createSessionRepository (database: Database) {
  const { db, tables: { sessions, refreshTokens, users }, dialect } = database
  // Read on every account request: the session and its user in one statement, prepared once.
  const accountBySessionId = db.select({ session: sessions, user: userColumns(users) }).from(sessions)
    .innerJoin(users, eq(users.id, sessions.userId))
    .where(eq(sessions.id, sql.placeholder('id')))
    .prepare('account_by_session_id')

  /** A new refresh token of the session, living as long as the session's window. */
  async function insertRefreshToken (tx: Db, session: Pick<Session, 'id' | 'createdAt'>, parentId: string | null, times: SessionTimes): Promise<string> {
    const token = newRefreshToken()
    await tx.insert(refreshTokens).values({
      id: randomUUID(),
      tokenHash: hashRefreshToken(token),
      sessionId: session.id,
      parentId,
      issuedAt: times.now,
      expiresAt: windowEnd(session.createdAt, times)
    })
    return token
  }

  /** A new session of the user and its first refresh token. */
  async function insertSession (tx: Db, userId: string, client: SessionClient, times: SessionTimes) {
    const [session] = await tx.insert(sessions).values({
      id: randomUUID(),
      userId,
      createdAt: times.now,
      lastUsedAt: times.now,
      expiresAt: windowEnd(times.now, times),
      userAgent: client.userAgent?.slice(0, 512) ?? null,
      ip: client.ip ?? null
    }).returning()
    return { session: session!, refreshToken: await insertRefreshToken(tx, session!, null, times) }
  }

  /** Slides the session's end forward (up to its maximum age) and records the use. */
  async function touch (tx: Db, session: Pick<Session, 'id' | 'createdAt'>, times: SessionTimes): Promise<Session> {
    const [touched] = await tx.update(sessions).set({ lastUsedAt: times.now, expiresAt: windowEnd(session.createdAt, times) })
      .where(eq(sessions.id, session.id)).returning()
    return touched!
  }

  /** A session neither revoked, expired nor past its maximum age: one GET /auth/sessions lists. */
  const isOpen = ({ now, maxAge }: SessionAge) => and(
    isNull(sessions.revokedAt), gt(sessions.expiresAt, now), maxAge > 0 ? gt(sessions.createdAt, plus(now, -maxAge)) : undefined)

  // Every session not yet revoked is revoked, so one past a maximum age raised later stays ended;
  // only those that were open are reported (a DELETE of an ended one is not found, as it is not listed).
  const revokeWhere = async (condition: SQL | undefined, age: SessionAge, executor: Db = db) =>
    (await executor.update(sessions).set({ revokedAt: age.now }).where(and(condition, isNull(sessions.revokedAt))).returning())
      .filter((session) => isUnended(session, age))

  return {
    /**
     * Opens a session for a sign-in and returns it with its first refresh token; undefined when the
     * user is gone or disabled, or their password hash is no longer `passwordHash` (the one the
     * sign-in verified). The check holds the user's row in the session's own transaction, so a
     * password change, disable or delete that commits first refuses this session, and one that
     * commits after it revokes or deletes it: none opened with an old password outlives a change.
     * The user comes back as that row holds it, so the session's first access token carries the
     * roles of the moment it opened, not those read before the password check.
     */
    async open (input: OpenSession, times: SessionTimes): Promise<OpenedSession & { displacedSessions: number } | undefined> {
      return dialect.atomic(async (tx) => {
        const [user] = await dialect.forUpdate(tx.select(userColumns(users)).from(users).where(and(
          eq(users.id, input.userId),
          eq(users.disabled, false),
          eq(users.passwordHash, input.passwordHash)
        )))
        if (!user) return undefined
        const { session, refreshToken } = await insertSession(tx, input.userId, input, times)
        // Under the user's row lock: sign-ins of one user decide this one after another. The new
        // session is always kept (another's last use may be as late as this sign-in's now); of the
        // others still open, the most recently used (ties by id) fill the rest.
        const others = and(eq(sessions.userId, input.userId), ne(sessions.id, session.id), isOpen(times))
        const [lastKept] = await tx.select({ id: sessions.id, lastUsedAt: sessions.lastUsedAt }).from(sessions).where(others)
          .orderBy(desc(sessions.lastUsedAt), desc(sessions.id)).limit(1).offset(MAX_OPEN_SESSIONS - 2)
        // Those used before the last one kept go, a condition on each row's own columns: PostgreSQL
        // checks it again on a row a concurrent refresh held, as that refresh left it, so a session
        // refreshed while this waited keeps its place (the user has one more than the cap until
        // their next sign-in) rather than ending just after its refresh was answered.
        const displaced = lastKept
          ? await tx.update(sessions).set({ revokedAt: times.now })
            .where(and(others, or(
              lt(sessions.lastUsedAt, lastKept.lastUsedAt),
              and(eq(sessions.lastUsedAt, lastKept.lastUsedAt), lt(sessions.id, lastKept.id))
            )))
            .returning({ id: sessions.id })
          : []
        return { user, session, refreshToken, displacedSessions: displaced.length }
      })
    },

    /**
     * A new account and its first session, in one transaction: a signup that fails after the
     * account's insert (the database lost meanwhile) leaves no account for its retry to find taken.
     * Null when the (normalised) email is taken.
     */
    async openForNewUser (newUser: NewUser, client: SessionClient, times: SessionTimes): Promise<OpenedSession | null> {
      return unlessEmailTaken(() => dialect.atomic(async (tx) => {
        const user = await insertUser(database, tx, newUser)
        return { user, ...await insertSession(tx, user.id, client, times) }
      }))
    },

    /**
     * The one place that decides whether a refresh token is good (RFC 9700 §4.14.2), in one
     * transaction that holds its session's row (SQLite: the write lock), so
     * concurrent refreshes in a session, on any instance, are decided one after another:
     * - unknown, or of a revoked or expired session: invalid;
     * - never used: invalid once expired, else mark it used and issue its child in the same session;
     * - used, but it is the parent of the session's live token and was rotated within the grace
     *   window: the client lost our answer; replace that live token with a new one (which makes
     *   the replaced one superseded);
     * - superseded, or any other reuse: theft, revoke the whole session. A superseded token is
     *   presented only by a holder of the answer we replaced, so two parties hold the session: one
     *   may be a thief who replayed its token within the window, and which one cannot be told.
     */
    async rotate (presented: string, rules: RotationRules): Promise<Rotation> {
      const { now, grace } = rules
      return dialect.atomic(async (tx): Promise<Rotation> => {
        const tokenHash = hashRefreshToken(presented)
        // The session's row first, then its tokens: the order every writer here and every delete
        // cascading from users takes, so two of them never wait on each other (a deadlock on
        // PostgreSQL). The token is read after the lock, so it is what the last holder left.
        const [session] = await dialect.forUpdate(tx.select().from(sessions).where(inArray(sessions.id,
          tx.select({ id: refreshTokens.sessionId }).from(refreshTokens).where(eq(refreshTokens.tokenHash, tokenHash)))))
        if (!session) return { outcome: 'invalid' }
        const [token] = await tx.select().from(refreshTokens).where(eq(refreshTokens.tokenHash, tokenHash))
        if (!token) return { outcome: 'invalid' }
        if (session.revokedAt || !isUnended(session, rules)) return { outcome: 'invalid' }
        const revokeSession = async (outcome: 'superseded' | 'reused'): Promise<Rotation> => {
          await tx.update(sessions).set({ revokedAt: now }).where(eq(sessions.id, session.id))
          return { outcome, session }
        }

        // Superseded by a grace-window retry before it was ever used: whoever retried, someone else
        // holds the answer it replaced. RFC 9700 §4.14.2: the server cannot tell the rightful client
        // from the thief, so it revokes the session; otherwise a replay within the window would
        // keep the thief's session alive while the rightful client is refused.
        if (token.revokedAt && !token.usedAt) return revokeSession('superseded')

        if (!token.usedAt) {
          // Only a token never presented expires: a rotated one presented again is reuse however
          // old it is, so a thief's chain outliving the rightful client's token still ends.
          if (token.expiresAt <= now) return { outcome: 'invalid' }
          await tx.update(refreshTokens).set({ usedAt: now }).where(eq(refreshTokens.id, token.id))
          const refreshToken = await insertRefreshToken(tx, session, token.id, rules)
          return { outcome: 'rotated', session: await touch(tx, session, rules), refreshToken }
        }

        const [live] = await tx.select().from(refreshTokens)
          .where(and(eq(refreshTokens.sessionId, session.id), isNull(refreshTokens.usedAt), isNull(refreshTokens.revokedAt)))
        // grace 0 turns the window off. Otherwise `now` may even precede usedAt: a request that
        // waited for the lock while a concurrent one rotated the token.
        const withinGrace = grace > 0 && now.getTime() - token.usedAt.getTime() <= grace * 1000
        if (withinGrace && live && live.parentId === token.id) {
          await tx.update(refreshTokens).set({ revokedAt: now }).where(eq(refreshTokens.id, live.id))
          const refreshToken = await insertRefreshToken(tx, session, token.id, rules)
          return { outcome: 'rotated', session: await touch(tx, session, rules), refreshToken }
        }

        return revokeSession('reused')
      })
    },

    /** The session and its user, if the session is neither revoked, expired nor past its maximum age. */
    async findActiveAccount (sessionId: string, age: SessionAge): Promise<{ session: Session, user: User } | undefined> {
      const [account] = await accountBySessionId.execute({ id: sessionId })
      return account && !account.session.revokedAt && isUnended(account.session, age) ? account : undefined
    },

    async listActive (userId: string, age: SessionAge): Promise<Session[]> {
      return db.select().from(sessions).where(and(eq(sessions.userId, userId), isOpen(age))).orderBy(desc(sessions.lastUsedAt), desc(sessions.id))
    },

    /** Revokes one session of this user; false when it is not theirs or was not open (an ended one is revoked all the same). */
    async revoke (sessionId: string, userId: string, age: SessionAge): Promise<boolean> {
      return (await revokeWhere(and(eq(sessions.id, sessionId), eq(sessions.userId, userId)), age)).length > 0
    },

    /** Revokes every session of the user not yet revoked; returns how many were open. */
    async revokeAllForUser (userId: string, age: SessionAge): Promise<number> {
      // The user's row first, as every writer of several of a user's sessions takes it (a password
      // change holds its own session while it revokes the others): sessions one at a time in
      // whatever order, against such a writer, would deadlock.
      return dialect.atomic(async (tx) => {
        await dialect.forNoKeyUpdate(tx.select({ id: users.id }).from(users).where(eq(users.id, userId)))
        return (await revokeWhere(eq(sessions.userId, userId), age, tx)).length
      })
    },

    /** Revokes the session a refresh token belongs to (logout without an access token); returns it if it was open. */
    async revokeByRefreshToken (presented: string, age: SessionAge): Promise<Session | undefined> {
      const [found] = await db.select({ sessionId: refreshTokens.sessionId }).from(refreshTokens)
        .where(eq(refreshTokens.tokenHash, hashRefreshToken(presented)))
      if (!found) return undefined
      const [revoked] = await revokeWhere(eq(sessions.id, found.sessionId), age)
      return revoked
    },

    /**
     * Removes expired sessions and long-revoked ones, with their refresh tokens (the foreign key's
     * cascade), and the tokens of live sessions that expired more than `ttl` (REFRESH_TOKEN_TTL)
     * ago: until then a rotated one presented again is still known, and is reuse (rotate), for a
     * while after its own expiry, at one row per refresh. Rows another transaction holds are left
     * for the next cleanup, so a sign-in's cap revoking sessions that expire meanwhile, or a user's
     * deletion, never deadlocks with it (PostgreSQL). A session's tokens go with it, and that delete
     * would wait for a token held alone: every writer takes a session before its tokens.
     */
    async deleteExpired ({ now, ttl }: Pick<SessionTimes, 'now' | 'ttl'>): Promise<void> {
      const unheld = <Q extends Parameters<typeof dialect.forUpdate>[0]>(query: Q) => dialect.forUpdate(query, { skipLocked: true })
      await dialect.atomic(async (tx) => {
        await tx.delete(sessions).where(inArray(sessions.id, unheld(tx.select({ id: sessions.id }).from(sessions).where(or(
          lt(sessions.expiresAt, now),
          and(isNotNull(sessions.revokedAt), lt(sessions.revokedAt, plus(now, -REVOKED_RETENTION_SECONDS)))
        )))))
        await tx.delete(refreshTokens).where(inArray(refreshTokens.id,
          unheld(tx.select({ id: refreshTokens.id }).from(refreshTokens).where(lt(refreshTokens.expiresAt, plus(now, -ttl))))))
      })
    }
  }
}

export type SessionRepository = ReturnType<typeof createSessionRepository>

declare module 'fastify' {
  interface FastifyInstance {
    sessionsRepository: SessionRepository
  }
}

const CLEANUP_INTERVAL_MS = 60 * 60 * 1000

export default fp(async function sessionsRepositoryPlugin (app: FastifyInstance) {
  const repository = app.database.serialise(createSessionRepository(app.database))
  app.decorate('sessionsRepository', repository)

  const cleanUp = () => repository.deleteExpired({ now: new Date(), ttl: app.config.refreshTokenTtl })
    .catch((error: unknown) => app.log.error({ err: error }, 'session cleanup failed'))
  app.addHook('onReady', async () => { await cleanUp() })
  const timer = setInterval(cleanUp, CLEANUP_INTERVAL_MS).unref()
  app.addHook('onClose', async () => clearInterval(timer))
}, { name: 'sessions-repository', dependencies: ['database'] })
