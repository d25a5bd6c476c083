import { cyclesOf } from './cycles.ts'

cyclesOf('sesparse')
