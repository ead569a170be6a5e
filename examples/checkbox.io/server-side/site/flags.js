'use strict';
// Feature flags from the local mirror of the `flags` store (a redis-server): the hash
// `flag:NAME` with `enabled` ("1"/"0") and `percent` ("0".."100", the share of requests that see
// the flag on; missing = 100). A flag that does not exist, or a store that does not answer,
// gives the caller's default.
//
// A small RESP2 client over one persistent connection (AUTH, HGETALL): no dependency. Each
// read asks the mirror (a loopback round trip); a value is reused for at most CACHE_MS.

const net = require('net');

const CACHE_MS = 200;
const TIMEOUT_MS = 300;

// Parses one RESP2 reply from buf at offset; returns [value, nextOffset] or null if incomplete.
function parse(buf, at) {
  if (at >= buf.length) return null;
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const kind = String.fromCharCode(buf[at]);
  const line = buf.toString('utf8', at + 1, eol);
  const next = eol + 2;
  switch (kind) {
    case '+': return [line, next];
    case '-': return [new Error(line), next];
    case ':': return [Number(line), next];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, next];
      if (buf.length < next + n + 2) return null;
      return [buf.toString('utf8', next, next + n), next + n + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const out = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const r = parse(buf, pos);
        if (r === null) return null;
        out.push(r[0]);
        pos = r[1];
      }
      return [out, pos];
    }
    default:
      throw new Error(`bad RESP reply type ${JSON.stringify(kind)}`);
  }
}

function encode(args) {
  let s = `*${args.length}\r\n`;
  for (const a of args) s += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
  return s;
}

class Flags {
  // url: redis://[:PASSWORD@]HOST:PORT (FLAGS_URL); empty: no store, every flag its default.
  constructor(url) {
    this.url = null;
    if (url) {
      const u = new URL(url);
      if (u.protocol !== 'redis:') throw new Error('FLAGS_URL must be redis://[:PASSWORD@]HOST:PORT');
      this.url = {
        host: u.hostname.replace(/^\[|\]$/g, ''),
        port: Number(u.port || 6379),
        password: decodeURIComponent(u.password || ''),
      };
    }
    this.sock = null;
    this.buf = Buffer.alloc(0);
    this.pending = [];
    this.cache = new Map();
    this.counter = 0;
  }

  describe() {
    return this.url ? `${this.url.host}:${this.url.port}` : 'not configured';
  }

  connect() {
    const sock = net.createConnection({ host: this.url.host, port: this.url.port });
    sock.setNoDelay(true);
    this.sock = sock;
    this.buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      if (this.sock !== sock) return;
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        let r;
        try {
          r = parse(this.buf, 0);
        } catch (e) {
          this.reset(e);
          return;
        }
        if (r === null) break;
        this.buf = this.buf.subarray(r[1]);
        const p = this.pending.shift();
        if (p) p(r[0]);
      }
    });
    const fail = (e) => {
      if (this.sock === sock) this.reset(e || new Error('connection closed'));
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
    if (this.url.password) this.send(['AUTH', this.url.password], () => {});
  }

  // Drops the connection; every waiting command gets the error.
  reset(err) {
    if (this.sock) this.sock.destroy();
    this.sock = null;
    const waiting = this.pending;
    this.pending = [];
    for (const p of waiting) p(err);
  }

  send(args, cb) {
    this.pending.push(cb);
    this.sock.write(encode(args));
  }

  command(args) {
    return new Promise((resolve, reject) => {
      if (!this.sock) this.connect();
      let done = false;
      const timer = setTimeout(() => {
        if (done) return;
        done = true;
        // The connection's replies are now out of step: start again.
        this.reset(new Error('timeout'));
        reject(new Error(`the flags store at ${this.describe()} did not answer within ${TIMEOUT_MS} ms`));
      }, TIMEOUT_MS);
      this.send(args, (v) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (v instanceof Error) reject(v);
        else resolve(v);
      });
    });
  }

  // { on, source }: source is "store", "default (no such flag)" or "default (REASON)".
  async get(name, fallback) {
    if (!this.url) return { on: fallback, source: 'default (FLAGS_URL is not set)' };
    const now = Date.now();
    let entry = this.cache.get(name);
    if (!entry || now - entry.at > CACHE_MS) {
      try {
        const reply = await this.command(['HGETALL', `flag:${name}`]);
        const h = {};
        for (let i = 0; i + 1 < reply.length; i += 2) h[reply[i]] = reply[i + 1];
        entry = { at: now, value: reply.length ? h : null };
        this.cache.set(name, entry);
      } catch (e) {
        return { on: fallback, source: `default (${e.message})` };
      }
    }
    const h = entry.value;
    if (!h) return { on: fallback, source: 'default (no such flag)' };
    const enabled = h.enabled === '1';
    let percent = h.percent === undefined ? 100 : Math.round(Number(h.percent));
    if (!Number.isFinite(percent)) percent = 100;
    percent = Math.min(100, Math.max(0, percent));
    // With a share below 100, exactly `percent` of every 100 requests see it on.
    const n = this.counter++;
    const on = enabled && (percent >= 100 || n % 100 < percent);
    return { on, source: 'store', percent: enabled ? percent : 0 };
  }

  close() {
    this.reset(new Error('closed'));
  }
}

module.exports = { Flags, parse, encode };
