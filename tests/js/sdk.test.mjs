// Behaviour of the browser SDK (app/static/sdk/campushub.js) against a scripted fake server.
// Run: node --test tests/js/
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { backoffDelay, CampusHubClient, CampusHubError } from '../../app/static/sdk/campushub.js';

// ---------------------------------------------------------------- fakes

/** Lets pending promise chains (token providers, awaited acks) run to completion. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Deterministic clock and timers; advance() runs due callbacks in time order. */
class FakeClock {
  t = 1_700_000_000_000;
  #nextId = 0;
  tasks = new Map();

  now = () => this.t;

  setTimeout = (fn, ms) => {
    const id = ++this.#nextId;
    // Like browsers and Node: a delay over 2^31 - 1 ms overflows and fires almost at once.
    const delay = ms > 2 ** 31 - 1 ? 1 : Math.max(0, ms ?? 0);
    this.tasks.set(id, { id, at: this.t + delay, fn });
    return id;
  };

  clearTimeout = (id) => {
    this.tasks.delete(id);
  };

  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      const due = [...this.tasks.values()].filter((task) => task.at <= end).sort((a, b) => a.at - b.at || a.id - b.id);
      if (due.length === 0) break;
      const task = due[0];
      this.tasks.delete(task.id);
      this.t = task.at;
      task.fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A WebSocket class that records what the client sends and lets the test play the server. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      assert.equal(typeof text, 'string');
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // --- server side
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(type, data, messageId) {
      this.onmessage?.({ data: JSON.stringify({ type, message_id: messageId, timestamp: Date.now(), data }) });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    of(type) {
      return this.sent.filter((frame) => frame.type === type);
    }

    last(type) {
      return this.of(type).at(-1);
    }
  }
  return { FakeWebSocket, sockets };
}

/** A client wired to fakes, with every event it emits recorded. Pings are off unless asked for. */
function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const client = new CampusHubClient({
    url: 'ws://hub.test/ws',
    token: 'static-token',
    pingIntervalMs: 0,
    random: () => 0.5,
    WebSocket: FakeWebSocket,
    timers: clock,
    now: clock.now,
    ...options,
  });
  const seen = { state: [], message: [], error: [], auth: [], notification: [], read_update: [] };
  for (const event of Object.keys(seen)) client.on(event, (payload) => seen[event].push(payload));
  const socket = () => sockets.at(-1);
  const states = () => seen.state.map((s) => s.state);
  const delivered = (groupId = 'g1') => seen.message.filter((m) => m.group_id === groupId).map((m) => m.seq);
  return { clock, client, sockets, socket, seen, states, delivered };
}

const GROUPS = ['g1', 'g2'];

/** Opens the current (or a new) connection and answers its auth with success. */
async function authenticate(h, data = {}) {
  if (h.client.state === 'disconnected' || h.client.state === 'failed') h.client.connect();
  await flush();
  const ws = h.socket();
  ws.open();
  const auth = ws.last('auth');
  ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: h.clock.t + 3_600_000, ...data }, auth.message_id);
  await flush();
  return ws;
}

function msg(seq, groupId = 'g1') {
  return { message_id: `m-${groupId}-${seq}`, group_id: groupId, seq, sender_id: 'u2', sender_name: 'Bob', msg_type: 1, content: `#${seq}`, image_url: null, created_at: 0 };
}

/** Drops the socket with a close code and lets the reconnect timer fire. */
async function dropAndReconnect(h, code) {
  h.socket().serverClose(code);
  await h.clock.advance(h.seen.state.at(-1).delay ?? 0);
}

// ---------------------------------------------------------------- backoff

describe('backoff', () => {
  test('full jitter spans [0, min(max, min * 2**attempt)) and is capped at max', () => {
    const bounds = { minDelayMs: 500, maxDelayMs: 20_000 };
    for (let attempt = 0; attempt < 12; attempt++) {
      assert.equal(backoffDelay(attempt, bounds, () => 0), 0);
      const ceiling = Math.min(20_000, 500 * 2 ** attempt);
      assert.equal(backoffDelay(attempt, bounds, () => 0.999), Math.floor(0.999 * ceiling));
    }
    assert.equal(backoffDelay(30, bounds, () => 0.999), 19_980);
  });

  test('reconnect delays follow the jitter of the injected random() across attempts', async () => {
    const randoms = [0, 0.999];
    let calls = 0;
    const h = setup({ random: () => randoms[calls++ % 2] });
    h.client.connect();
    await flush();
    const delays = [];
    for (let attempt = 0; attempt < 9; attempt++) {
      h.socket().serverClose(1006); // the handshake fails every time
      const { state, delay } = h.seen.state.at(-1);
      assert.equal(state, 'reconnecting');
      delays.push(delay);
      await h.clock.advance(delay);
    }
    const expected = [0, 999, 0, 3996, 0, 15984, 0, 19980, 0];
    assert.deepEqual(delays, expected);
    assert.equal(h.sockets.length, 10);
  });

  test('a healthy session resets the backoff: the first reconnect after 1012 waits < minDelayMs', async () => {
    const h = setup({ random: () => 0.999 });
    h.client.connect();
    await flush();
    for (let i = 0; i < 4; i++) await dropAndReconnect(h, 1006);
    const waits = h.seen.state.filter((s) => s.state === 'reconnecting').map((s) => s.delay);
    assert.deepEqual(waits, [499, 999, 1998, 3996], 'backoff grew while failing');
    await authenticate(h);
    for (const code of [1012, 1001]) {
      h.socket().serverClose(code);
      const last = h.seen.state.at(-1);
      assert.deepEqual([last.state, last.code], ['reconnecting', code]);
      assert.ok(last.delay < 500, `first attempt after ${code} is quick (${last.delay})`);
      await h.clock.advance(last.delay);
      await authenticate(h);
    }
  });
});

