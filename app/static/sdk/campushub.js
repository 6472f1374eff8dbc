/**
 * CampusHub Realtime client: a dependency-free ES module for browsers and Node >= 20.
 *
 * It speaks the WebSocket protocol v1 of SPEC §3: one JSON object per text frame,
 * `{type, message_id, timestamp, data}`, replies matched by `message_id`.
 *
 * On top of a bare socket it:
 * - reconnects with capped exponential backoff and full jitter;
 * - resumes every group from its last seen `seq` on each (re)auth, detects live gaps,
 *   fills them with `sync`, drops duplicates and delivers messages in `seq` order;
 * - keeps requests made while offline in a bounded outbox, and re-sends unanswered ones
 *   with their original `message_id` (the server deduplicates `send_message` by it);
 * - refreshes the token in place before it expires;
 * - re-applies `leave`/`join` after a reconnect, because the server keeps them per connection.
 *
 * Close-code contract (what the client does when the socket closes):
 *
 * | code        | meaning (SPEC §3.5)                        | client reaction                                    |
 * |-------------|--------------------------------------------|----------------------------------------------------|
 * | 1000        | `close()` called by the app                | stop; state `disconnected`                         |
 * | 1008        | auth timeout / too many failed auths       | new token, reconnect with backoff; a 2nd 1008 in a |
 * |             |                                            | row (no `auth_success` between) → state `failed`   |
 * | 4001        | token expired and not refreshed            | new token, reconnect at once; backoff if it repeats|
 * |             |                                            | before a successful in-place refresh               |
 * | 1012, 1001  | server restart / going away                | reconnect with backoff; the first attempt after a  |
 * |             |                                            | healthy session waits < `minDelayMs`               |
 * | 1013        | instance full / slow consumer              | reconnect with backoff (resume recovers the gap)   |
 * | 1003, 1009  | binary / oversized frame (a client bug)    | `error` event, reconnect with backoff; on 1009 the |
 * |             |                                            | last request sent is rejected, not re-sent         |
 * | 4000        | sent by this client: connect or heartbeat  | reconnect with backoff                             |
 * |             | timeout (the socket is treated as dead)    |                                                    |
 * | 1006, other | network loss, 1000 sent by the server, ... | reconnect with backoff                             |
 *
 * The token provider is called on every (re)connect, so each row above gets a fresh token
 * when the token is a function. Authentication failures (`auth_failed`, or an `error` reply
 * to an `auth` frame) stop the client with state `failed`: at once for a static token string
 * (sending it again cannot help), after two in a row for a provider (asked again in between).
 */

/** Close codes the client reads or sends. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  CLIENT_TIMEOUT: 4000,
  TOKEN_EXPIRED: 4001,
});

const DEFAULTS = Object.freeze({
  refreshBeforeMs: 60_000,
  minDelayMs: 500,
  maxDelayMs: 20_000,
  connectTimeoutMs: 15_000,
  pingIntervalMs: 25_000, // well inside the server's 60 s read timeout (SPEC §3.6)
  pongTimeoutMs: 10_000,
  ackTimeoutMs: 10_000,
  outboxLimit: 100,
  syncLimit: 100,
  bufferLimit: 1_000,
  maxFrameBytes: 512 * 1024, // WS_MAX_MESSAGE_BYTES: the server closes with 1009 above it
});

/** Consecutive 1008 closes (no `auth_success` between them) after which the client stops. */
const MAX_POLICY_CLOSES = 2;
/** Consecutive auth failures of a token provider after which the client stops. */
const MAX_AUTH_FAILURES = 2;
/** setTimeout fires at once for delays above 2^31 - 1 ms, so long token lifetimes are clamped. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Never refresh sooner than this, even when the server reports an expiry in the past. */
const MIN_REFRESH_DELAY_MS = 1_000;
const OPEN = 1; // WebSocket.OPEN, spelled out so injected implementations need not define it
/** Codes that mean "the client was stopped"; background work does not report them. */
const STOPPED = new Set(['closed', 'failed', 'disconnected']);

