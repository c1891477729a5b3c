// @ts-check
'use strict';
// The command-line tool behind bin/simple-distributed-lock.js: parses the arguments, opens a
// Lock with the public API, runs the command, and resolves to the exit code.

const { readFileSync } = require('node:fs');
const { join } = require('node:path');
const { parse, helpText, UsageError } = require('./args');
const { Reporter, errorMessage, NAME } = require('./output');

const EXIT_USAGE = 2;
const EXIT_SOFTWARE = 70; // EX_SOFTWARE: the engine cannot load, or a bug here

/**
 * @param {string[]} argv the arguments after the program name
 * @param {NodeJS.ProcessEnv} env
 * @returns {Promise<number>}
 */
async function main(argv, env) {
  if (typeof require('node:util').parseArgs !== 'function') {
    process.stderr.write(`${NAME}: needs Node.js 18.3 or newer (this is ${process.version})\n`);
    return EXIT_SOFTWARE;
  }
  /** @type {import('./args').Parsed} */
  let parsed;
  try {
    parsed = parse(argv, env);
    if (parsed.command === 'help') {
      process.stdout.write(`${helpText(parsed.topic)}\n`);
      return 0;
    }
  } catch (err) {
    return usage(err, argv[0]);
  }
  if (parsed.command === 'version') {
    const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8'));
    process.stdout.write(`${manifest.version}\n`);
    return 0;
  }
  const out = new Reporter(parsed, process.stdout);
  const err = new Reporter(parsed, process.stderr);

  /** @type {typeof import('../lock').Lock} */
  let Lock;
  try {
    ({ Lock } = require('../lock'));
  } catch (error) {
    err.error(error); // ERR_LOCK_NATIVE_MISSING: names the platform and what to do
    return EXIT_SOFTWARE;
  }
  let lock;
  try {
    lock = new Lock(parsed.target.spec, { prefix: parsed.prefix });
  } catch (error) {
    if (!(error instanceof TypeError || error instanceof RangeError)) {
      err.error(error);
      return EXIT_SOFTWARE;
    }
    // The library never echoes a URL; drop its long list of what it accepts.
    const message = errorMessage(error).replace(/^redis(\[\d+\])? must be .*?; /, '');
    return usage(new UsageError(`${parsed.target.source}: ${message}`), parsed.command);
  }
  try {
    if (parsed.command === 'run') return await require('./run').run(parsed, lock, err);
    const inspect = require('./inspect');
    if (parsed.command === 'status') return await inspect.status(parsed, lock, out, err);
    return await inspect.release(parsed, lock, out, err);
  } catch (error) {
    err.error(error);
    return EXIT_SOFTWARE;
  } finally {
    await lock.close();
  }
}

/** One line on stderr, exit code 2. @param {unknown} err @param {string | undefined} command */
function usage(err, command) {
  if (!(err instanceof UsageError)) throw err;
  const help = ['run', 'status', 'release'].includes(/** @type {string} */ (command)) ? `${NAME} ${command} --help` : `${NAME} --help`;
  process.stderr.write(`${NAME}: ${err.message} (see ${help})\n`);
  return EXIT_USAGE;
}

module.exports = { main };
