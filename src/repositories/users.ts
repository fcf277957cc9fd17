import { and, asc, eq, gt, isNull, ne, or, sql, type SQL } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { hasPermission, isAdmin, normaliseRoles, type Permission, type Role } from '../auth/permissions.ts'
import { Rollback, type AtomicLock, type Database, type Db, type Tables, type UserRow } from '../db/index.ts'

/** A user as the rest of the app sees it: never with the password hash. */
export type User = Omit<UserRow, 'passwordHash'>

export interface NewUser {
  email: string
  name?: string | null
  passwordHash: string
  roles: Role[]
}

export interface UserPage {
  limit: number
  /** Position after which the page starts: the last user of the previous page. */
  after?: { createdAt: Date, id: string } | undefined
  /** Lower-case substring of the email. */
  emailContains?: string | undefined
}

export interface AdminChanges {
  roles?: Role[] | undefined
  disabled?: boolean | undefined
  name?: string | null | undefined
}

/** Who makes a change: their user and the session their access token names. */
export interface Actor {
  userId: string
  sessionId: string
}

/** Why a change's actor may act no more: their account is deleted, or their session ended (revoked, or the user disabled). */
export type ActorEnded = 'account_gone' | 'session_ended'

export type AdminUpdate =
  | { outcome: 'updated', user: User, rolesChanged: boolean, disabledNow: boolean, revokedSessions: number }
  | { outcome: 'not_found' }
  | { outcome: 'last_admin' }

/** The columns of a User: every one but the password hash. */
export const userColumns = (users: Tables['users']) => ({
  id: users.id,
  email: users.email,
  name: users.name,
  roles: users.roles,
  disabled: users.disabled,
  createdAt: users.createdAt,
  updatedAt: users.updatedAt
})

/**
 * The actor's roles, read in the transaction of their change with their user's row, then their
 * session's, locked until it commits (a user's row before its sessions', the order every writer of
 * several sessions takes). A sign-out, disable, demotion or delete (the last three revoke the
 * sessions) that committed first is seen here, and one that comes later waits for the change to
 * commit: no change lands after such a one was answered, on any instance. One user's changes take
 * the user's row one after another: two that shared it and then wrote it would deadlock. Rows that
 * refer to the user (a video, a session) may still be inserted meanwhile. The session's expiry
 * was judged by loadAccount, moments before.
 */
export async function holdActor ({ tables: { users, sessions }, dialect }: Pick<Database, 'tables' | 'dialect'>, tx: Db, actor: Actor): Promise<Role[] | ActorEnded> {
  const [user] = await dialect.forNoKeyUpdate(tx.select({ roles: users.roles, disabled: users.disabled }).from(users).where(eq(users.id, actor.userId)))
  if (!user) return 'account_gone'
  if (user.disabled) return 'session_ended'
  const [session] = await dialect.forNoKeyUpdate(tx.select({ id: sessions.id }).from(sessions)
    .where(and(eq(sessions.id, actor.sessionId), eq(sessions.userId, actor.userId), isNull(sessions.revokedAt))))
  return session ? user.roles : 'session_ended'
}

export const isActorEnded = (outcome: unknown): outcome is ActorEnded => outcome === 'account_gone' || outcome === 'session_ended'

/**
 * Runs `work` as one transaction (under `lock`, if given) in which holdActor holds the actor's user
 * and session, and gives it the actor's roles as stored; what holdActor says instead when the actor
 * may act no more, and 'session_ended' when those roles no longer give `permission` (changed by
 * hand: the API's role changes end the sessions anyway). For changes made for a signed-in caller.
 */
export async function actingAs<T> (
  database: Pick<Database, 'tables' | 'dialect'>,
  actor: Actor,
  work: (tx: Db, roles: Role[]) => Promise<T>,
  { permission, lock }: { permission?: Permission, lock?: AtomicLock } = {}
): Promise<T | ActorEnded> {
  return database.dialect.atomic(async (tx) => {
    const roles = await holdActor(database, tx, actor)
    if (!Array.isArray(roles)) return roles
    return permission && !hasPermission(roles, permission) ? 'session_ended' : work(tx, roles)
  }, lock)
}

/**
 * A user's insert found their (normalised) email taken. A Rollback: thrown in a transaction, it
 * undoes it, and is caught outside.
 */
class EmailTaken extends Rollback {}

