import { sql } from 'drizzle-orm'
import { index, integer, sqliteTable, text } from 'drizzle-orm/sqlite-core'
import type { Role } from '../../auth/permissions.ts'

// The SQLite dialect of the schema. postgres/schema.ts mirrors it table for table, column for
// column; the repositories are written once against those names.

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
}, (table) => [index('users_created_id_idx').on(table.createdAt, table.id)])

/** One row per sign-in: what the user sees in GET /auth/sessions and can revoke. */
export const sessions = sqliteTable('sessions', {
  id: text('id').primaryKey(),
  userId: text('user_id').notNull().references(() => users.id, { onDelete: 'cascade' }),
  createdAt: integer('created_at', { mode: 'timestamp_ms' }).notNull(),
  lastUsedAt: integer('last_used_at', { mode: 'timestamp_ms' }).notNull(),
  /** Moves forward with each refresh: a session ends REFRESH_TOKEN_TTL after its last use, or at SESSION_MAX_AGE. */
  expiresAt: integer('expires_at', { mode: 'timestamp_ms' }).notNull(),
  userAgent: text('user_agent'),
  ip: text('ip'),
  revokedAt: integer('revoked_at', { mode: 'timestamp_ms' })
}, (table) => [index('sessions_user_id_idx').on(table.userId)])

/**
 * Refresh tokens are stored only as SHA-256 hashes (they carry 256 random bits, so a slow hash adds
 * nothing). A used token stays as evidence: presenting it again is reuse (RFC 9700 §4.14.2).
 */
export const refreshTokens = sqliteTable('refresh_tokens', {
  id: text('id').primaryKey(),
  tokenHash: text('token_hash').notNull().unique(),
  sessionId: text('session_id').notNull().references(() => sessions.id, { onDelete: 'cascade' }),
  parentId: text('parent_id'),
  issuedAt: integer('issued_at', { mode: 'timestamp_ms' }).notNull(),
  expiresAt: integer('expires_at', { mode: 'timestamp_ms' }).notNull(),
  usedAt: integer('used_at', { mode: 'timestamp_ms' }),
  /** Set when a grace-window retry replaced this token before the client ever used it. */
  revokedAt: integer('revoked_at', { mode: 'timestamp_ms' })
}, (table) => [index('refresh_tokens_session_id_idx').on(table.sessionId)])

export const videos = sqliteTable('videos', {
  id: text('id').primaryKey(),
  /** The publisher. A deleted publisher leaves the video to the admins (null), not lost. */
  userId: text('user_id').references(() => users.id, { onDelete: 'set null' }),
  title: text('title').notNull(),
  author: text('author').notNull(),
  url: text('url').notNull(),
  isMemberOnly: integer('is_member_only', { mode: 'boolean' }).notNull().default(false),
  createdAt: integer('created_at', { mode: 'timestamp_ms' }).notNull(),
  updatedAt: integer('updated_at', { mode: 'timestamp_ms' }).notNull()
}, (table) => [index('videos_member_created_idx').on(table.isMemberOnly, table.createdAt)])

export const clothes = sqliteTable('clothes', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  color: text('color'),
  size: text('size'),
  /** Integer cents: money is never a float. */
  price: integer('price').notNull(),
  createdAt: integer('created_at', { mode: 'timestamp_ms' }).notNull(),
  updatedAt: integer('updated_at', { mode: 'timestamp_ms' }).notNull()
})