// ---------------------------------------------------------------- close codes

describe('close-code contract', () => {
  test('close() sends 1000, stops, and leaves no timer behind', async () => {
    const h = setup({ pingIntervalMs: 1000, token: async () => 't' });
    const ws = await authenticate(h);
    h.client.close();
    assert.deepEqual(ws.closedWith, { code: 1000, reason: 'client close' });
    assert.equal(h.client.state, 'disconnected');
    assert.equal(h.clock.tasks.size, 0);
    await h.clock.advance(60_000);
    assert.equal(h.sockets.length, 1, 'no reconnect after close()');
  });

  for (const code of [1000, 1001, 1006, 1012, 1013, 4321]) {
    test(`server close ${code} reconnects with backoff`, async () => {
      const h = setup();
      await authenticate(h);
      h.socket().serverClose(code, 'bye');
      const last = h.seen.state.at(-1);
      assert.deepEqual([last.state, last.code, last.reason], ['reconnecting', code, 'bye']);
      assert.equal(last.delay, 250); // random 0.5 * minDelayMs: backoff, not immediate
      await h.clock.advance(249);
      assert.equal(h.sockets.length, 1);
      await h.clock.advance(1);
      assert.equal(h.sockets.length, 2);
      assert.equal(h.seen.error.length, 0);
    });
  }

  for (const code of [1003, 1009]) {
    test(`close ${code} (client bug) reports an error event and reconnects`, async () => {
      const h = setup();
      await authenticate(h);
      h.socket().serverClose(code, 'nope');
      assert.equal(h.seen.error.at(-1).code, code);
      assert.equal(h.client.state, 'reconnecting');
      await h.clock.advance(h.seen.state.at(-1).delay);
      await authenticate(h);
      assert.equal(h.client.state, 'connected');
    });
  }

  test('4001 asks the provider for a fresh token and reconnects at once; a repeat backs off', async () => {
    const reasons = [];
    const h = setup({ token: async ({ reason }) => `tok-${reasons.push(reason)}` });
    await authenticate(h);
    h.socket().serverClose(4001, 'token expired');
    assert.equal(h.seen.state.at(-1).delay, 0);
    await h.clock.advance(0);
    assert.deepEqual(reasons, ['connect', 'expired']);
    await authenticate(h);
    assert.equal(h.socket().last('auth').data.token, 'tok-2');
    h.socket().serverClose(4001);
    assert.ok(h.seen.state.at(-1).delay > 0, 'second 4001 without a refresh in between backs off');
  });

  test('1008 fetches a new token and reconnects; a second 1008 in a row fails', async () => {
    const reasons = [];
    const h = setup({ token: async ({ reason }) => `tok-${reasons.push(reason)}` });
    const pending = (() => {
      h.client.connect();
      return h.client.send('g1', { content: 'queued' });
    })();
    await flush();
    h.socket().open();
    h.socket().serverClose(1008, 'auth timeout');
    assert.equal(h.client.state, 'reconnecting');
    await h.clock.advance(h.seen.state.at(-1).delay);
    assert.deepEqual(reasons, ['connect', 'reconnect']);
    h.socket().open();
    h.socket().serverClose(1008, 'auth timeout');
    assert.equal(h.client.state, 'failed');
    assert.equal(h.seen.state.at(-1).code, 1008);
    await assert.rejects(pending, { code: 'failed' });
    await h.clock.advance(60_000);
    assert.equal(h.sockets.length, 2);
  });

  test('an auth_success between two 1008 closes resets the count', async () => {
    const h = setup();
    await authenticate(h);
    await dropAndReconnect(h, 1008);
    await authenticate(h);
    h.socket().serverClose(1008);
    assert.equal(h.client.state, 'reconnecting');
  });
});

// ---------------------------------------------------------------- auth and tokens