/** Inserts a user, in a transaction or not; EmailTaken when the email is taken. */
export async function insertUser ({ tables: { users }, dialect }: Pick<Database, 'tables' | 'dialect'>, executor: Db, input: NewUser): Promise<User> {
  const at = new Date()
  try {
    const [created] = await executor.insert(users).values({
      id: randomUUID(),
      email: input.email,
      name: input.name ?? null,
      roles: input.roles,
      passwordHash: input.passwordHash,
      createdAt: at,
      updatedAt: at
    }).returning(userColumns(users))
    return created!
  } catch (error) {
    throw dialect.isUniqueViolation(error) ? new EmailTaken() : error
  }
}

/** What `create` made, or null when it threw EmailTaken: the email is taken. */
export async function unlessEmailTaken<T> (create: () => Promise<T>): Promise<T | null> {
  try {
    return await create()
  } catch (error) {
    if (error instanceof EmailTaken) return null
    throw error
  }
}

export function createUserRepository (database: Database) {
  const { db, tables: { users, sessions }, dialect } = database
  const publicColumns = userColumns(users)
  const isEnabledAdmin = and(eq(users.disabled, false), dialect.hasRole(users.roles, 'admin'))!

  // Read on every refresh: built and prepared once, not per call.
  const byId = db.select(publicColumns).from(users).where(eq(users.id, sql.placeholder('id'))).prepare('users_by_id')

  const replaceHash = (tx: Db, id: string, from: string, to: string, now: Date) =>
    tx.update(users).set({ passwordHash: to, updatedAt: now })
      .where(and(eq(users.id, id), eq(users.passwordHash, from))).returning({ id: users.id })

  /** Revokes the user's open sessions (but `exceptId`'s) in the caller's transaction, the user's row held first. */
  const revokeSessionsOf = (tx: Db, userId: string, now: Date, exceptId?: string) =>
    tx.update(sessions).set({ revokedAt: now })
      .where(and(eq(sessions.userId, userId), exceptId === undefined ? undefined : ne(sessions.id, exceptId), isNull(sessions.revokedAt)))
      .returning({ id: sessions.id })

  const enabledAdminExists = async (executor: Db, exceptId?: string) =>
    (await executor.select({ id: users.id }).from(users)
      .where(exceptId === undefined ? isEnabledAdmin : and(isEnabledAdmin, ne(users.id, exceptId))).limit(1)).length > 0

  /** An admin's change: under the admins lock, by an admin who may still manage users. */
  const asActingAdmin = <T>(actor: Actor, work: (tx: Db) => Promise<T>) =>
    actingAs(database, actor, work, { permission: 'users:manage', lock: 'admins' })

  return {
    /** The new user, or null when the (normalised) email is taken. */
    async create (input: NewUser): Promise<User | null> {
      return unlessEmailTaken(() => insertUser(database, db, input))
    },

    /**
     * The first admin (ADMIN_EMAIL), created only while no enabled admin exists, decided under the
     * admins lock: instances starting at once with different ADMIN_EMAILs make one admin, not one
     * each. Null when an enabled admin exists or the email is taken.
     */
    async createFirstAdmin (input: NewUser): Promise<User | null> {
      return unlessEmailTaken(() => dialect.atomic(async (tx) => await enabledAdminExists(tx) ? null : insertUser(database, tx, input), 'admins'))
    },

    async findById (id: string): Promise<User | undefined> {
      const [user] = await byId.execute({ id })
      return user
    },

    /** The only read that returns the hash: for verifying a password. */
    async findCredentialsByEmail (email: string): Promise<{ user: User, passwordHash: string } | undefined> {
      const [row] = await db.select().from(users).where(eq(users.email, email))
      if (!row) return undefined
      const { passwordHash, ...user } = row
      return { user, passwordHash }
    },

    async findPasswordHash (id: string): Promise<string | undefined> {
      const [row] = await db.select({ passwordHash: users.passwordHash }).from(users).where(eq(users.id, id))
      return row?.passwordHash
    },

    /** The actor's own name, changed. */
    async updateName (actor: Actor, name: string | null): Promise<User | ActorEnded> {
      return actingAs(database, actor, async (tx) => {
        const [user] = await tx.update(users).set({ name, updatedAt: new Date() }).where(eq(users.id, actor.userId)).returning(publicColumns)
        return user!
      })
    },

    /**
     * The stored hash becomes `to`, but only while it is still `from`, the one the caller just
     * verified: a password changed in the meantime is never overwritten. False when it was.
     */
    async replacePasswordHash (id: string, from: string, to: string): Promise<boolean> {
      return (await replaceHash(db, id, from, to, new Date())).length > 0
    },

    /**
     * A password change (ASVS 3.3.3) for the actor (actingAs): the new hash, on the terms of
     * replacePasswordHash, and every session but the actor's revoked in the same transaction, so a
     * session opened with the old password either sees the change (sessionsRepository.open) or is
     * revoked by it. Returns how many sessions it revoked; 'hash_changed' when the hash changed
     * since it was verified; what holdActor says when the actor may act no more: nothing is changed.
     */
    async changePassword (actor: Actor, { from, to }: { from: string, to: string }, now: Date): Promise<number | 'hash_changed' | ActorEnded> {
      return actingAs(database, actor, async (tx) => {
        if ((await replaceHash(tx, actor.userId, from, to, now)).length === 0) return 'hash_changed' as const
        return (await revokeSessionsOf(tx, actor.userId, now, actor.sessionId)).length
      })
    },

    /** One page in creation order (then id, so ties are stable); limit + 1 rows tell whether more follow. */
    async page ({ limit, after, emailContains }: UserPage): Promise<User[]> {
      const conditions: SQL[] = []
      if (after) {
        conditions.push(or(gt(users.createdAt, after.createdAt), and(eq(users.createdAt, after.createdAt), gt(users.id, after.id)))!)
      }
      if (emailContains) conditions.push(dialect.contains(users.email, emailContains))
      return db.select(publicColumns).from(users).where(and(...conditions))
        .orderBy(asc(users.createdAt), asc(users.id)).limit(limit)
    },

    async hasEnabledAdmin (): Promise<boolean> {
      return enabledAdminExists(db)
    },

    /**
     * An admin's change to a user, refused with last_admin when it would leave no enabled admin.
     * A role change or a disable also revokes the user's sessions.
     * The checks and the write share one transaction under the admins lock, so two admins demoting
     * each other at once cannot both succeed, on one instance or several (session_ended for the second).
     */
    async adminUpdate (actor: Actor, id: string, changes: AdminChanges): Promise<AdminUpdate | ActorEnded> {
      return asActingAdmin(actor, async (tx): Promise<AdminUpdate> => {
        const [current] = await tx.select(publicColumns).from(users).where(eq(users.id, id))
        if (!current) return { outcome: 'not_found' } as const
        const roles = changes.roles ? normaliseRoles(changes.roles) : current.roles
        const disabled = changes.disabled ?? current.disabled
        const wasEnabledAdmin = isAdmin(current.roles) && !current.disabled
        if (wasEnabledAdmin && !(isAdmin(roles) && !disabled) && !await enabledAdminExists(tx, id)) {
          return { outcome: 'last_admin' } as const
        }
        const now = new Date()
        const [user] = await tx.update(users).set({
          roles,
          disabled,
          ...(changes.name !== undefined ? { name: changes.name } : {}),
          updatedAt: now
        }).where(eq(users.id, id)).returning(publicColumns)
        const rolesChanged = roles.join() !== current.roles.join()
        const disabledNow = disabled && !current.disabled
        // In the same transaction: no moment in which the new roles meet a session still open.
        const revoked = rolesChanged || disabledNow ? await revokeSessionsOf(tx, id, now) : []
        return { outcome: 'updated', user: user!, rolesChanged, disabledNow, revokedSessions: revoked.length } as const
      })
    },

    /** Deletes a user (sessions go with it), unless they are the last enabled admin. */
    async adminDelete (actor: Actor, id: string): Promise<'deleted' | 'not_found' | 'last_admin' | ActorEnded> {
      return asActingAdmin(actor, async (tx) => {
        const [current] = await tx.select(publicColumns).from(users).where(eq(users.id, id))
        if (!current) return 'not_found'
        if (isAdmin(current.roles) && !current.disabled && !await enabledAdminExists(tx, id)) return 'last_admin'
        await tx.delete(users).where(eq(users.id, id))
        return 'deleted' as const
      })
    }
  }
}

export type UserRepository = ReturnType<typeof createUserRepository>

declare module 'fastify' {
  interface FastifyInstance {
    usersRepository: UserRepository
  }
}

export default fp(async function usersRepositoryPlugin (app: FastifyInstance) {
  app.decorate('usersRepository', app.database.serialise(createUserRepository(app.database)))
}, { name: 'users-repository', dependencies: ['database'] })
