import { Type, type Static } from 'typebox'
import { EMAIL_MAX_LENGTH } from '../auth/email.ts'
import { PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH } from '../auth/passwords.ts'
import { ROLES } from '../auth/permissions.ts'
import type { User } from '../repositories/users.ts'
import { ERROR_CODES } from '../errors.ts'

/**
 * The route normalises it (trims, lower-cases) before validation, so the schema is of the
 * normalised email; its description says so to clients that validate against the OpenAPI
 * document.
 */
export const Email = Type.String({
  format: 'email',
  maxLength: EMAIL_MAX_LENGTH,
  description: 'Surrounding spaces are trimmed and letters lower-cased first; the format and the length limit apply to the result. A new account\'s has at most 64 characters before the @',
  examples: ['ada@example.com']
})
const passwordLength = { minLength: PASSWORD_MIN_LENGTH, maxLength: PASSWORD_MAX_LENGTH }
/** A password being set (signup, the new one of a change): the whole policy applies. */
export const NewPassword = Type.String({
  ...passwordLength,
  description: `${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters, whitespace around it not counted; not the email, not a common password`
})
/** A password presented to prove who the caller is: only its length is checked before hashing. */
export const Password = Type.String({ ...passwordLength, description: 'The account\'s current password' })
/** Ours are 43 characters; a longer one is refused by its schema before any lookup. */
export const REFRESH_TOKEN_MAX_LENGTH = 512
/** A UUID's text, `hex` being the class of one hex digit. */
const uuidPattern = (hex: string) => `^${hex}{8}-${hex}{4}-${hex}{4}-${hex}{4}-${hex}{12}$`
/**
 * A UUID in either case (RFC 9562 §4: case-insensitive on input; path parameters are lower-cased
 * before use, plugins/validation.ts), without the `urn:uuid:` prefix ajv's format also takes.
 */
export const Uuid = Type.String({ format: 'uuid', pattern: uuidPattern('[0-9a-fA-F]') })
const STORED_UUID = new RegExp(uuidPattern('[0-9a-f]'))
/** An id as stored (randomUUID(): lower case), for one no schema checked, such as one decoded from a cursor. */
export const isUuid = (text: string) => STORED_UUID.test(text)
export const NAME_MAX_LENGTH = 100
/** Controls (C0, DEL, C1), line and paragraph separators, and the bidirectional format characters. */
const REFUSED_IN_TEXT = /[\p{Cc}\p{Zl}\p{Zp}\u061C\u200E\u200F\u202A-\u202E\u2066-\u2069]/u
/** A character that shows: not a control, format, space, combining mark, default-ignorable filler nor the braille blank. */
const VISIBLE_CHARACTER = /[^\p{C}\p{Z}\p{M}\p{Default_Ignorable_Code_Point}\u2800]/u
/** The deprecated shaping switches and the tag characters, which show nothing and can carry hidden ASCII text. */
const HIDDEN_IN_TEXT = /[\u206A-\u206F\u{E0000}-\u{E007F}]/u
/**
 * Where tag characters have a use: the subdivision flags Unicode recommends (UTS #51 §2.8), 🏴 then
 * the tags of gbeng, gbsct or gbwls, ended by CANCEL TAG. Any other tags could spell hidden text.
 */
const EMOJI_TAG_SEQUENCE = /\u{1F3F4}(?:\u{E0067}\u{E0062}(?:\u{E0065}\u{E006E}\u{E0067}|\u{E0073}\u{E0063}\u{E0074}|\u{E0077}\u{E006C}\u{E0073}))\u{E007F}/gu
/**
 * `format: 'display-text'`, for text shown wherever users, videos or clothes are listed: something
 * visible, and none of what would forge lines, reorder the text or hide text there (a newline, a
 * terminal escape, U+2028, a right-to-left override: `Ada\u202Egnp.exe` shows as `Adaexe.png`;
 * tags outside a flag).
 */
export const isDisplayText = (text: string) => VISIBLE_CHARACTER.test(text) && !REFUSED_IN_TEXT.test(text) &&
  !HIDDEN_IN_TEXT.test(text.replace(EMOJI_TAG_SEQUENCE, ''))
/** The Name schema's rule, for a name no schema checks (user:create): lengths in characters, as JSON Schema counts them. */
export const isName = (text: string) => text.length > 0 && [...text].length <= NAME_MAX_LENGTH && isDisplayText(text)
const TEXT_RULE = 'at least one visible, none a control, line-break, text-direction or hidden tag character'
export const NAME_RULE = `1 to ${NAME_MAX_LENGTH} characters, ${TEXT_RULE}`
/** Text that is shown to others (a name, a title): 1 to `maxLength` characters, by isDisplayText. */
export const DisplayText = (maxLength: number, options: { examples?: string[] } = {}) => Type.String({
  minLength: 1,
  maxLength,
  format: 'display-text',
  description: `1 to ${maxLength} characters, ${TEXT_RULE}`,
  ...options
})
export const Name = DisplayText(NAME_MAX_LENGTH)
/** A name being set, anywhere one is: null for none, as a user's `name` reads. */
export const NameOrNone = Type.Union([Name, Type.Null()])
// `type` beside the enum: generators of typed clients read it, not the values, to type the field.
export const RoleName = Type.Enum(ROLES, { type: 'string' })
export const Timestamp = Type.String({ format: 'date-time' })

export const ErrorResponse = Type.Object({
  statusCode: Type.Integer(),
  error: Type.String(),
  message: Type.String(),
  code: Type.String({ enum: [...ERROR_CODES], description: 'Stable machine-readable error code (README "Error codes")' })
}, { title: 'Error' })
/**
 * An error answer of one route, described by its codes. The OpenAPI document adds what every
 * route of its kind may answer besides (plugins/docs.ts).
 */
export const errorResponse = (description: string) => ({ ...ErrorResponse, description })
/** The refusals of a route behind a permission or ownership check: not signed in, not allowed. */
export const guardedErrors = { 401: ErrorResponse, 403: ErrorResponse }

export const UserResponse = Type.Object({
  id: Uuid,
  email: Type.String({ format: 'email' }),
  name: Type.Union([Type.String(), Type.Null()]),
  roles: Type.Array(RoleName),
  created_at: Timestamp,
  updated_at: Timestamp
}, { title: 'User' })

export const SessionResponse = Type.Object({
  access_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'Access token lifetime in seconds' }),
  refresh_token: Type.String({ description: 'Opaque, single use: each refresh returns a new one' }),
  user: UserResponse
}, { title: 'Session' })

export function presentUser (user: User): Static<typeof UserResponse> {
  return {
    id: user.id,
    email: user.email,
    name: user.name,
    roles: user.roles,
    created_at: user.createdAt.toISOString(),
    updated_at: user.updatedAt.toISOString()
  }
}
