#!/usr/bin/env node
// One installable tarball of the `grainline` command: the cli package with
// every package it runs on bundled inside it — the workspace packages
// (@grainline/protocol, vmdk, agent, receiver) and their registry
// dependencies — so it installs on a DR host without a registry. npm does not
// bundle workspace links by itself (`bundleDependencies` of a workspace
// package packs nothing), and the @grainline packages are not on a registry,
// so each package is packed on its own (`npm pack`: its `files` only) and the
// parts are put together here. Native modules (lz4, msgpackr-extract,
// bufferutil) are the prebuilt ones of the platform the tarball is made on.
//
//   npm run build && node scripts/pack.mjs [OUT_DIR]     → OUT_DIR/grainline-<version>.tgz
//   sudo npm install -g OUT_DIR/grainline-<version>.tgz   → `grainline` on PATH
//
// Prints the tarball's path as the last line of stdout.
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(process.argv[2] ?? join(repo, 'pack'))
const bundled = { '@grainline/protocol': 'protocol', '@grainline/vmdk': 'packages/vmdk', '@grainline/agent': 'packages/agent', '@grainline/receiver': 'packages/receiver' }

const work = mkdtempSync(join(tmpdir(), 'grainline-pack-'))
try {
  /** `npm pack` of a workspace folder into `work`, unpacked into `dest`; returns its package.json */
  const unpack = (folder, dest) => {
    // npm's JSON lists every file: past execFileSync's default 1 MiB buffer for the bundle (since 2026-12-04)
    const [info] = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], { cwd: join(repo, folder), encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 }))
    mkdirSync(dest, { recursive: true })
    execFileSync('tar', ['-xzf', join(work, info.filename), '-C', dest, '--strip-components=1'])
    return JSON.parse(readFileSync(join(dest, 'package.json'), 'utf8'))
  }
  const stage = join(work, 'grainline')
  const cli = unpack('packages/cli', stage)
  // the bundled packages stay in `dependencies` (npm bundles only declared dependencies)
  const deps = { ...cli.dependencies }
  for (const [name, folder] of Object.entries(bundled)) {
    const pkg = JSON.parse(readFileSync(join(repo, folder, 'package.json'), 'utf8'))
    if (pkg.name !== name) throw new Error(`${folder} holds ${pkg.name}, not ${name}`)
    if (pkg.version !== cli.version) throw new Error(`${name} is ${pkg.version}, grainline is ${cli.version}: one version for all`)
    for (const [dep, range] of Object.entries(pkg.dependencies ?? {})) {
      if (dep in bundled) {
        if (range !== cli.version) throw new Error(`${name} wants ${dep}@${range}, the bundle holds ${cli.version}`)
        continue
      }
      if (deps[dep] !== undefined && deps[dep] !== range) throw new Error(`${dep}: ${name} wants ${range}, another package ${deps[dep]}; align them`)
      deps[dep] = range
    }
  }
  cli.dependencies = Object.fromEntries(Object.entries(deps).sort(([a], [b]) => a.localeCompare(b)))
  delete cli.devDependencies
  // npm counts every package reachable from a bundled one as part of the
  // bundle, so the bundle must hold the whole tree: install the registry
  // dependencies into the staging folder first (no install scripts; native
  // modules come prebuilt for this platform), then bundle everything
  const thirdParty = Object.fromEntries(Object.entries(cli.dependencies).filter(([name]) => !(name in bundled)))
  writeFileSync(join(stage, 'package.json'), JSON.stringify({ name: 'grainline-pack-stage', private: true, dependencies: thirdParty }, null, 2) + '\n')
  execFileSync('npm', ['install', '--omit=dev', '--ignore-scripts', '--no-package-lock', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: stage, stdio: ['ignore', 'ignore', 'inherit'] })
  // after the install (npm removes what its package.json does not name)
  for (const [name, folder] of Object.entries(bundled)) unpack(folder, join(stage, 'node_modules', name))
  cli.bundleDependencies = Object.keys(cli.dependencies)
  writeFileSync(join(stage, 'package.json'), JSON.stringify(cli, null, 2) + '\n')
  mkdirSync(out, { recursive: true })
  // npm lists every file of the bundle in its JSON (past 1 MiB, execFileSync's default buffer, since 2026-12-04)
  const [info] = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', out], { cwd: stage, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 }))
  const inside = new Set(info.bundled ?? [])
  const missing = Object.keys(bundled).filter((n) => !inside.has(n))
  if (missing.length > 0) throw new Error(`npm did not bundle ${missing.join(', ')}`)
  process.stdout.write(`${info.files.length} files, ${(info.size / 1024 / 1024).toFixed(1)} MiB, ${inside.size} packages bundled (installs without a registry)\n${join(out, info.filename)}\n`)
} finally {
  rmSync(work, { recursive: true, force: true })
}
