import { boolean, index, integer, jsonb, pgTable, text, timestamp } from 'drizzle-orm/pg-core'
import type { Role } from '../../auth/permissions.ts'

// The PostgreSQL dialect of sqlite/schema.ts (see the comments there): the same tables and
// columns. Ids are text holding UUIDs, as in SQLite, so a malformed id compares unequal instead of
// failing a cast. Times keep milliseconds, like the JavaScript dates written to them.
const at = (name: string) => timestamp(name, { withTimezone: true, precision: 3, mode: 'date' })

export const users = pgTable('users', {
  id: text('id').primaryKey(),
  email: text('email').notNull().unique(),
  name: text('name'),
  roles: jsonb('roles').$type<Role[]>().notNull(),
  passwordHash: text('password_hash').notNull(),
  disabled: boolean('disabled').notNull().default(false),
  createdAt: at('created_at').notNull().defaultNow(),
  updatedAt: at('updated_at').notNull().defaultNow()
}, (table) => [index('users_created_id_idx').on(table.createdAt, table.id)])

export const sessions = pgTable('sessions', {
  id: text('id').primaryKey(),
  userId: text('user_id').notNull().references(() => users.id, { onDelete: 'cascade' }),
  createdAt: at('created_at').notNull(),
  lastUsedAt: at('last_used_at').notNull(),
  expiresAt: at('expires_at').notNull(),
  userAgent: text('user_agent'),
  ip: text('ip'),
  revokedAt: at('revoked_at')
}, (table) => [index('sessions_user_id_idx').on(table.userId)])

export const refreshTokens = pgTable('refresh_tokens', {
  id: text('id').primaryKey(),
  tokenHash: text('token_hash').notNull().unique(),
  sessionId: text('session_id').notNull().references(() => sessions.id, { onDelete: 'cascade' }),
  parentId: text('parent_id'),
  issuedAt: at('issued_at').notNull(),
  expiresAt: at('expires_at').notNull(),
  usedAt: at('used_at'),
  revokedAt: at('revoked_at')
}, (table) => [index('refresh_tokens_session_id_idx').on(table.sessionId)])

export const videos = pgTable('videos', {
  id: text('id').primaryKey(),
  userId: text('user_id').references(() => users.id, { onDelete: 'set null' }),
  title: text('title').notNull(),
  author: text('author').notNull(),
  url: text('url').notNull(),
  isMemberOnly: boolean('is_member_only').notNull().default(false),
  createdAt: at('created_at').notNull(),
  updatedAt: at('updated_at').notNull()
}, (table) => [index('videos_member_created_idx').on(table.isMemberOnly, table.createdAt)])

export const clothes = pgTable('clothes', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  color: text('color'),
  size: text('size'),
  price: integer('price').notNull(),
  createdAt: at('created_at').notNull(),
  updatedAt: at('updated_at').notNull()
})
