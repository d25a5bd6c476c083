import { cyclesOf } from './cycles.ts'

cyclesOf('vmfssparse')