describe('authentication', () => {
  test('the provider is called on every (re)connect and its token goes in the auth frame', async () => {
    const reasons = [];
    const h = setup({ token: async ({ reason }) => `tok-${reasons.push(reason)}` });
    await authenticate(h);
    await dropAndReconnect(h, 1006);
    await authenticate(h);
    await dropAndReconnect(h, 1013);
    await authenticate(h);
    assert.deepEqual(reasons, ['connect', 'reconnect', 'reconnect']);
    assert.deepEqual(h.sockets.map((ws) => ws.of('auth')[0].data.token), ['tok-1', 'tok-2', 'tok-3']);
    assert.deepEqual(h.states().slice(0, 3), ['connecting', 'authenticating', 'connected']);
    assert.equal(h.seen.auth.length, 3);
  });

  test('auth_failed with a static token stops at once with state failed', async () => {
    const h = setup();
    h.client.connect();
    await flush();
    h.socket().open();
    h.socket().receive('auth_failed', { code: 401, message: 'bad token' }, h.socket().last('auth').message_id);
    assert.equal(h.client.state, 'failed');
    assert.equal(h.seen.state.at(-1).error.code, 401);
    assert.equal(h.socket().closedWith.code, 1000);
    await h.clock.advance(60_000);
    assert.equal(h.sockets.length, 1);
  });

  test('a provider token is retried once on the same socket, then the client fails', async () => {
    const reasons = [];
    const h = setup({ token: async ({ reason }) => `tok-${reasons.push(reason)}` });
    h.client.connect();
    await flush();
    const ws = h.socket();
    ws.open();
    ws.receive('auth_failed', { code: 401, message: 'expired' }, ws.last('auth').message_id);
    await flush();
    assert.deepEqual(reasons, ['connect', 'auth_failed']);
    assert.equal(ws.of('auth').length, 2);
    assert.equal(ws.last('auth').data.token, 'tok-2');
    assert.notEqual(h.client.state, 'failed');
    ws.receive('auth_failed', { code: 401, message: 'expired' }, ws.last('auth').message_id);
    await flush();
    assert.equal(h.client.state, 'failed');
    assert.equal(h.sockets.length, 1);
  });

  test('a throwing provider reports an error and retries with backoff', async () => {
    let calls = 0;
    const h = setup({
      token: async () => {
        calls += 1;
        if (calls === 1) throw new Error('offline');
        return 'tok';
      },
    });
    h.client.connect();
    await flush();
    assert.equal(h.sockets.length, 0);
    assert.equal(h.seen.error[0].code, 'token');
    assert.equal(h.client.state, 'reconnecting');
    await h.clock.advance(h.seen.state.at(-1).delay);
    await authenticate(h);
    assert.equal(h.client.state, 'connected');
  });

  test('the token is refreshed before expiry with a second auth on the same socket', async () => {
    const reasons = [];
    const h = setup({ refreshBeforeMs: 60_000, initialSeqs: { g1: 3 }, token: async ({ reason }) => `tok-${reasons.push(reason)}` });
    const ws = await authenticate(h, { expires_at: h.clock.t + 120_000 });
    assert.deepEqual(ws.last('auth').data.resume, { g1: 3 });
    await h.clock.advance(59_999);
    assert.equal(ws.of('auth').length, 1);
    await h.clock.advance(1);
    assert.equal(ws.of('auth').length, 2);
    const refresh = ws.last('auth');
    assert.deepEqual(refresh.data, { token: 'tok-2' }); // no resume: nothing to replay
    assert.deepEqual(reasons, ['connect', 'refresh']);
    ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: h.clock.t + 120_000 }, refresh.message_id);
    await h.clock.advance(60_000);
    assert.equal(ws.of('auth').length, 3, 'the next refresh follows the new expiry');
    assert.equal(h.sockets.length, 1);
    assert.equal(h.client.state, 'connected');
  });

  test('a refresh that does not extend the expiry is not repeated', async () => {
    const h = setup({ refreshBeforeMs: 60_000, token: async () => 'same' });
    const expiresAt = h.clock.t + 120_000;
    const ws = await authenticate(h, { expires_at: expiresAt });
    await h.clock.advance(60_000);
    ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: expiresAt }, ws.last('auth').message_id);
    await h.clock.advance(59_000);
    assert.equal(ws.of('auth').length, 2);
  });

  test('expires_at is read as ms, or as seconds when too small to be ms; huge delays are clamped', async () => {
    const h = setup({ refreshBeforeMs: 60_000, token: async () => 'tok' });
    const ws = await authenticate(h, { expires_at: Math.floor(h.clock.t / 1000) + 120 });
    await h.clock.advance(59_000);
    assert.equal(ws.of('auth').length, 1, 'a seconds value is not taken for an expiry in 1970');
    await h.clock.advance(1_000);
    assert.equal(ws.of('auth').length, 2);
    ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: h.clock.t + 90 * 86_400_000 }, ws.last('auth').message_id);
    await h.clock.advance(1_000);
    assert.equal(ws.of('auth').length, 2, 'a 90-day expiry does not overflow setTimeout into an immediate refresh');
  });

  test('a successful refresh re-arms the immediate reconnect on the next 4001', async () => {
    const h = setup({ refreshBeforeMs: 60_000, token: async () => 'tok' });
    await authenticate(h, { expires_at: h.clock.t + 120_000 });
    await dropAndReconnect(h, 4001);
    const ws = await authenticate(h, { expires_at: h.clock.t + 120_000 });
    await h.clock.advance(60_000);
    ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: h.clock.t + 120_000 }, ws.last('auth').message_id);
    ws.serverClose(4001);
    assert.equal(h.seen.state.at(-1).delay, 0);
  });

  test('a static token is never refreshed', async () => {
    const h = setup({ refreshBeforeMs: 60_000 });
    const ws = await authenticate(h, { expires_at: h.clock.t + 120_000 });
    await h.clock.advance(200_000);
    assert.equal(ws.of('auth').length, 1);
  });

  test('an error reply to the refresh auth counts as an auth failure', async () => {
    const h = setup({ refreshBeforeMs: 60_000, token: async () => 'tok' });
    const ws = await authenticate(h, { expires_at: h.clock.t + 120_000 });
    await h.clock.advance(60_000);
    ws.receive('error', { code: 400, message: 'token for another user' }, ws.last('auth').message_id);
    await flush();
    assert.equal(ws.of('auth').length, 3, 'one retry with a new token');
    ws.receive('auth_failed', { code: 401, message: 'no' }, ws.last('auth').message_id);
    await flush();
    assert.equal(h.client.state, 'failed');
  });
});

