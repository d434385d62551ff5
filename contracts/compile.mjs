// Compile every contracts/*.sol with the pinned npm `solc` and write the committed
// build output: contracts/build/<ContractName>.json with {abi, bytecode,
// contractName, solcVersion}, keys sorted, 2-space indent, trailing newline, so
// the output is byte-for-byte stable and a test can diff it.
//
//   node contracts/compile.mjs          write contracts/build/*.json
//   node contracts/compile.mjs --check  compile in memory; exit 1 and name every
//                                       build file that is missing, stale or extra
//
// Imports starting with "@" (e.g. @openzeppelin/contracts/...) resolve from the
// repository's node_modules; other imports resolve from the repository root.

import { readFileSync, readdirSync, writeFileSync, mkdirSync, existsSync, unlinkSync } from 'node:fs'
import { dirname, join, resolve, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const contractsDir = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(contractsDir, '..')
const buildDir = join(contractsDir, 'build')
const nodeModules = join(repoRoot, 'node_modules')
const require = createRequire(join(repoRoot, 'package.json'))
const solc = require('solc')

function isInside(parent, child) {
  const rel = relative(parent, child)
  return rel !== '' && !rel.startsWith('..') && !rel.startsWith(sep)
}

function findImports(importPath) {
  const base = importPath.startsWith('@') ? nodeModules : repoRoot
  const file = resolve(base, importPath)
  if (!isInside(base, file)) return { error: `import escapes ${base}: ${importPath}` }
  if (!existsSync(file)) {
    const hint = importPath.startsWith('@') ? ' (run `npm ci` first)' : ''
    return { error: `import not found: ${importPath}${hint}` }
  }
  return { contents: readFileSync(file, 'utf8') }
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, sortKeys(value[key])]))
  }
  return value
}

function compile() {
  const sourceFiles = readdirSync(contractsDir).filter((name) => name.endsWith('.sol')).sort()
  const sources = {}
  for (const name of sourceFiles) {
    sources[`contracts/${name}`] = { content: readFileSync(join(contractsDir, name), 'utf8') }
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      optimizer: { enabled: true, runs: 200 },
      evmVersion: 'cancun',
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
    },
  }
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }))
  const problems = output.errors ?? []
  for (const problem of problems) process.stderr.write(problem.formattedMessage ?? `${problem.message}\n`)
  if (problems.some((problem) => problem.severity === 'error')) {
    process.stderr.write('compilation failed\n')
    process.exit(1)
  }

  const solcVersion = solc.version()
  const artifacts = new Map()
  for (const sourceName of Object.keys(sources)) {
    for (const [contractName, contract] of Object.entries(output.contracts[sourceName] ?? {})) {
      if (artifacts.has(contractName)) {
        process.stderr.write(`two contracts are named ${contractName}; names must be unique\n`)
        process.exit(1)
      }
      const artifact = sortKeys({
        contractName,
        abi: contract.abi,
        bytecode: `0x${contract.evm.bytecode.object}`,
        solcVersion,
      })
      artifacts.set(`${contractName}.json`, `${JSON.stringify(artifact, null, 2)}\n`)
    }
  }
  return artifacts
}

function committedBuildFiles() {
  if (!existsSync(buildDir)) return []
  return readdirSync(buildDir).filter((name) => name.endsWith('.json')).sort()
}

function check(artifacts) {
  const differences = []
  for (const [fileName, text] of artifacts) {
    const file = join(buildDir, fileName)
    if (!existsSync(file)) differences.push(`missing: contracts/build/${fileName}`)
    else if (readFileSync(file, 'utf8') !== text) differences.push(`stale: contracts/build/${fileName}`)
  }
  for (const fileName of committedBuildFiles()) {
    if (!artifacts.has(fileName)) differences.push(`extra: contracts/build/${fileName}`)
  }
  if (differences.length > 0) {
    for (const line of differences) process.stderr.write(`${line}\n`)
    process.stderr.write('the committed build differs from the sources: run `node contracts/compile.mjs`\n')
    process.exit(1)
  }
  process.stdout.write(`contracts/build is up to date (${artifacts.size} artifacts)\n`)
}

function write(artifacts) {
  mkdirSync(buildDir, { recursive: true })
  for (const fileName of committedBuildFiles()) {
    if (!artifacts.has(fileName)) unlinkSync(join(buildDir, fileName))
  }
  for (const [fileName, text] of artifacts) writeFileSync(join(buildDir, fileName), text)
  process.stdout.write(`wrote ${artifacts.size} artifacts to contracts/build\n`)
}

const artifacts = compile()
if (process.argv.includes('--check')) check(artifacts)
else write(artifacts)
