export const ROLES = ['user', 'member', 'developer', 'admin'] as const
export type Role = typeof ROLES[number]
