// @ts-check
// A TCP fault proxy between the library and a real Redis: latency, bandwidth, blackholes,
// refused connections, resets and half-open (silent) peers, switched on and off while running.
//
//   const proxy = await FaultProxy.start({ port: server.port });
//   const lock = new Lock(proxy.url);
//   proxy.blackhole('down');   // Redis executes what it gets, its replies are lost
//   proxy.heal();              // back to plain forwarding
//   await proxy.stop();
//
// Directions: 'up' is client → server, 'down' is server → client. Every fault applies to the
// connections already open and to those opened later, until heal(). What happens to the bytes:
//   latency(ms)       each chunk is forwarded ms after it arrived (read at arrival: a change
//                     applies from the next chunk on); order is always kept.
//   bandwidth(bps)    each direction of each connection forwards at most bps bytes a second.
//   blackhole('up')   client bytes are read and held; heal() forwards them, in order, as a
//                     healed partition with TCP retransmission would deliver them (so a command
//                     sent into the partition runs on the server after the heal, unless the
//                     client reset the connection meanwhile: an RST discards them).
//   blackhole('down') server bytes are read and dropped: the server executes the commands, the
//                     replies are lost for good. Also applies to bytes still in flight (delayed
//                     by latency) when the blackhole starts. heal() closes each connection
//                     that lost bytes: TCP never resumes a stream with a hole in it, and a RESP
//                     stream that did would pair later replies with the wrong requests.
//   blackhole('both') both of the above. New connections are accepted and never answered.
//   drop()            new connections are accepted and reset (RST) at once; open ones go on.
//   cut()             every open connection is reset (RST), on both sides; new ones go on.
//   halfOpen()        nothing is read or forwarded any more, nothing is closed: the client
//                     sees a silent peer and, once the kernel buffers are full, blocked writes.
//                     heal() resumes reading and forwards what was held: nothing is lost.
//   heal()            clears every fault above (latency and bandwidth included).
// A side that closes cleanly (FIN) is passed on once what it sent before has been forwarded (or
// dropped); a side that resets makes the proxy reset the other side and discard what it holds.

import { createServer, connect } from 'node:net';

/** @typedef {'up' | 'down' | 'both'} Direction */

/**
 * @typedef {object} FaultProxyOptions
 * @property {number} port upstream port (the real Redis)
 * @property {string} [host] upstream host, default 127.0.0.1
 * @property {number} [listenPort] port to listen on, default a free one
 */

/**
 * @typedef {object} Fault the proxy-wide fault state, read by every pipe
 * @property {number} latencyMs
 * @property {number} bytesPerSecond Infinity: unlimited
 * @property {boolean} holdUp client → server bytes are held
 * @property {boolean} dropDown server → client bytes are dropped
 * @property {boolean} halfOpen
 * @property {boolean} refuse
 */

