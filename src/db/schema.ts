import { sql } from 'drizzle-orm'
import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core'
import type { Role } from '../auth/permissions.ts'

const now = sql`(cast(unixepoch('subsec') * 1000 as integer))`

export const users = sqliteTable('users', {
  id: text('id').primaryKey(),
  /** Normalised (trimmed, lower-cased) before it is stored; unique. */
  email: text('email').notNull().unique(),
  name: text('name'),
  roles: text('roles', { mode: 'json' }).$type<Role[]>().notNull(),
  passwordHash: text('password_hash').notNull(),
  disabled: integer('disabled', { mode: 'boolean' }).notNull().default(false),
  createdAt: integer('created_at', { mode: 'timestamp_ms' }).notNull().default(now),
  updatedAt: integer('updated_at', { mode: 'timestamp_ms' }).notNull().default(now)
})

export type UserRow = typeof users.$inferSelect
