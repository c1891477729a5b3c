// @ts-check
'use strict';
// The command line: which command, its options, and the help texts. Errors are UsageErrors
// (exit code 2) with one line that names the option; values that could hold a password (URLs)
// are never repeated back.

const { parseArgs } = require('node:util');

const MAX_MS = 2 ** 31 - 1;

class UsageError extends Error {}

/** @typedef {NonNullable<import('node:util').ParseArgsConfig['options']>} Options */

/**
 * @typedef {object} Target where Redis is, as `new Lock(...)` takes it
 * @property {string | string[] | { cluster: string[] }} spec
 * @property {'single' | 'sentinel' | 'cluster' | 'redlock'} kind
 * @property {string} source what the user wrote it as, for messages: --redis, --cluster or REDIS_URL
 */

/**
 * @typedef {object} Common
 * @property {Target} target
 * @property {string} prefix
 * @property {boolean} json
 * @property {boolean} quiet
 */

/**
 * @typedef {Common & {
 *   command: 'run', resource: string, argv: string[], ttl: number, wait: number | 'forever' | undefined,
 *   conflictExitCode: number, killAfter: number, maxHold: number | undefined, retryDelay: number | undefined,
 * }} RunArgs
 * @typedef {Common & { command: 'status', resource: string }} StatusArgs
 * @typedef {Common & { command: 'release', resource: string, token: string }} ReleaseArgs
 * @typedef {{ command: 'help', topic: string | undefined } | { command: 'version' }} InfoArgs
 * @typedef {RunArgs | StatusArgs | ReleaseArgs | InfoArgs} Parsed
 */

/** @type {Options} */
const COMMON = {
  redis: { type: 'string', multiple: true },
  cluster: { type: 'string', multiple: true },
  prefix: { type: 'string' },
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean' },
};

/** @type {Options} */
const RUN = {
  ...COMMON,
  wait: { type: 'string' },
  'conflict-exit-code': { type: 'string' },
  ttl: { type: 'string' },
  'kill-after': { type: 'string' },
  'max-hold': { type: 'string' },
  'retry-delay': { type: 'string' },
};

/** `--wait` with no number after it: wait forever. */
const WAIT_FOREVER = '--wait=forever';

/**
 * @param {string[]} argv the arguments after the program name
 * @param {NodeJS.ProcessEnv} env
 * @returns {Parsed}
 */
function parse(argv, env) {
  const [first, ...rest] = argv;
  if (first === undefined) throw new UsageError('which command? run, status or release');
  if (first === '--help' || first === '-h') return { command: 'help', topic: undefined };
  if (first === 'help') return { command: 'help', topic: rest[0] };
  if (first === '--version' || first === '-v') return { command: 'version' };
  if (first === 'run') return parseRun(rest, env);
  if (first === 'status' || first === 'release') return parseInspect(first, rest, env);
  if (first.startsWith('-')) throw new UsageError(`${optionName(first)} goes after the command (run, status or release)`);
  throw new UsageError(`unknown command ${shown(first)} (commands: run, status, release)`);
}

/**
 * `run [options] <resource> [--] <command> [args...]`: options end at `--` or at the first
 * word after the resource, so the command's own options are left alone.
 * @param {string[]} args @param {NodeJS.ProcessEnv} env
 * @returns {RunArgs | InfoArgs}
 */
function parseRun(args, env) {
  /** @type {string[]} */
  const ours = [];
  let commandAt = args.length;
  let resourceSeen = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      commandAt = i + 1;
      break;
    }
    if (arg === '--wait') {
      if (/^\d+$/.test(args[i + 1] ?? '')) ours.push(arg, args[++i]);
      else ours.push(WAIT_FOREVER);
      continue;
    }
    if (arg.startsWith('-') && arg !== '-') {
      ours.push(arg);
      const spec = RUN[arg.slice(2)];
      if (arg.startsWith('--') && !arg.includes('=') && spec?.type === 'string' && i + 1 < args.length) ours.push(args[++i]);
      continue;
    }
    if (resourceSeen) {
      commandAt = i;
      break;
    }
    resourceSeen = true;
    ours.push(arg);
  }
  const { values, positionals } = parseOptions(ours, RUN);
  if (values.help) return { command: 'help', topic: 'run' };
  if (values.version) return { command: 'version' };
  if (positionals.length === 0) throw new UsageError('run needs a resource name and a command: run <resource> -- <command> [args...]');
  if (positionals.length > 1) throw new UsageError('run takes one resource name before the command');
  const argv = args.slice(commandAt);
  if (argv.length === 0) throw new UsageError('run needs a command after the resource: run <resource> -- <command> [args...]');
  const wait = values.wait === 'forever' ? 'forever' : optionalMs('--wait', values.wait, 0);
  return {
    command: 'run',
    ...common(values, env),
    resource: resourceName(positionals[0]),
    argv,
    ttl: optionalMs('--ttl', values.ttl, 1) ?? 30000,
    wait,
    conflictExitCode: exitCode('--conflict-exit-code', values['conflict-exit-code']) ?? 1,
    killAfter: optionalMs('--kill-after', values['kill-after'], 0) ?? 10000,
    maxHold: optionalMs('--max-hold', values['max-hold'], 1),
    retryDelay: optionalMs('--retry-delay', values['retry-delay'], 0),
  };
}