/** @param {import('node:net').Socket} socket */
function reset(socket) {
  if (socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

/** One direction of one connection: reads from `from`, writes to `to`, in order. */
class Pipe {
  /**
   * @param {'up' | 'down'} direction
   * @param {import('node:net').Socket} from
   * @param {import('node:net').Socket} to
   * @param {Fault} fault
   */
  constructor(direction, from, to, fault) {
    this.direction = direction;
    this.from = from;
    this.to = to;
    this.fault = fault;
    /** chunks waiting for their time, oldest first @type {Array<{ data: Buffer, due: number }>} */
    this.queue = [];
    /** chunks held by an 'up' blackhole, oldest first @type {Buffer[]} */
    this.held = [];
    /** the bandwidth limit lets the next byte go at this time (ms, Date.now clock) */
    this.nextFree = 0;
    /** the destination's write buffer is full: wait for 'drain' */
    this.congested = false;
    /** bytes were dropped (blackhole 'down'): the stream has a hole */
    this.lost = false;
    /** the source sent FIN: pass it on once everything before it is gone */
    this.sourceEnded = false;
    /** @type {NodeJS.Timeout | null} */
    this.timer = null;
    this.closed = false;

    from.on('data', (data) => this.onData(data));
    from.on('end', () => {
      this.sourceEnded = true;
      this.pump();
    });
    to.on('drain', () => {
      this.congested = false;
      this.flow();
      this.pump();
    });
  }

  /** @param {Buffer} data */
  onData(data) {
    if (this.closed) return;
    if (this.direction === 'down' && this.fault.dropDown) {
      this.lost = true;
      return;
    }
    if (this.direction === 'up' && this.fault.holdUp) {
      this.held.push(data);
      return;
    }
    this.queue.push({ data, due: Date.now() + this.fault.latencyMs });
    this.pump();
  }

  /** Reads from the source unless half-open or the destination is congested. */
  flow() {
    if (this.closed) return;
    if (this.fault.halfOpen || this.congested) this.from.pause();
    else this.from.resume();
  }

  /** After a fault changed: held bytes go on, the queue is looked at again. */
  refresh() {
    if (this.closed) return;
    if (!this.fault.holdUp && this.held.length > 0) {
      const now = Date.now();
      for (const data of this.held) this.queue.push({ data, due: now + this.fault.latencyMs });
      this.held = [];
    }
    this.flow();
    this.pump();
  }

  /** Forwards every chunk whose time has come; sets a timer for the next one. */
  pump() {
    if (this.closed) return;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    while (this.queue.length > 0 && !this.congested && !this.fault.halfOpen) {
      if (this.direction === 'down' && this.fault.dropDown) {
        this.lost = true;
        this.queue = [];
        break;
      }
      if (this.direction === 'up' && this.fault.holdUp) {
        for (const { data } of this.queue) this.held.push(data);
        this.queue = [];
        break;
      }
      const now = Date.now();
      const head = this.queue[0];
      const at = Math.max(head.due, this.nextFree);
      if (at > now) {
        this.timer = setTimeout(() => this.pump(), at - now);
        return;
      }
      let data = head.data;
      const bps = this.fault.bytesPerSecond;
      if (Number.isFinite(bps)) {
        // At most 50 ms worth of bytes at a time, so a slow link trickles instead of bursting.
        const slice = Math.max(1, Math.floor(bps / 20));
        if (data.length > slice) {
          head.data = data.subarray(slice);
          data = data.subarray(0, slice);
        } else {
          this.queue.shift();
        }
        this.nextFree = Math.max(now, this.nextFree) + (data.length * 1000) / bps;
      } else {
        this.queue.shift();
      }
      if (!this.to.destroyed && !this.to.write(data)) {
        this.congested = true;
        this.flow();
      }
    }
    if (this.sourceEnded && this.queue.length === 0 && this.held.length === 0 && !this.fault.halfOpen) {
      if (!this.to.destroyed && !this.to.writableEnded) this.to.end();
    }
  }

  close() {
    this.closed = true;
    this.queue = [];
    this.held = [];
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** A client connection and its upstream connection, with a pipe each way. */
class Link {
  /**
   * @param {import('node:net').Socket} client
   * @param {import('node:net').Socket} upstream
   * @param {Fault} fault
   * @param {(link: Link) => void} onClosed
   */
  constructor(client, upstream, fault, onClosed) {
    this.client = client;
    this.upstream = upstream;
    this.up = new Pipe('up', client, upstream, fault);
    this.down = new Pipe('down', upstream, client, fault);
    let done = false;
    /** @param {boolean} resetOther */
    const finish = (resetOther) => {
      if (done) return;
      done = true;
      this.up.close();
      this.down.close();
      if (resetOther) {
        reset(client);
        reset(upstream);
      }
      onClosed(this);
    };
    for (const socket of [client, upstream]) {
      // An error (ECONNRESET, ECONNREFUSED upstream, ...) on one side resets the other.
      socket.on('error', () => finish(true));
      socket.on('close', () => {
        if (client.destroyed && upstream.destroyed) finish(false);
      });
    }
    this.up.flow();
    this.down.flow();
  }

  refresh() {
    this.up.refresh();
    this.down.refresh();
  }

  cut() {
    this.up.close();
    this.down.close();
    reset(this.client);
    reset(this.upstream);
  }

  destroy() {
    this.up.close();
    this.down.close();
    this.client.destroy();
    this.upstream.destroy();
  }
}

export class FaultProxy {
  /** @param {FaultProxyOptions} options */
  static async start(options) {
    const proxy = new FaultProxy(options);
    await new Promise((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(options.listenPort ?? 0, '127.0.0.1', () => {
        proxy.server.off('error', reject);
        resolve(undefined);
      });
    });
    const address = proxy.server.address();
    proxy.#port = typeof address === 'object' && address ? address.port : 0;
    return proxy;
  }

  #port = 0;
  /** connections accepted so far, the dropped ones included */
  connections = 0;
  /** @type {Set<Link>} */
  #links = new Set();
  /** @type {Fault} */
  #fault = { latencyMs: 0, bytesPerSecond: Infinity, holdUp: false, dropDown: false, halfOpen: false, refuse: false };

  /** @param {FaultProxyOptions} options use FaultProxy.start */
  constructor(options) {
    this.upstreamPort = options.port;
    this.upstreamHost = options.host ?? '127.0.0.1';
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => this.#accept(client));
  }

  /** the port the proxy listens on (127.0.0.1) */
  get port() {
    return this.#port;
  }

  /** redis://127.0.0.1:<port> */
  get url() {
    return `redis://127.0.0.1:${this.#port}`;
  }

  /** connections open now */
  get open() {
    return this.#links.size;
  }

  /** @param {import('node:net').Socket} client */
  #accept(client) {
    this.connections++;
    client.on('error', () => {});
    if (this.#fault.refuse) {
      reset(client);
      return;
    }
    client.setNoDelay(true);
    const upstream = connect({ port: this.upstreamPort, host: this.upstreamHost, allowHalfOpen: true });
    upstream.setNoDelay(true);
    upstream.pause();
    const link = new Link(client, upstream, this.#fault, (l) => this.#links.delete(l));
    this.#links.add(link);
  }

  #refresh() {
    for (const link of this.#links) link.refresh();
  }

  /**
   * Delays every chunk, in each direction, by this much (0: none). Applies to chunks that
   * arrive from now on; order is kept.
   * @param {number} msEachWay
   */
  latency(msEachWay) {
    if (!(msEachWay >= 0)) throw new RangeError(`latency must be >= 0 ms, got ${msEachWay}`);
    this.#fault.latencyMs = msEachWay;
    return this;
  }

  /**
   * Limits each direction of each connection to this many bytes per second (Infinity or 0:
   * unlimited).
   * @param {number} bytesPerSecond
   */
  bandwidth(bytesPerSecond) {
    if (!(bytesPerSecond >= 0)) throw new RangeError(`bandwidth must be >= 0 bytes/s, got ${bytesPerSecond}`);
    this.#fault.bytesPerSecond = bytesPerSecond === 0 ? Infinity : bytesPerSecond;
    this.#refresh();
    return this;
  }

  /**
   * Accepts and never answers: 'up' holds client bytes (forwarded on heal), 'down' drops server
   * bytes (the server executes commands, the replies are lost), 'both' does both.
   * @param {Direction} [direction]
   */
  blackhole(direction = 'both') {
    if (direction !== 'up' && direction !== 'down' && direction !== 'both') {
      throw new TypeError(`direction must be 'up', 'down' or 'both', got ${String(direction)}`);
    }
    if (direction !== 'down') this.#fault.holdUp = true;
    if (direction !== 'up') this.#fault.dropDown = true;
    this.#refresh();
    return this;
  }

  /** New connections are reset at once (open ones are left alone). */
  drop() {
    this.#fault.refuse = true;
    return this;
  }

  /** Resets (RST) every open connection, both sides. New connections are forwarded as before. */
  cut() {
    for (const link of [...this.#links]) link.cut();
    this.#links.clear();
    return this;
  }

  /** Stops reading and forwarding on every connection, closing none: a silent peer. */
  halfOpen() {
    this.#fault.halfOpen = true;
    this.#refresh();
    return this;
  }

  /**
   * Clears every fault; held bytes are forwarded, paused connections resume, and connections
   * that lost bytes to blackhole('down') are closed.
   */
  heal() {
    Object.assign(this.#fault, { latencyMs: 0, bytesPerSecond: Infinity, holdUp: false, dropDown: false, halfOpen: false, refuse: false });
    for (const link of [...this.#links]) {
      if (link.down.lost) {
        // Closed rather than reset: resetAndDestroy() here left Node 20 spinning at exit
        // (Environment::CleanupHandles), waiting on a request of the reset socket.
        link.destroy();
        this.#links.delete(link);
      }
    }
    this.#refresh();
    return this;
  }

  /** Closes the listener and every connection. */
  async stop() {
    for (const link of [...this.#links]) link.destroy();
    this.#links.clear();
    await new Promise((resolve) => this.server.close(() => resolve(undefined)));
  }
}
