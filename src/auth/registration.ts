import { isNewAccountEmail, normaliseEmail } from './email.ts'
import { hashPassword, passwordProblem, type StillWaiting } from './passwords.ts'
import { normaliseRoles, type Role } from './permissions.ts'
import type { User, UserRepository } from '../repositories/users.ts'

export type Registration =
  | { outcome: 'created', user: User }
  | { outcome: 'invalid_email' }
  | { outcome: 'weak_password', message: string }
  | { outcome: 'email_taken' }

/** Creates an account the one way: normalised email, password policy, argon2id hash. */
export async function registerUser (
  users: Pick<UserRepository, 'create'>,
  input: { email: string, password: string, name?: string | null | undefined, roles?: Role[] },
  stillWaiting?: StillWaiting
): Promise<Registration> {
  const email = normaliseEmail(input.email)
  if (!isNewAccountEmail(email)) return { outcome: 'invalid_email' }
  const problem = passwordProblem(input.password, email)
  if (problem) return { outcome: 'weak_password', message: problem }
  const user = await users.create({
    email,
    name: input.name ?? null,
    passwordHash: await hashPassword(input.password, stillWaiting),
    roles: normaliseRoles(input.roles ?? [])
  })
  return user ? { outcome: 'created', user } : { outcome: 'email_taken' }
}