/**
 * `status <resource>` and `release <resource> <token>`.
 * @param {'status' | 'release'} command @param {string[]} args @param {NodeJS.ProcessEnv} env
 * @returns {StatusArgs | ReleaseArgs | InfoArgs}
 */
function parseInspect(command, args, env) {
  const { values, positionals } = parseOptions(args, COMMON);
  if (values.help) return { command: 'help', topic: command };
  if (values.version) return { command: 'version' };
  const wanted = command === 'status' ? 1 : 2;
  if (positionals.length !== wanted) {
    throw new UsageError(command === 'status' ? 'status takes one resource name: status <resource>' : 'release takes a resource name and a token: release <resource> <token>');
  }
  const resource = resourceName(positionals[0]);
  if (command === 'status') return { command, ...common(values, env), resource };
  const token = positionals[1];
  if (token === '') throw new UsageError('release: the token is empty');
  return { command, ...common(values, env), resource, token };
}

/**
 * @param {string[]} args @param {Options} options
 * @returns {{ values: Record<string, any>, positionals: string[] }}
 */
function parseOptions(args, options) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (err) {
    const e = /** @type {NodeJS.ErrnoException} */ (err);
    // parseArgs names the option, and may suggest a fix on more lines; keep the first sentence.
    const name = /'(-[^' =]*)/.exec(e.message)?.[1];
    if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown option ${name ? optionName(name) : ''}`.trim());
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && name && /does not take/.test(e.message)) throw new UsageError(`${name} takes no value`);
    if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && name) throw new UsageError(`${name} needs a value (use ${name}=<value> for one that starts with "-")`);
    throw new UsageError(String(e.message).split('\n')[0]);
  }
}

/**
 * @param {Record<string, any>} values @param {NodeJS.ProcessEnv} env
 * @returns {Common}
 */
function common(values, env) {
  return {
    target: target(values.redis, values.cluster, env),
    prefix: values.prefix ?? 'lock:',
    json: values.json === true,
    quiet: values.quiet === true,
  };
}

/**
 * @param {string[] | undefined} redis @param {string[] | undefined} cluster @param {NodeJS.ProcessEnv} env
 * @returns {Target}
 */
function target(redis, cluster, env) {
  if (redis && cluster) throw new UsageError('--redis and --cluster cannot be combined');
  if (cluster) return { spec: { cluster }, kind: 'cluster', source: '--cluster' };
  if (redis && redis.length > 1) return { spec: redis, kind: 'redlock', source: '--redis' };
  const url = redis ? redis[0] : env.REDIS_URL || 'redis://127.0.0.1:6379';
  const kind = /^rediss?\+sentinel:/.test(url) ? 'sentinel' : 'single';
  return { spec: url, kind, source: redis ? '--redis' : env.REDIS_URL ? 'REDIS_URL' : 'the default Redis' };
}

/** @param {string} name */
function resourceName(name) {
  if (name === '') throw new UsageError('the resource name is empty');
  return name;
}

/**
 * A whole number of ms from `min` to 2^31-1, or undefined when the option is absent.
 * @param {string} name @param {string | undefined} text @param {number} min
 */
function optionalMs(name, text, min) {
  if (text === undefined) return undefined;
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(value >= min && value <= MAX_MS)) {
    throw new UsageError(`${name} must be a whole number of milliseconds${min > 0 ? ` from ${min}` : ''} up to ${MAX_MS}, got ${shown(text)}`);
  }
  return value;
}

/** @param {string} name @param {string | undefined} text */
function exitCode(name, text) {
  if (text === undefined) return undefined;
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(value >= 0 && value <= 255)) throw new UsageError(`${name} must be a whole number from 0 to 255, got ${shown(text)}`);
  return value;
}

/** An option as typed, without any `=value`. @param {string} arg */
function optionName(arg) {
  return arg.split('=')[0];
}

/** A value for a message: quoted if it is plainly harmless, else not shown (it could be a URL with a password). @param {string} text */
function shown(text) {
  return /^[\w.,:+-]{0,40}$/.test(text) && !text.includes('//') ? JSON.stringify(text) : '(value not shown)';
}

const NAME = 'simple-distributed-lock';

const CONNECTION_HELP = `Redis:
  --redis <url>               redis://[[user]:password@]host[:port][/db], rediss://... (TLS),
                              unix:///path/to/socket[?db=n], or
                              redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
                              Repeat it for Redlock over independent masters (3 or 5).
                              Default: $REDIS_URL, else redis://127.0.0.1:6379.
  --cluster <node>            a Redis Cluster startup node (redis://... URL or host:port); repeat it
                              for more. Credentials and TLS of the first node are used for all.
  --prefix <text>             key prefix (default "lock:"): the lock key is <prefix><resource>

Output:
  --json                      one JSON line per event instead of messages
  -q, --quiet                 fewer messages (see below)
  -h, --help                  this help`;

/** @type {Record<string, string>} */
const HELP = {
  main: `Usage: ${NAME} <command> [options]

Commands:
  run <resource> [--] <command> [args...]   run a command while holding the lock on <resource>
  status <resource>                         is it held? for how long, with which fence
                                            (exit 0 free, 1 held)
  release <resource> <token>                release a lock by its owner token (exit 0 released,
                                            1 not owned or expired)

Run "${NAME} <command> --help" for its options.
  -h, --help      this help
  -v, --version   the version`,

  run: `Usage: ${NAME} run [options] <resource> [--] <command> [args...]

Acquires the lock on <resource>, runs <command> while holding it (extended automatically),
releases it when the command exits, and exits with the command's exit code. The command gets
LOCK_RESOURCE, LOCK_TOKEN and LOCK_FENCE in its environment. SIGINT, SIGTERM and SIGHUP are
passed on to it.

Options:
  --wait [ms]                 wait for the lock up to <ms>; --wait alone waits forever.
                              Default: do not wait (like flock -n). Use --wait=<ms> when the
                              resource name is a number.
  --conflict-exit-code <n>    exit code when the lock is held elsewhere (default 1)
  --ttl <ms>                  lock TTL, renewed every ttl/2 while the command runs (default 30000)
  --max-hold <ms>             stop the command once the lock was held this long (exit 75)
  --kill-after <ms>           grace between SIGTERM and SIGKILL when the command must stop
                              because the lock was lost or --max-hold passed (default 10000;
                              0: SIGKILL at once)
  --retry-delay <ms>          while waiting, also retry this often (default 200); a release
                              by another v2 process wakes waiters at once anyway

${CONNECTION_HELP}

  --quiet: no line on a conflict; a lost lock and errors are still reported.
  --json: the events acquired, conflict, lost, released, child-exit and error, on stderr.

Exit codes:
  the command's own (0-255), 128+n if it died by signal n
  1     the lock is held elsewhere (--conflict-exit-code)
  2     bad arguments
  69    Redis could not be used (unreachable, wrong credentials, ...)
  75    the lock was lost (or --max-hold passed) while the command ran
  70    the native engine cannot load (the message says why)
  126   the command cannot be run; 127: not found
  128+n run was stopped by signal n while waiting for the lock

Example (crontab: at most one report at a time across all hosts):
  */5 * * * * npx ${NAME} run nightly-report --ttl 60000 -- node report.js`,

  status: `Usage: ${NAME} status [options] <resource>

Says whether the lock on <resource> is held and, on one Redis server, for how much longer,
by which token, and the current fence. Exit code: 0 free, 1 held, 2 bad arguments, 69 Redis
could not be used.

${CONNECTION_HELP}

  --quiet: no output, only the exit code.
  --json: one JSON line on stdout: {"event":"status","resource",...,"held",...}`,

  release: `Usage: ${NAME} release [options] <resource> <token>

Releases the lock on <resource> if <token> still owns it (the LOCK_TOKEN a run gave its
command, or the token "status" shows). For operators cleaning up after a crashed holder.
Exit code: 0 released, 1 not released (expired, released, or another owner's), 2 bad
arguments, 69 Redis could not be used.

${CONNECTION_HELP}

  --quiet: no output, only the exit code.
  --json: one JSON line on stdout: {"event":"released","resource",...,"released":true|false}`,
};

/** @param {string | undefined} topic */
function helpText(topic) {
  if (topic !== undefined && !(topic in HELP && topic !== 'main')) throw new UsageError(`no help for ${shown(topic)} (commands: run, status, release)`);
  return HELP[topic ?? 'main'];
}

module.exports = { parse, helpText, UsageError, shown };
