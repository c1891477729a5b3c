// @ts-check
'use strict';
// What the tool says: one line per event, as a message for people or (--json) as a JSON object
// for log shippers. Nothing written here holds a URL or a password: messages name the server at
// most as host:port, as the library's errors do.

const NAME = 'simple-distributed-lock';

class Reporter {
  /**
   * @param {{ json: boolean, quiet: boolean }} mode
   * @param {NodeJS.WritableStream} stream
   */
  constructor(mode, stream) {
    this.json = mode.json;
    this.quiet = mode.quiet;
    this.stream = stream;
  }

  /**
   * An event: as a JSON line with --json, else `message` (if any) as one line.
   * @param {string} event @param {Record<string, unknown>} fields
   * @param {string | null} message @param {{ always?: boolean, plain?: boolean }} [how]
   *   always: print even with --quiet; plain: print the message without the program's name
   */
  event(event, fields, message, how = {}) {
    if (this.json) {
      this.stream.write(`${JSON.stringify({ event, time: new Date().toISOString(), ...fields })}\n`);
    } else if (message !== null && (how.always || !this.quiet)) {
      this.stream.write(`${how.plain ? '' : `${NAME}: `}${oneLine(message)}\n`);
    }
  }

  /** @param {unknown} err @param {Record<string, unknown>} [fields] */
  error(err, fields = {}) {
    const message = errorMessage(err);
    const code = /** @type {{ code?: unknown }} */ (err)?.code;
    this.event('error', { ...fields, message, code: typeof code === 'string' ? code : undefined }, message, { always: true });
  }
}

/** @param {unknown} err */
function errorMessage(err) {
  return oneLine(err instanceof Error ? err.message : String(err));
}

/** @param {string} text */
function oneLine(text) {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/** Ms as people read them: "850 ms", "12.3 s", "4 min 10 s". @param {number} ms */
function duration(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** Ends the process once stdout and stderr are flushed (pipes may be asynchronous). @param {number} code */
function exit(code) {
  process.exitCode = code;
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

module.exports = { Reporter, errorMessage, duration, exit, NAME };
