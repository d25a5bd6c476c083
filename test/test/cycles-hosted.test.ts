import { cyclesOf } from './cycles.ts'

cyclesOf('hosted')