// ---------------------------------------------------------------- resume, gaps, order

describe('ordering and recovery', () => {
  test('initialSeqs and seen seqs go out as resume on every auth', async () => {
    const h = setup({ initialSeqs: { g1: 5, g2: 9 } });
    const ws = await authenticate(h);
    assert.deepEqual(ws.of('auth')[0].data.resume, { g1: 5, g2: 9 });
    ws.receive('new_message', msg(6));
    ws.receive('new_message', msg(1, 'g3'));
    assert.deepEqual(h.client.lastSeqs(), { g1: 6, g2: 9, g3: 1 });
    await dropAndReconnect(h, 1006);
    h.socket().open();
    assert.deepEqual(h.socket().last('auth').data.resume, { g1: 6, g2: 9, g3: 1 });
  });

  test('a gap triggers sync, and messages are delivered in order after the replay', async () => {
    const h = setup({ initialSeqs: { g1: 5 }, syncLimit: 50 });
    const ws = await authenticate(h);
    ws.receive('new_message', msg(8));
    ws.receive('new_message', msg(9));
    assert.deepEqual(h.delivered(), []);
    const syncs = ws.of('sync');
    assert.equal(syncs.length, 1, 'one sync per gap, not per message');
    assert.deepEqual(syncs[0].data, { group_id: 'g1', after_seq: 5, limit: 50 });
    ws.receive('new_message', msg(6));
    ws.receive('new_message', msg(7));
    ws.receive('new_message', msg(8)); // replay overlaps the buffered message
    ws.receive('ack', { group_id: 'g1', last_seq: 9, has_more: false }, syncs[0].message_id);
    await flush();
    assert.deepEqual(h.delivered(), [6, 7, 8, 9]);
    assert.equal(ws.of('sync').length, 1);
    assert.deepEqual(h.client.lastSeqs(), { g1: 9 });
  });

  test('a resume that stopped at the server limit pages on with sync after its last frame', async () => {
    const h = setup({ initialSeqs: { g1: 5, g2: 1 }, syncLimit: 50 });
    const ws = await authenticate(h, {
      resume: { g1: { last_seq: 7, has_more: true }, g2: { last_seq: 3, has_more: false } },
    });
    assert.equal(ws.of('sync').length, 0, 'not before the replayed frames');
    ws.receive('new_message', msg(6));
    ws.receive('new_message', msg(2, 'g2'));
    ws.receive('new_message', msg(3, 'g2'));
    assert.equal(ws.of('sync').length, 0);
    ws.receive('new_message', msg(7));
    const syncs = ws.of('sync');
    assert.equal(syncs.length, 1, 'only the group that has more');
    assert.deepEqual(syncs[0].data, { group_id: 'g1', after_seq: 7, limit: 50 });
    assert.deepEqual(h.delivered(), [6, 7]);
  });

  test('has_more keeps syncing from the new last seq', async () => {
    const h = setup({ initialSeqs: { g1: 0 }, syncLimit: 2 });
    const ws = await authenticate(h);
    ws.receive('new_message', msg(6));
    ws.receive('new_message', msg(1));
    ws.receive('new_message', msg(2));
    ws.receive('ack', { group_id: 'g1', last_seq: 6, has_more: true }, ws.last('sync').message_id);
    await flush();
    assert.deepEqual(ws.last('sync').data, { group_id: 'g1', after_seq: 2, limit: 2 });
    ws.receive('new_message', msg(3));
    ws.receive('new_message', msg(4));
    ws.receive('ack', { group_id: 'g1', last_seq: 6, has_more: true }, ws.last('sync').message_id);
    await flush();
    ws.receive('new_message', msg(5));
    ws.receive('ack', { group_id: 'g1', last_seq: 6, has_more: false }, ws.last('sync').message_id);
    await flush();
    assert.deepEqual(h.delivered(), [1, 2, 3, 4, 5, 6]);
    assert.equal(ws.of('sync').length, 3);
  });

  test('duplicates and old seqs are dropped', async () => {
    const h = setup({ initialSeqs: { g1: 5 } });
    const ws = await authenticate(h);
    for (const seq of [6, 6, 5, 3, 7, 6, 7]) ws.receive('new_message', msg(seq));
    assert.deepEqual(h.delivered(), [6, 7]);
    assert.equal(ws.of('sync').length, 0);
  });

  test('a group never seen before starts at its first seq', async () => {
    const h = setup();
    const ws = await authenticate(h);
    assert.equal(ws.last('auth').data.resume, undefined);
    ws.receive('new_message', msg(42, 'g9'));
    ws.receive('new_message', msg(41, 'g9'));
    ws.receive('new_message', msg(43, 'g9'));
    assert.deepEqual(h.delivered('g9'), [42, 43]);
    assert.equal(ws.of('sync').length, 0);
  });

  test('a hole the server cannot fill is reported and skipped instead of stalling', async () => {
    const h = setup({ initialSeqs: { g1: 5 } });
    const ws = await authenticate(h);
    ws.receive('new_message', msg(8));
    ws.receive('new_message', msg(7));
    ws.receive('ack', { group_id: 'g1', last_seq: 8, has_more: false }, ws.last('sync').message_id);
    await flush();
    assert.deepEqual(h.delivered(), [7, 8]);
    assert.deepEqual(h.seen.error.at(-1).data, { group_id: 'g1', from_seq: 6, to_seq: 6 });
  });

  test('past bufferLimit out-of-order messages are dropped and come back with the replay', async () => {
    const h = setup({ initialSeqs: { g1: 0 }, bufferLimit: 2 });
    const ws = await authenticate(h);
    for (const seq of [3, 4, 5]) ws.receive('new_message', msg(seq));
    for (const seq of [1, 2, 3, 4]) ws.receive('new_message', msg(seq));
    assert.deepEqual(h.delivered(), [1, 2, 3, 4], '5 was not buffered');
    ws.receive('new_message', msg(5));
    ws.receive('ack', { group_id: 'g1', last_seq: 5, has_more: false }, ws.last('sync').message_id);
    await flush();
    assert.deepEqual(h.delivered(), [1, 2, 3, 4, 5]);
  });

  test('a sync cut by a drop is not re-sent; the next auth resumes from the last in-order seq', async () => {
    const h = setup({ initialSeqs: { g1: 5 } });
    const ws = await authenticate(h);
    ws.receive('new_message', msg(6));
    ws.receive('new_message', msg(9));
    assert.equal(ws.of('sync').length, 1);
    await dropAndReconnect(h, 1006);
    const ws2 = await authenticate(h);
    assert.deepEqual(ws2.of('auth')[0].data.resume, { g1: 6 });
    assert.equal(ws2.of('sync').length, 0);
    for (const seq of [7, 8, 9, 10]) ws2.receive('new_message', msg(seq)); // resume replay, then live
    assert.deepEqual(h.delivered(), [6, 7, 8, 9, 10]);
    assert.equal(h.seen.error.length, 0);
  });

  test('manual sync() replays after the last seq and resolves with the final ack', async () => {
    const h = setup({ initialSeqs: { g1: 3 } });
    const ws = await authenticate(h);
    const done = h.client.sync('g1');
    assert.equal(h.client.sync('g1'), done, 'concurrent calls share one sync loop');
    assert.deepEqual(ws.last('sync').data.after_seq, 3);
    ws.receive('new_message', msg(4));
    ws.receive('ack', { group_id: 'g1', last_seq: 5, has_more: true }, ws.last('sync').message_id);
    await flush();
    assert.deepEqual(ws.last('sync').data.after_seq, 4, 'has_more pages on with an empty buffer too');
    ws.receive('new_message', msg(5));
    ws.receive('ack', { group_id: 'g1', last_seq: 5, has_more: false }, ws.last('sync').message_id);
    assert.deepEqual(await done, { group_id: 'g1', last_seq: 5, has_more: false });
    assert.deepEqual(h.delivered(), [4, 5]);
    assert.equal(ws.of('sync').length, 2);
  });
});

