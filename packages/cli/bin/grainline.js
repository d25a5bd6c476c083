#!/usr/bin/env node
// The `grainline` command: the compiled CLI (npx tsc -b builds it into dist/).
import '../dist/src/bin.js'
