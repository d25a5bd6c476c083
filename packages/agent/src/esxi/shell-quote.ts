/** POSIX sh quoting for command lines run by the ESXi shell (busybox ash): protocol's, shared with the commands grainline prints. */
export { shQuote, shJoin } from '@grainline/protocol'