// ---------------------------------------------------------------- requests and outbox

describe('requests', () => {
  test('every frame is {type, message_id, timestamp ms, data object} with a unique id', async () => {
    const h = setup({ pingIntervalMs: 1000, pongTimeoutMs: 900 });
    const ws = await authenticate(h);
    h.client.send('g1', { content: 'hi' });
    h.client.markRead('g1', 3);
    h.client.join('g2');
    h.client.leave('g2');
    h.client.sync('g1');
    await h.clock.advance(1000);
    assert.deepEqual(ws.sent.map((f) => f.type), ['auth', 'send_message', 'mark_read', 'join_group', 'leave_group', 'sync', 'ping']);
    for (const frame of ws.sent) {
      assert.deepEqual(Object.keys(frame).sort(), ['data', 'message_id', 'timestamp', 'type']);
      assert.ok(typeof frame.message_id === 'string' && frame.message_id.length <= 64);
      assert.ok(Number.isInteger(frame.timestamp) && frame.timestamp > 1e12, 'timestamp is in ms');
      assert.equal(typeof frame.data, 'object');
    }
    assert.equal(new Set(ws.sent.map((f) => f.message_id)).size, ws.sent.length);
    assert.deepEqual(ws.of('send_message')[0].data, { group_id: 'g1', msg_type: 1, content: 'hi' });
    assert.deepEqual(ws.of('mark_read')[0].data, { group_id: 'g1', seq: 3 });
  });

  test('send resolves with the ack data; an error reply rejects with its code', async () => {
    const h = setup();
    const ws = await authenticate(h);
    const ok = h.client.send('g1', { content: 'hi' });
    const bad = h.client.send('g1', { msgType: 2, imageUrl: 'ftp://x' });
    const [first, second] = ws.of('send_message');
    assert.equal(second.data.image_url, 'ftp://x');
    const ack = { message_id: 'srv-1', group_id: 'g1', seq: 7, created_at: 1, success: true };
    ws.receive('ack', ack, first.message_id);
    ws.receive('error', { code: 400, message: 'image_url must be http(s)' }, second.message_id);
    assert.deepEqual(await ok, ack);
    const err = await bad.then(() => assert.fail('should reject'), (e) => e);
    assert.ok(err instanceof CampusHubError);
    assert.equal(err.code, 400);
    assert.equal(err.message, 'image_url must be http(s)');
    assert.equal(h.seen.error.length, 0, 'an error tied to a request is not also an error event');
    ws.receive('error', { code: 429, message: 'slow down' }, 'unknown-id');
    assert.equal(h.seen.error.at(-1).code, 429);
    assert.equal(h.seen.error.at(-1).retryable, true);
  });

  test('a request without a reply rejects after ackTimeoutMs; a late ack is ignored', async () => {
    const h = setup({ ackTimeoutMs: 5000 });
    const ws = await authenticate(h);
    const p = h.client.markRead('g1', 4);
    let settled = false;
    p.catch(() => {}).finally(() => { settled = true; });
    await h.clock.advance(4999);
    assert.equal(settled, false);
    await h.clock.advance(1);
    await assert.rejects(p, { code: 'timeout' });
    ws.receive('ack', { group_id: 'g1', last_read_seq: 4 }, ws.last('mark_read').message_id);
    assert.equal(h.seen.error.length, 0);
  });

  test('sends made while disconnected wait in the outbox and go out in order after auth_success', async () => {
    const h = setup({ ackTimeoutMs: 1000 });
    const a = h.client.send('g1', { content: 'a' });
    const b = h.client.join('g2');
    h.client.connect();
    await flush();
    h.socket().open();
    await h.clock.advance(5000); // queued requests have no ack timer yet
    assert.deepEqual(h.socket().sent.map((f) => f.type), ['auth']);
    const ws = h.socket();
    ws.receive('auth_success', { user_id: 'u1', groups: GROUPS, expires_at: h.clock.t + 60_000 }, ws.last('auth').message_id);
    assert.deepEqual(ws.sent.map((f) => f.type), ['auth', 'send_message', 'join_group']);
    ws.receive('ack', { message_id: 's', group_id: 'g1', seq: 1, created_at: 1, success: true }, ws.sent[1].message_id);
    ws.receive('ack', { group_id: 'g2', success: true }, ws.sent[2].message_id);
    assert.equal((await a).seq, 1);
    assert.equal((await b).group_id, 'g2');
  });

  test('queued requests go out before a send made from a connected listener', async () => {
    const h = setup();
    h.client.send('g1', { content: 'queued' });
    h.client.on('state', ({ state }) => {
      if (state === 'connected') h.client.send('g1', { content: 'from listener' });
    });
    const ws = await authenticate(h);
    assert.deepEqual(ws.of('send_message').map((f) => f.data.content), ['queued', 'from listener']);
  });

  test('the outbox is bounded: over the limit a send rejects at once', async () => {
    const h = setup({ outboxLimit: 2 });
    h.client.send('g1', { content: '1' });
    h.client.send('g1', { content: '2' });
    await assert.rejects(h.client.send('g1', { content: '3' }), (err) => err.code === 'outbox_full' && /outbox full/.test(err.message));
    const ws = await authenticate(h);
    assert.deepEqual(ws.of('send_message').map((f) => f.data.content), ['1', '2']);
  });

  test('an unacknowledged send is re-sent once with the same message_id after re-auth', async () => {
    const h = setup();
    const ws = await authenticate(h);
    const p = h.client.send('g1', { content: 'once' });
    const first = ws.last('send_message');
    await dropAndReconnect(h, 1006);
    const later = h.client.send('g1', { content: 'later' }); // queued behind the retry
    const ws2 = await authenticate(h);
    const resent = ws2.of('send_message');
    assert.deepEqual(resent.map((f) => f.data.content), ['once', 'later']);
    assert.equal(resent[0].message_id, first.message_id);
    assert.deepEqual(resent[0], first, 'byte-for-byte the same frame');
    ws2.receive('ack', { message_id: 'srv', group_id: 'g1', seq: 3, created_at: 1, success: true }, first.message_id);
    assert.equal((await p).seq, 3);
    await dropAndReconnect(h, 1006);
    const ws3 = await authenticate(h);
    assert.deepEqual(ws3.of('send_message').map((f) => f.data.content), ['later'], 'acked sends are not re-sent');
    later.catch(() => {});
  });

  test('a caller-supplied messageId is used as is', async () => {
    const h = setup();
    const ws = await authenticate(h);
    h.client.send('g1', { content: 'x', messageId: 'draft-17' });
    assert.equal(ws.last('send_message').message_id, 'draft-17');
    await assert.rejects(h.client.send('g1', { content: 'x', messageId: 'x'.repeat(65) }), TypeError);
  });

  test('a frame over maxFrameBytes is rejected with 413 and never sent', async () => {
    const h = setup({ maxFrameBytes: 1024 });
    const ws = await authenticate(h);
    await assert.rejects(h.client.send('g1', { content: 'é'.repeat(600) }), { code: 413 });
    assert.equal(ws.of('send_message').length, 0);
  });

  test('after 1009 the last request sent is rejected, not re-sent', async () => {
    const h = setup();
    const ws = await authenticate(h);
    const small = h.client.send('g1', { content: 'small' });
    const big = h.client.send('g1', { content: 'big' });
    ws.serverClose(1009, 'too big');
    await assert.rejects(big, { code: 1009 });
    await h.clock.advance(h.seen.state.at(-1).delay);
    const ws2 = await authenticate(h);
    assert.deepEqual(ws2.of('send_message').map((f) => f.data.content), ['small']);
    small.catch(() => {});
  });

  test('close() rejects in-flight and queued requests with code closed', async () => {
    const h = setup();
    const ws = await authenticate(h);
    const inflight = h.client.markRead('g1', 1);
    ws.serverClose(1006);
    const queued = h.client.send('g1', { content: 'q' });
    h.client.close();
    await assert.rejects(inflight, { code: 'closed' });
    await assert.rejects(queued, { code: 'closed' });
    await assert.rejects(h.client.send('g1', { content: 'after' }), { code: 'closed' });
    assert.equal(h.clock.tasks.size, 0);
  });
});

