#!/usr/bin/env node
// @ts-check
'use strict';
// npx simple-distributed-lock run <resource> -- <command> [args...]   (see --help, and the README)

const { main } = require('../lib/cli/main');
const { exit } = require('../lib/cli/output');

// A closed pipe on our side (`... status x | head -c1`) is not worth a crash.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

main(process.argv.slice(2), process.env).then(exit, (err) => {
  process.stderr.write(`simple-distributed-lock: ${err instanceof Error ? err.message : String(err)}\n`);
  exit(70);
});
