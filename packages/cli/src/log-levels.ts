/** Log levels a user may pass (`--log-level`; a module of its own so the flags do not load the logger). */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const
