import { eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { Role } from '../auth/permissions.ts'
import type { Db } from '../db/index.ts'
import { users, type UserRow } from '../db/schema.ts'

/** A user as the rest of the app sees it: never with the password hash. */
export type User = Omit<UserRow, 'passwordHash'>

export interface NewUser {
  email: string
  name?: string | null
  passwordHash: string
  roles: Role[]
}

const publicColumns = {
  id: users.id,
  email: users.email,
  name: users.name,
  roles: users.roles,
  disabled: users.disabled,
  createdAt: users.createdAt,
  updatedAt: users.updatedAt
}

function isUniqueViolation (error: unknown): boolean {
  return (error as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE'
}

export function createUserRepository (db: Db) {
  return {
    /** The new user, or null when the (normalised) email is taken. */
    async create (input: NewUser): Promise<User | null> {
      const at = new Date()
      try {
        const [created] = await db.insert(users).values({
          id: randomUUID(),
          email: input.email,
          name: input.name ?? null,
          roles: input.roles,
          passwordHash: input.passwordHash,
          createdAt: at,
          updatedAt: at
        }).returning(publicColumns)
        return created!
      } catch (error) {
        if (isUniqueViolation(error)) return null
        throw error
      }
    },

    async findById (id: string): Promise<User | undefined> {
      const [user] = await db.select(publicColumns).from(users).where(eq(users.id, id))
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

    async updateName (id: string, name: string | null): Promise<User | undefined> {
      const [user] = await db.update(users).set({ name, updatedAt: new Date() }).where(eq(users.id, id)).returning(publicColumns)
      return user
    },

    async updatePasswordHash (id: string, passwordHash: string): Promise<void> {
      await db.update(users).set({ passwordHash, updatedAt: new Date() }).where(eq(users.id, id))
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
  app.decorate('usersRepository', createUserRepository(app.db))
}, { name: 'users-repository', dependencies: ['database'] })