// ---------------------------------------------------------------- heartbeat

describe('heartbeat', () => {
  test('a ping goes out every pingIntervalMs; any frame keeps the connection', async () => {
    const h = setup({ pingIntervalMs: 1000, pongTimeoutMs: 500 });
    const ws = await authenticate(h);
    for (let i = 1; i <= 3; i++) {
      await h.clock.advance(1000);
      assert.equal(ws.of('ping').length, i);
      ws.receive('pong', {}, ws.last('ping').message_id);
    }
    await h.clock.advance(400);
    ws.receive('notification', { notification_id: 'n1', type: 'sys', title: 't', content: 'c', created_at: 1 });
    await h.clock.advance(600);
    assert.equal(h.client.state, 'connected');
    assert.equal(h.seen.notification.length, 1);
  });

  test('no frame within pongTimeoutMs after a ping: close and reconnect', async () => {
    const h = setup({ pingIntervalMs: 1000, pongTimeoutMs: 500 });
    const ws = await authenticate(h);
    await h.clock.advance(1499);
    assert.equal(h.client.state, 'connected');
    await h.clock.advance(1);
    assert.equal(ws.closedWith.code, 4000);
    assert.deepEqual([h.seen.state.at(-1).state, h.seen.state.at(-1).reason], ['reconnecting', 'heartbeat timeout']);
    await h.clock.advance(h.seen.state.at(-1).delay);
    assert.equal(h.sockets.length, 2);
    ws.receive('pong', {}); // the dead socket is ignored from now on
    assert.equal(h.client.state, 'connecting');
  });

  test('later pings do not push the pong deadline out (pongTimeoutMs > pingIntervalMs)', async () => {
    const h = setup({ pingIntervalMs: 1000, pongTimeoutMs: 1500 });
    const ws = await authenticate(h);
    await h.clock.advance(2499);
    assert.equal(ws.of('ping').length, 2);
    assert.equal(h.client.state, 'connected');
    await h.clock.advance(1);
    assert.equal(ws.closedWith.code, 4000);
  });

  test('a handshake that never opens times out and is retried; the late socket is ignored', async () => {
    const h = setup({ connectTimeoutMs: 3000, initialSeqs: { g1: 1 } });
    h.client.connect();
    await h.clock.advance(3000);
    const late = h.sockets[0];
    assert.equal(late.closedWith.code, 4000);
    assert.equal(h.client.state, 'reconnecting');
    late.open();
    assert.equal(late.sent.length, 0, 'no auth on an abandoned socket');
    late.receive('new_message', msg(2));
    late.serverClose(1006);
    assert.deepEqual(h.delivered(), []);
    assert.equal(h.client.state, 'reconnecting');
  });
});

