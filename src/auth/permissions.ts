/**
 * The one role → permission table. Routes ask for a permission, never for a role name, so a new
 * role or a changed grant is one line here.
 */
export const ROLES = ['user', 'member', 'developer', 'admin'] as const
export type Role = typeof ROLES[number]

export const PERMISSIONS = [
  'clothes:read',
  'clothes:write',
  'videos:watch-member',
  'videos:publish',
  'videos:manage-any',
  'users:manage'
] as const
export type Permission = typeof PERMISSIONS[number]

const GRANTS: Record<Role, readonly Permission[]> = {
  // Everyone: the catalogue is for signed-in users.
  user: ['clothes:read'],
  // Paid membership: member-only content.
  member: ['videos:watch-member'],
  // Publishes videos and, to check them, watches member-only ones.
  developer: ['videos:watch-member', 'videos:publish'],
  // Everything, user management included.
  admin: PERMISSIONS
}

const PERMISSIONS_BY_ROLE = new Map(ROLES.map((role) => [role, new Set(GRANTS[role])]))

export function hasPermission (roles: readonly Role[], permission: Permission): boolean {
  return roles.some((role) => PERMISSIONS_BY_ROLE.get(role)?.has(permission))
}

/** Every permission these roles grant, in the table's order. */
export function permissionsOf (roles: readonly Role[]): Permission[] {
  return PERMISSIONS.filter((permission) => hasPermission(roles, permission))
}

/** The roles a user ends up with: `user` always, no duplicates, in the table's order. */
export function normaliseRoles (roles: readonly Role[]): Role[] {
  return ROLES.filter((role) => role === 'user' || roles.includes(role))
}

export const isAdmin = (roles: readonly Role[]) => roles.includes('admin')