/** Error of rejected request promises and of `error` events. */
export class CampusHubError extends Error {
  /**
   * @param {number|string} code server error code (400, 403, ...), close code, or a client code ('timeout', ...)
   * @param {string} message human readable
   * @param {unknown} [data] detail: the server's error data, close info, or the cause
   */
  constructor(code, message, data) {
    super(message);
    this.name = 'CampusHubError';
    this.code = code;
    if (data !== undefined) this.data = data;
  }

  /** True for answers SPEC §3.5 lets a client retry later (send again with the same `messageId`). */
  get retryable() {
    return this.code === 429 || this.code === 503 || this.code === 'timeout';
  }
}

/** Full-jitter backoff: a random delay in [0, min(max, min * 2**attempt)). */
export function backoffDelay(attempt, { minDelayMs, maxDelayMs }, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** Tiny event emitter: `on` returns its own unsubscribe function. */
class Emitter {
  #listeners = new Map();

  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  emit(event, payload) {
    // Copy first: a listener may unsubscribe itself while we iterate.
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (err) {
        // One throwing app listener must neither skip the others nor break the client's state.
        reportListenerError(err);
      }
    }
  }
}

function reportListenerError(err) {
  if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
  else queueMicrotask(() => { throw err; });
}

/** 16 hex chars, so the ids of two tabs (or two page loads) of one user never collide. */
function randomPrefix() {
  const bytes = new Uint8Array(8);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** UTF-8 needs 1 to 3 bytes per UTF-16 unit, so most frames are judged without encoding. */
function exceedsBytes(text, max) {
  if (text.length * 3 <= max) return false;
  if (text.length > max) return true;
  return new TextEncoder().encode(text).length > max;
}

function toSeqMap(initial) {
  const seqs = new Map();
  const entries = initial instanceof Map ? initial.entries() : Object.entries(initial ?? {});
  for (const [groupId, seq] of entries) {
    if (!Number.isInteger(seq) || seq < 0) throw new TypeError(`initialSeqs[${groupId}] must be a non-negative integer`);
    seqs.set(String(groupId), seq);
  }
  return seqs;
}

/** SPEC says `expires_at` is in ms; a seconds value would otherwise trigger a refresh at once. */
function expiryMs(value) {
  if (!Number.isFinite(value)) return null;
  return value < 1e11 ? value * 1000 : value;
}

function withoutUndefined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));
}

export class CampusHubClient {
  #events = new Emitter();
  #opts;
  #WebSocket;
  #timers;
  #now;
  #random;
  #idPrefix = randomPrefix();
  #idCounter = 0;

  #state = 'disconnected';
  #ws = null;
  #authed = false; // the current socket has had its auth_success
  #generation = 0; // bumped per socket and on stop, so stale async continuations can tell
  #closedByUser = false;
  #attempt = 0; // backoff exponent; reset by auth_success
  #authFailures = 0;
  #policyCloses = 0;
  #expiredCloses = 0;
  #authId = null;
  #expiresAt = null;
  // One slot per purpose; `dead` is the pong deadline armed by each ping.
  #timer = { reconnect: null, connect: null, ping: null, dead: null, refresh: null };

  #outbox = []; // requests waiting for an authenticated socket, in order
  #inflight = new Map(); // message_id → request written to the socket, waiting for its reply
  #lastSent = null;

  #seqs; // group_id → last seq delivered to the app in order (what `resume` carries)
  #gaps = new Map(); // group_id → {buffer: Map<seq, message>, syncing: Promise | null}
  #left = new Set(); // groups the app left: left again after a reconnect
  #joined = new Set(); // groups the app joined: joined again if auth_success does not list them
  #resumeEnds = new Map(); // group → last seq of a resume replay that stopped at the server's limit