// ---------------------------------------------------------------- subscriptions and events

describe('subscriptions and events', () => {
  test('a left group is left again after a reconnect and not resumed', async () => {
    const h = setup({ initialSeqs: { g1: 1, g2: 1 } });
    const ws = await authenticate(h);
    const left = h.client.leave('g2');
    ws.receive('ack', { group_id: 'g2', success: true }, ws.last('leave_group').message_id);
    await left;
    await dropAndReconnect(h, 1012);
    const ws2 = await authenticate(h);
    assert.deepEqual(ws2.of('auth')[0].data.resume, { g1: 1 });
    assert.deepEqual(ws2.of('leave_group').map((f) => f.data.group_id), ['g2']);
  });

  test('a joined group missing from auth_success is joined again, once', async () => {
    const h = setup();
    const ws = await authenticate(h, { groups: ['g1'] });
    const joined = h.client.join('g7');
    ws.receive('ack', { group_id: 'g7', success: true }, ws.last('join_group').message_id);
    await joined;
    await dropAndReconnect(h, 1006);
    const ws2 = await authenticate(h, { groups: ['g1'] });
    assert.deepEqual(ws2.of('join_group').map((f) => f.data.group_id), ['g7']);
    h.client.join('g8'); // in flight when the next drop happens
    await dropAndReconnect(h, 1006);
    const ws3 = await authenticate(h, { groups: ['g1'] });
    assert.deepEqual(ws3.of('join_group').map((f) => f.data.group_id).sort(), ['g7', 'g8'], 'no duplicate join for g8');
  });

  test('rejoining a left group syncs what was missed meanwhile', async () => {
    const h = setup({ initialSeqs: { g2: 4 } });
    const ws = await authenticate(h);
    h.client.leave('g2');
    const joined = h.client.join('g2');
    ws.receive('ack', { group_id: 'g2', success: true }, ws.last('join_group').message_id);
    await joined;
    await flush();
    assert.deepEqual(ws.last('sync').data, { group_id: 'g2', after_seq: 4, limit: 100 });
  });

  test('a join ack carrying last_seq triggers a sync only when the group is ahead', async () => {
    const h = setup({ initialSeqs: { g1: 4, g2: 9 } });
    const ws = await authenticate(h);
    const ahead = h.client.join('g1');
    ws.receive('ack', { group_id: 'g1', success: true, last_seq: 6 }, ws.last('join_group').message_id);
    await ahead;
    const even = h.client.join('g2');
    ws.receive('ack', { group_id: 'g2', success: true, last_seq: 9 }, ws.last('join_group').message_id);
    await even;
    await flush();
    assert.deepEqual(ws.of('sync').map((f) => f.data.group_id), ['g1']);
  });

  test('notification and read_update are emitted; on() returns an unsubscribe function', async () => {
    const h = setup();
    const ws = await authenticate(h);
    const got = [];
    const off = h.client.on('read_update', (data) => got.push(data));
    ws.receive('read_update', { group_id: 'g1', last_read_seq: 3 });
    off();
    ws.receive('read_update', { group_id: 'g1', last_read_seq: 4 });
    assert.deepEqual(got, [{ group_id: 'g1', last_read_seq: 3 }]);
    assert.equal(h.seen.read_update.length, 2);
  });

  test('an unreadable frame is reported and does not break the connection', async () => {
    const h = setup();
    const ws = await authenticate(h);
    ws.onmessage({ data: 'not json' });
    ws.onmessage({ data: '{"a":1}\n{"b":2}' });
    assert.deepEqual(h.seen.error.map((e) => e.code), ['protocol', 'protocol']);
    ws.receive('new_message', msg(1));
    assert.deepEqual(h.delivered(), [1]);
  });

  test('connect() while waiting to reconnect skips the wait', async () => {
    const h = setup({ random: () => 0.999 });
    await authenticate(h);
    h.socket().serverClose(1006);
    assert.equal(h.client.state, 'reconnecting');
    h.client.connect();
    await flush();
    assert.equal(h.sockets.length, 2);
    await h.clock.advance(1000);
    assert.equal(h.sockets.length, 2, 'the cancelled timer does not open a third socket');
  });

  test('after failing, requests reject at once until connect() is called again', async () => {
    const h = setup();
    h.client.connect();
    await flush();
    h.socket().open();
    h.socket().receive('auth_failed', { code: 401, message: 'bad' }, h.socket().last('auth').message_id);
    const err = await h.client.send('g1', { content: 'x' }).catch((e) => e);
    assert.equal(err.code, 'failed');
    await authenticate(h);
    assert.equal(h.client.state, 'connected');
  });

  test('ready() resolves on connect and rejects when the client fails', async () => {
    const h = setup();
    const ready = h.client.ready();
    await authenticate(h);
    await ready;
    const h2 = setup();
    const failing = h2.client.ready();
    h2.client.connect();
    await flush();
    h2.socket().open();
    h2.socket().receive('auth_failed', { code: 401, message: 'bad' }, h2.socket().last('auth').message_id);
    await assert.rejects(failing, { code: 401 });
  });
});