  /** @param {import('./campushub.d.ts').CampusHubOptions} options */
  constructor(options = {}) {
    const { url, token } = options;
    if (typeof url !== 'string' || !/^wss?:\/\//i.test(url)) throw new TypeError('url must be a ws:// or wss:// URL');
    if (typeof token !== 'string' && typeof token !== 'function') throw new TypeError('token must be a string or a function');
    this.#opts = { ...DEFAULTS, ...withoutUndefined(options) };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket implementation: pass options.WebSocket (e.g. the "ws" package) on Node 20');
    }
    // Looked up at call time, so test runners that patch the globals still work.
    this.#timers = options.timers ?? {
      setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
      clearTimeout: (id) => globalThis.clearTimeout(id),
    };
    this.#now = options.now ?? (() => Date.now());
    this.#random = options.random ?? Math.random;
    this.#seqs = toSeqMap(options.initialSeqs);
  }

  // ------------------------------------------------------------------ public API

  /** Subscribes to an event; returns the function that unsubscribes. */
  on(event, fn) {
    return this.#events.on(event, fn);
  }

  off(event, fn) {
    this.#events.off(event, fn);
  }

  get state() {
    return this.#state;
  }

  /** Last in-order seq per group, as sent in `resume`; persist it and pass it back as `initialSeqs`. */
  lastSeqs() {
    return Object.fromEntries(this.#seqs);
  }

  /** Opens the connection. While waiting to reconnect, reconnects now (e.g. on the `online` event). */
  connect() {
    if (this.#state === 'reconnecting') {
      this.#clearTimer('reconnect');
      this.#openSocket('reconnect');
      return;
    }
    if (this.#state !== 'disconnected' && this.#state !== 'failed') return;
    this.#closedByUser = false;
    this.#attempt = 0;
    this.#authFailures = 0;
    this.#policyCloses = 0;
    this.#expiredCloses = 0;
    this.#openSocket('connect');
  }

  /** Resolves once connected; rejects if the client stops (`close()` or `failed`) first. */
  ready() {
    if (this.#state === 'connected') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const off = this.on('state', ({ state, error }) => {
        if (state === 'connected') {
          off();
          resolve();
        } else if (state === 'failed' || state === 'disconnected') {
          off();
          reject(error ?? new CampusHubError(state === 'failed' ? 'failed' : 'closed', `client ${state}`));
        }
      });
    });
  }

  /** Stops for good: closes with 1000, clears every timer, rejects every pending request. */
  close() {
    this.#closedByUser = true;
    this.#shutdown('disconnected', new CampusHubError('closed', 'client closed'), {
      code: CloseCode.NORMAL,
      reason: 'client close',
    });
  }

  /**
   * Sends a message; resolves with the ack data `{message_id, group_id, seq, created_at}`.
   * Pass `messageId` to retry a send idempotently (e.g. one persisted before a page reload).
   */
  send(groupId, { content = '', msgType = 1, imageUrl, messageId } = {}) {
    if (messageId !== undefined && (typeof messageId !== 'string' || messageId === '' || messageId.length > 64)) {
      return Promise.reject(new TypeError('messageId must be a non-empty string of at most 64 characters'));
    }
    const data = { group_id: groupId, msg_type: msgType, content };
    if (imageUrl !== undefined) data.image_url = imageUrl;
    return this.#request('send_message', data, { id: messageId });
  }

  /** Moves the group's read mark; resolves with `{group_id, last_read_seq}`. */
  markRead(groupId, seq) {
    return this.#request('mark_read', { group_id: groupId, seq });
  }

  /** Starts live delivery of a group, on this connection and the ones after a reconnect. */
  async join(groupId) {
    const wasLeft = this.#left.delete(groupId);
    this.#joined.add(groupId);
    const ack = await this.#request('join_group', { group_id: groupId });
    // Fetch what was sent while we were out of the group: the ack's optional `last_seq`
    // says whether there is any; without it, assume so if we had left the group.
    const last = this.#seqs.get(groupId);
    const behind = Number.isInteger(ack?.last_seq) ? ack.last_seq > last : wasLeft;
    if (last !== undefined && behind) this.#backgroundSync(groupId);
    return ack;
  }

  /** Stops live delivery of a group, on this connection and the ones after a reconnect. */
  leave(groupId) {
    this.#joined.delete(groupId);
    this.#left.add(groupId);
    return this.#request('leave_group', { group_id: groupId });
  }

  /**
   * Replays what the group has after its last seen seq (from the start if none), paging until
   * caught up; the messages arrive as `message` events. Resolves with the last sync ack.
   */
  sync(groupId) {
    return this.#catchUp(groupId);
  }

  // ------------------------------------------------------------------ connection lifecycle

  async #openSocket(reason) {
    const generation = ++this.#generation;
    this.#setState('connecting', { attempt: this.#attempt });
    let token;
    try {
      token = await this.#fetchToken(reason);
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#events.emit('error', err);
      this.#scheduleReconnect({ code: null, reason: 'token provider failed' });
      return;
    }
    if (generation !== this.#generation) return; // close() or another connect() won the race

    let ws;
    try {
      ws = new this.#WebSocket(this.#opts.url);
    } catch (err) {
      this.#events.emit('error', new CampusHubError('socket', `cannot open WebSocket: ${err?.message ?? err}`, err));
      this.#scheduleReconnect({ code: null, reason: 'WebSocket constructor failed' });
      return;
    }
    this.#ws = ws;
    // A black-holed handshake can hang for minutes in some browsers.
    this.#startTimer('connect', this.#opts.connectTimeoutMs, () =>
      this.#dropConnection(CloseCode.CLIENT_TIMEOUT, 'connect timeout'),
    );
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#clearTimer('connect');
      this.#setState('authenticating');
      this.#schedulePing();
      this.#sendAuth(token, { resume: true });
    };
    ws.onmessage = (event) => {
      if (ws === this.#ws) this.#onText(event.data);
    };
    ws.onclose = (event) => {
      if (ws === this.#ws) this.#onClose(event.code, event.reason ?? '');
    };
    ws.onerror = () => {}; // a close event always follows, and its code is what we act on
  }

  async #fetchToken(reason) {
    const { token } = this.#opts;
    if (typeof token === 'string') return token;
    let value;
    try {
      value = await token({ reason });
    } catch (err) {
      throw new CampusHubError('token', `token provider failed: ${err?.message ?? err}`, err);
    }
    if (typeof value !== 'string' || value === '') throw new CampusHubError('token', 'token provider returned no token');
    return value;
  }

  #onClose(code, reason) {
    this.#detachSocket();
    if (code === CloseCode.MESSAGE_TOO_BIG) this.#rejectLastSent(code);
    this.#requeueInflight();
    if (code === CloseCode.UNSUPPORTED_DATA || code === CloseCode.MESSAGE_TOO_BIG) {
      this.#events.emit('error', new CampusHubError(code, `server closed the connection: ${reason || code}`, { code, reason }));
    }
    if (code === CloseCode.POLICY_VIOLATION && ++this.#policyCloses >= MAX_POLICY_CLOSES) {
      this.#fail(new CampusHubError(code, `closed with 1008 ${MAX_POLICY_CLOSES} times in a row: ${reason}`, { code, reason }), { code, reason });
      return;
    }
    // Reconnecting at once is right the first time; a second 4001 before any refresh is a loop.
    this.#expiredCloses = code === CloseCode.TOKEN_EXPIRED ? this.#expiredCloses + 1 : 0;
    const expired = code === CloseCode.TOKEN_EXPIRED;
    this.#scheduleReconnect({
      code,
      reason,
      immediate: expired && this.#expiredCloses === 1,
      tokenReason: expired ? 'expired' : 'reconnect',
    });
  }

  #scheduleReconnect({ code, reason, immediate = false, tokenReason = 'reconnect' }) {
    const delay = immediate ? 0 : backoffDelay(this.#attempt++, this.#opts, this.#random);
    this.#setState('reconnecting', { code, reason, delay });
    this.#startTimer('reconnect', delay, () => this.#openSocket(tokenReason));
  }

  /** Gives up on a socket we judge dead and acts now: its own close event may take minutes. */
  #dropConnection(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    this.#onClose(code, reason);
    closeQuietly(ws, code, reason);
  }

  /** Forgets the socket, so its late events are ignored, and stops the per-socket timers. */
  #detachSocket() {
    this.#ws = null;
    this.#authed = false;
    this.#authId = null;
    this.#expiresAt = null;
    for (const name of ['connect', 'ping', 'dead', 'refresh']) this.#clearTimer(name);
  }

  /**
   * Terminal stop (`disconnected` by close(), or `failed`): nothing is left running.
   * Pending requests reject with `rejection` (code 'closed' or 'failed', the cause in `.data`).
   */
  #shutdown(state, rejection, detail) {
    this.#generation++;
    this.#clearTimer('reconnect');
    const ws = this.#ws;
    this.#detachSocket();
    if (ws) closeQuietly(ws, CloseCode.NORMAL, detail.reason || state);
    for (const req of [...this.#inflight.values(), ...this.#outbox]) this.#settle(req, null, rejection);
    this.#outbox = [];
    for (const gap of this.#gaps.values()) gap.buffer.clear();
    this.#setState(state, detail);
  }

  #fail(error, { code, reason }) {
    const rejection = new CampusHubError('failed', `client failed: ${error.message}`, error);
    this.#shutdown('failed', rejection, { code, reason, error });
  }

  #setState(state, detail = {}) {
    const previous = this.#state;
    this.#state = state;
    this.#events.emit('state', { state, previous, ...detail });
  }

  #startTimer(name, ms, fn) {
    this.#clearTimer(name);
    this.#timer[name] = this.#timers.setTimeout(() => {
      this.#timer[name] = null;
      fn();
    }, ms);
  }

  #clearTimer(name) {
    if (this.#timer[name] !== null) this.#timers.clearTimeout(this.#timer[name]);
    this.#timer[name] = null;
  }

  // ------------------------------------------------------------------ heartbeat

  #schedulePing() {
    if (this.#opts.pingIntervalMs > 0) this.#startTimer('ping', this.#opts.pingIntervalMs, () => this.#ping());
  }

  #ping() {
    this.#write(this.#frame('ping', {}, this.#nextId()));
    // Any inbound frame proves the connection alive and disarms this (see #onText).
    if (this.#timer.dead === null) {
      this.#startTimer('dead', this.#opts.pongTimeoutMs, () =>
        this.#dropConnection(CloseCode.CLIENT_TIMEOUT, 'heartbeat timeout'),
      );
    }
    this.#schedulePing();
  }

  // ------------------------------------------------------------------ auth and token refresh

  #sendAuth(token, { resume }) {
    this.#authId = this.#nextId();
    const data = { token };
    if (resume) {
      const seqs = this.#resumeSeqs();
      if (Object.keys(seqs).length > 0) data.resume = seqs;
    }
    this.#write(this.#frame('auth', data, this.#authId));
  }

  /** Groups the app left are not resumed: it asked not to receive them. */
  #resumeSeqs() {
    const seqs = {};
    for (const [groupId, seq] of this.#seqs) if (!this.#left.has(groupId)) seqs[groupId] = seq;
    return seqs;
  }

  #onAuthSuccess(data) {
    const refreshed = this.#authed;
    const previousExpiry = this.#expiresAt;
    this.#authFailures = 0;
    this.#policyCloses = 0;
    this.#expiresAt = expiryMs(data.expires_at);
    if (refreshed) {
      this.#expiredCloses = 0;
      // A refresh that did not push the expiry out would repeat in a loop: let 4001 handle it.
      if (previousExpiry === null || (this.#expiresAt ?? 0) > previousExpiry) this.#scheduleRefresh();
      this.#events.emit('auth', data);
      return;
    }
    this.#authed = true;
    this.#attempt = 0;
    this.#scheduleRefresh();
    // Subscriptions and queued requests go out before the app hears `connected`, so a send
    // made from a listener cannot overtake the older queued ones.
    this.#restoreSubscriptions(data.groups);
    // A resume replay stopped at the server's limit (`has_more`): page on with `sync` once its
    // last frame has arrived (the replayed frames follow auth_success).
    this.#resumeEnds.clear();
    for (const [groupId, info] of Object.entries(data.resume ?? {})) {
      if (!info?.has_more) continue;
      if ((this.#seqs.get(groupId) ?? -1) >= info.last_seq) this.#backgroundSync(groupId);
      else this.#resumeEnds.set(groupId, info.last_seq);
    }
    this.#flushOutbox();
    this.#setState('connected');
    this.#events.emit('auth', data);
  }

  async #onAuthFailed(data) {
    const error = new CampusHubError(data.code ?? 401, data.message ?? 'authentication failed', data);
    this.#events.emit('error', error);
    const canRetry = typeof this.#opts.token === 'function' && ++this.#authFailures < MAX_AUTH_FAILURES;
    if (!canRetry) {
      this.#fail(error, { code: null, reason: 'authentication failed' });
      return;
    }
    const generation = this.#generation;
    let token;
    try {
      token = await this.#fetchToken('auth_failed');
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#events.emit('error', err);
      this.#dropConnection(CloseCode.CLIENT_TIMEOUT, 'token provider failed');
      return;
    }
    // The server allows three auth attempts per connection, so retry on this one.
    if (generation === this.#generation && this.#ws) this.#sendAuth(token, { resume: !this.#authed });
  }

  #scheduleRefresh() {
    this.#clearTimer('refresh');
    if (typeof this.#opts.token !== 'function' || this.#expiresAt === null) return;
    const delay = this.#expiresAt - this.#opts.refreshBeforeMs - this.#now();
    this.#startTimer('refresh', Math.min(MAX_TIMER_MS, Math.max(MIN_REFRESH_DELAY_MS, delay)), () => this.#refreshToken());
  }

  /** A second `auth` on the open connection extends its expiry without a reconnect (SPEC §3.2). */
  async #refreshToken() {
    const generation = this.#generation;
    try {
      const token = await this.#fetchToken('refresh');
      if (generation === this.#generation && this.#authed) this.#sendAuth(token, { resume: false });
    } catch (err) {
      if (generation !== this.#generation) return;
      this.#events.emit('error', err);
      // Try again while the current token has time left; at expiry the 4001 path takes over.
      const left = (this.#expiresAt ?? 0) - this.#now();
      if (left > 2 * MIN_REFRESH_DELAY_MS) this.#startTimer('refresh', left / 2, () => this.#refreshToken());
    }
  }

  // ------------------------------------------------------------------ requests, outbox, replies

  #nextId() {
    this.#idCounter += 1;
    return `${this.#idPrefix}-${this.#idCounter.toString(36)}`;
  }

  #frame(type, data, messageId) {
    return JSON.stringify({ type, message_id: messageId, timestamp: this.#now(), data });
  }

  #write(text) {
    if (!this.#ws || this.#ws.readyState !== OPEN) return;
    try {
      this.#ws.send(text);
    } catch {
      // The socket is going away; its close event requeues whatever is in flight.
    }
  }

  /**
   * Builds a request once, so a re-send after a drop is the very same frame (same
   * `message_id`), then sends it, or queues it until the next `auth_success`.
   * `retry: false` requests are rejected instead of re-sent when the connection drops.
   */
  #request(type, data, { id, retry = true } = {}) {
    if (this.#closedByUser) return Promise.reject(new CampusHubError('closed', 'client closed; call connect() first'));
    if (this.#state === 'failed') return Promise.reject(new CampusHubError('failed', 'client failed; call connect() to retry'));
    const messageId = id ?? this.#nextId();
    const text = this.#frame(type, data, messageId);
    if (exceedsBytes(text, this.#opts.maxFrameBytes)) {
      return Promise.reject(new CampusHubError(413, `${type} frame exceeds ${this.#opts.maxFrameBytes} bytes`));
    }
    return new Promise((resolve, reject) => {
      const req = { type, groupId: data.group_id, messageId, text, retry, resolve, reject, timer: null };
      if (this.#authed) {
        this.#transmit(req);
      } else if (this.#outbox.length >= this.#opts.outboxLimit) {
        reject(new CampusHubError('outbox_full', `outbox full: ${this.#opts.outboxLimit} requests already wait for a connection`));
      } else {
        this.#outbox.push(req);
      }
    });
  }

  /** The ack timeout runs only while the frame is on the wire, not while it waits offline. */
  #transmit(req) {
    this.#inflight.set(req.messageId, req);
    this.#lastSent = req;
    req.timer = this.#timers.setTimeout(() => {
      this.#settle(req, null, new CampusHubError('timeout', `no reply to ${req.type} within ${this.#opts.ackTimeoutMs} ms`));
    }, this.#opts.ackTimeoutMs);
    this.#write(req.text);
  }

  #flushOutbox() {
    const queued = this.#outbox;
    this.#outbox = [];
    for (const req of queued) this.#transmit(req);
  }

  /** Unanswered requests go back to the front of the outbox, in the order they were sent. */
  #requeueInflight() {
    const again = [];
    for (const req of this.#inflight.values()) {
      this.#timers.clearTimeout(req.timer);
      if (req.retry) again.push(req);
      else req.reject(new CampusHubError('disconnected', `connection lost before the ${req.type} reply`));
    }
    this.#inflight.clear();
    this.#outbox = [...again, ...this.#outbox];
  }

  /** After 1009 the last frame we sent is the likely culprit; re-sending it would loop. */
  #rejectLastSent(code) {
    const req = this.#lastSent;
    if (req && this.#inflight.has(req.messageId)) {
      this.#settle(req, null, new CampusHubError(code, `the server refused the ${req.type} frame as too large`));
    }
  }

  #settle(req, data, error) {
    this.#timers.clearTimeout(req.timer);
    this.#inflight.delete(req.messageId);
    if (error) req.reject(error);
    else req.resolve(data);
  }

  #isPending(type, groupId) {
    for (const req of [...this.#inflight.values(), ...this.#outbox]) {
      if (req.type === type && req.groupId === groupId) return true;
    }
    return false;
  }

  /** The server forgets `leave_group`/`join_group` with the connection: apply them again. */
  #restoreSubscriptions(groups) {
    const subscribed = Array.isArray(groups) ? new Set(groups) : null;
    for (const groupId of this.#left) {
      if (!subscribed || subscribed.has(groupId)) this.#background('leave_group', groupId);
    }
    for (const groupId of this.#joined) {
      if (subscribed && !subscribed.has(groupId)) this.#background('join_group', groupId);
    }
  }

  #background(type, groupId) {
    if (this.#isPending(type, groupId)) return; // the app's own request is about to be re-sent
    this.#request(type, { group_id: groupId }).catch((err) => this.#reportBackground(err));
  }

  #reportBackground(err) {
    if (!STOPPED.has(err.code)) this.#events.emit('error', err);
  }

  // ------------------------------------------------------------------ inbound frames

  #onText(text) {
    this.#clearTimer('dead');
    let frame;
    try {
      if (typeof text !== 'string') throw new Error('binary frame');
      frame = JSON.parse(text);
      if (frame === null || typeof frame !== 'object' || typeof frame.type !== 'string') throw new Error('no type');
    } catch (err) {
      this.#events.emit('error', new CampusHubError('protocol', `unreadable frame from the server: ${err.message}`));
      return;
    }
    const data = frame.data !== null && typeof frame.data === 'object' ? frame.data : {};
    this.#events.emit('frame', frame);
    switch (frame.type) {
      case 'auth_success':
        this.#onAuthSuccess(data);
        break;
      case 'auth_failed':
        this.#onAuthFailed(data);
        break;
      case 'ack':
        this.#onReply(frame.message_id, data, null);
        break;
      case 'error':
        this.#onError(frame.message_id, data);
        break;
      case 'new_message':
        this.#onNewMessage(data);
        break;
      case 'notification':
      case 'read_update':
        this.#events.emit(frame.type, data);
        break;
      default:
        break; // pong, and types added later: proof of liveness is all we take from them
    }
  }

  #onReply(messageId, data, error) {
    const req = this.#inflight.get(messageId);
    if (!req) return false; // a late reply to a request that timed out
    this.#settle(req, data, error);
    return true;
  }

  #onError(messageId, data) {
    // A second auth for another user is answered with error 400, not auth_failed (SPEC §11).
    if (messageId !== undefined && messageId === this.#authId) {
      this.#onAuthFailed(data);
      return;
    }
    const error = new CampusHubError(data.code ?? 'unknown', data.message ?? 'server error', data);
    if (!this.#onReply(messageId, null, error)) this.#events.emit('error', error);
  }

  // ------------------------------------------------------------------ ordering and gap recovery

  #gap(groupId) {
    let gap = this.#gaps.get(groupId);
    if (!gap) {
      gap = { buffer: new Map(), syncing: null };
      this.#gaps.set(groupId, gap);
    }
    return gap;
  }

  #onNewMessage(message) {
    const { group_id: groupId, seq } = message;
    if (typeof groupId !== 'string' || !Number.isInteger(seq)) {
      this.#events.emit('message', message); // nothing to order by
      return;
    }
    // A group never seen before starts at whatever seq arrives first.
    if (!this.#seqs.has(groupId)) this.#seqs.set(groupId, seq - 1);
    const last = this.#seqs.get(groupId);
    const gap = this.#gap(groupId);
    if (seq <= last || gap.buffer.has(seq)) return; // duplicate: replay overlap or a retried send
    if (seq === last + 1) {
      this.#deliver(groupId, message);
      this.#drain(groupId);
      if (this.#resumeEnds.get(groupId) === seq) {
        this.#resumeEnds.delete(groupId);
        this.#backgroundSync(groupId);
      }
      return;
    }
    // Past the cap a message is dropped: the sync that fills the gap replays it anyway.
    if (gap.buffer.size < this.#opts.bufferLimit) gap.buffer.set(seq, message);
    this.#backgroundSync(groupId);
  }

  #deliver(groupId, message) {
    this.#seqs.set(groupId, message.seq);
    this.#events.emit('message', message);
  }

  /** Delivers buffered messages while they continue the sequence. */
  #drain(groupId) {
    const { buffer } = this.#gap(groupId);
    for (let next = this.#seqs.get(groupId) + 1; buffer.has(next); next++) {
      const message = buffer.get(next);
      buffer.delete(next);
      this.#deliver(groupId, message);
    }
  }

  #backgroundSync(groupId) {
    this.#catchUp(groupId).catch((err) => this.#reportBackground(err));
  }

  /** One sync loop per group at a time; later callers share its promise. */
  #catchUp(groupId) {
    const gap = this.#gap(groupId);
    gap.syncing ??= this.#syncLoop(groupId).finally(() => {
      gap.syncing = null;
    });
    return gap.syncing;
  }

  /** Pages with `sync` while the server has more, or while a gap remains and we progress. */
  async #syncLoop(groupId) {
    const { buffer } = this.#gap(groupId);
    for (;;) {
      const before = this.#seqs.get(groupId) ?? 0;
      // Not re-sent after a drop: the next auth's `resume` asks for the same messages.
      const ack = await this.#request(
        'sync',
        { group_id: groupId, after_seq: before, limit: this.#opts.syncLimit },
        { retry: false },
      );
      // The replayed new_message frames precede this ack, so they are already delivered.
      if ((this.#seqs.get(groupId) ?? 0) > before) {
        if (ack.has_more || buffer.size > 0) continue;
        return ack;
      }
      if (buffer.size === 0) return ack;
      this.#skipHole(groupId); // always progresses, so the loop ends
      if (buffer.size === 0) return ack;
    }
  }

  /**
   * A sync that brought nothing while later messages wait in the buffer means the missing
   * seqs do not exist on the server (seqs commit in order, so the earlier ones would be
   * visible by now). Report the hole and move past it rather than stall the group forever.
   */
  #skipHole(groupId) {
    const { buffer } = this.#gap(groupId);
    const from = this.#seqs.get(groupId) + 1;
    const next = Math.min(...buffer.keys());
    this.#events.emit('error', new CampusHubError('gap', `seqs ${from}..${next - 1} of group ${groupId} are missing on the server`, {
      group_id: groupId,
      from_seq: from,
      to_seq: next - 1,
    }));
    this.#seqs.set(groupId, next - 1);
    this.#drain(groupId);
  }
}

function closeQuietly(ws, code, reason) {
  try {
    ws.close(code, reason);
  } catch {
    // already closing or closed
  }
}
