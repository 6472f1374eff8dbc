// CampusHub Realtime demo: groups, history and live chat, notifications, presence.
// Plain ES module on the SDK; no build step. Every text that came from the network is put
// in the page with textContent (or as a DOM property), never parsed as HTML.
import { CampusHubClient } from '/static/sdk/campushub.js';

const API = '/api/v1';
const WS_URL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
const DEV_LOGIN = document.querySelector('meta[name="campushub-dev-login"]')?.content === 'true';
const KEY = { token: 'campushub.token', dev: 'campushub.devUser', group: 'campushub.group' };
const ONLINE_EVERY_MS = 10_000;
const HISTORY_LIMIT = 100;
const STATE_LABELS = {
  connecting: 'connecting…',
  authenticating: 'signing in…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  disconnected: 'offline',
  failed: 'failed',
};

const $ = (selector) => document.querySelector(selector);

const app = {
  token: null,
  devUser: null, // {user_id, name} when signed in with the dev login: tokens are re-minted
  me: null,
  client: null,
  everConnected: false,
  groups: new Map(), // group_id → group as GET /groups returns it
  messages: new Map(), // group_id → Map(seq → message)
  readMarks: new Map(), // group_id → last seq this page marked read
  notices: new Map(), // notification_id → unread notification
  current: null,
  timers: { online: null, groups: null, read: null, toast: null },
};

// ------------------------------------------------------------------ small helpers

/** Builds an element; strings among `children` become text nodes. */
function el(tag, { cls, text, data } = {}, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  if (data) Object.assign(node.dataset, data);
  node.append(...children);
  return node;
}

function button(label, onClick, cls = 'ghost small') {
  const node = el('button', { cls, text: label });
  node.type = 'button';
  node.addEventListener('click', onClick);
  return node;
}

const fmtTime = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
const isHttpUrl = (url) => typeof url === 'string' && /^https?:\/\/\S+$/i.test(url);
const newId = () => `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;

function toast(message) {
  const node = $('#toast');
  node.textContent = message;
  node.hidden = false;
  clearTimeout(app.timers.toast);
  app.timers.toast = setTimeout(() => (node.hidden = true), 5000);
}

function detailText(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) return detail.map((d) => d?.msg ?? String(d)).join('; ');
  return '';
}

/** The unverified claims of a JWT, for display only (the server checks the signature). */
function claimsOf(token) {
  try {
    const bytes = Uint8Array.from(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { Authorization: `Bearer ${app.token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const error = new Error(detailText(data?.detail) || `${res.status} ${res.statusText}`);
    error.status = res.status;
    throw error;
  }
  return data;
}

async function devToken({ user_id, name }) {
  const res = await fetch(`${API}/dev/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(name ? { user_id, name } : { user_id }),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(detailText(data?.detail) || `dev login failed (${res.status})`);
  return data.token;
}

// ------------------------------------------------------------------ sign in and out

function showLogin(error = '') {
  $('#login').hidden = false;
  $('#app').hidden = true;
  $('#dev-form').hidden = !DEV_LOGIN;
  $('#login-error').textContent = error;
  for (const id of ['#me', '#logout']) $(id).hidden = true;
}

async function start(token, devUser = null) {
  app.token = token;
  app.devUser = devUser;
  app.me = claimsOf(token).sub ?? null;
  const groups = await loadGroups(); // a bad token fails here, before anything is shown
  localStorage.setItem(KEY.token, token);
  if (devUser) localStorage.setItem(KEY.dev, JSON.stringify(devUser));
  else localStorage.removeItem(KEY.dev);

  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#me').textContent = claimsOf(token).name ?? app.me ?? '';
  $('#me').hidden = false;
  $('#logout').hidden = false;

  // Start from what the server has now; the SDK resumes every group from there.
  const initialSeqs = Object.fromEntries(groups.map((g) => [g.group_id, g.last_seq]));
  const client = new CampusHubClient({ url: WS_URL, token: tokenProvider, initialSeqs, maxDelayMs: 5000 });
  app.client = client;
  client.on('state', onState);
  client.on('auth', (data) => (app.me = data.user_id));
  client.on('message', onMessage);
  client.on('notification', addNotice);
  client.on('read_update', () => scheduleGroupsRefresh());
  client.on('error', (err) => console.warn('[campushub]', err.code, err.message));
  client.connect();

  loadNotices().catch((err) => toast(`Notifications: ${err.message}`));
  app.timers.online = setInterval(refreshOnline, ONLINE_EVERY_MS);
  const last = localStorage.getItem(KEY.group);
  const first = app.groups.has(last) ? last : groups[0]?.group_id;
  if (first) openGroup(first);
}

async function tokenProvider({ reason }) {
  if (app.devUser && reason !== 'connect' && reason !== 'reconnect') {
    app.token = await devToken(app.devUser);
    localStorage.setItem(KEY.token, app.token);
  }
  return app.token;
}

function logout() {
  app.client?.close();
  for (const key of Object.values(KEY)) localStorage.removeItem(key);
  location.reload();
}

function onState({ state, code, error }) {
  console.info('[campushub] state', state, code ?? '');
  const node = $('#conn-state');
  node.dataset.state = state;
  node.textContent = STATE_LABELS[state] ?? state;
  if (state === 'connected') {
    if (app.everConnected) resync();
    app.everConnected = true;
  } else if (state === 'failed') {
    toast(`Connection failed: ${error?.message ?? 'unknown error'}`);
  }
}

/** After a reconnect: the SDK has resumed the stream; refresh what REST owns. */
async function resync() {
  try {
    await loadGroups();
    if (app.current) await loadHistory(app.current, { after: lastSeq(app.current) || undefined });
    await loadNotices();
    refreshOnline();
  } catch (err) {
    toast(`Refresh after reconnect failed: ${err.message}`);
  }
}

// ------------------------------------------------------------------ groups

async function loadGroups() {
  const page = await api('/groups?limit=200');
  app.groups = new Map(page.items.map((g) => [g.group_id, g]));
  for (const g of page.items) {
    if (g.group_id === app.current && (app.readMarks.get(g.group_id) ?? 0) >= g.last_seq) g.unread_count = 0;
  }
  renderGroups();
  return page.items;
}

function scheduleGroupsRefresh() {
  clearTimeout(app.timers.groups);
  app.timers.groups = setTimeout(() => loadGroups().catch((err) => toast(err.message)), 250);
}

function renderGroups() {
  const items = [...app.groups.values()].map((g) => {
    const open = el('button', { cls: 'group-button' }, el('span', { cls: 'group-name', text: g.name }));
    open.type = 'button';
    if (g.unread_count > 0) open.append(el('span', { cls: 'badge unread', text: String(g.unread_count) }));
    open.addEventListener('click', () => openGroup(g.group_id));
    const data = { groupId: g.group_id, readSeq: String(g.last_read_seq) };
    return el('li', { cls: g.group_id === app.current ? 'group active' : 'group', data }, open);
  });
  $('#groups').replaceChildren(...items);
  if (items.length === 0) $('#groups').append(el('li', { cls: 'hint', text: 'No groups yet: create one below.' }));
}

async function onCreateGroup(event) {
  event.preventDefault();
  const name = $('#group-name').value.trim();
  const members = $('#group-members').value.split(/[\s,]+/).filter((id) => id && id !== app.me);
  try {
    const group = await api('/groups', { method: 'POST', body: { name, member_ids: [...new Set(members)] } });
    app.groups.set(group.group_id, group);
    event.target.reset();
    renderGroups();
    openGroup(group.group_id);
  } catch (err) {
    toast(`Could not create the group: ${err.message}`);
  }
}

// ------------------------------------------------------------------ messages

function cache(groupId) {
  if (!app.messages.has(groupId)) app.messages.set(groupId, new Map());
  return app.messages.get(groupId);
}

const lastSeq = (groupId) => Math.max(0, ...cache(groupId).keys());

function store(message) {
  if (!Number.isInteger(message.seq)) return false;
  const messages = cache(message.group_id);
  if (messages.has(message.seq)) return false;
  messages.set(message.seq, message);
  return true;
}

async function openGroup(groupId) {
  const group = app.groups.get(groupId);
  if (!group) return;
  app.current = groupId;
  localStorage.setItem(KEY.group, groupId);
  $('#chat-title').textContent = group.name;
  $('#messages').replaceChildren();
  $('#pending').replaceChildren();
  $('#online').replaceChildren();
  $('#send-form').hidden = false;
  renderGroups();
  for (const seq of [...cache(groupId).keys()].sort((a, b) => a - b)) renderMessage(cache(groupId).get(seq));
  refreshOnline();
  try {
    await loadHistory(groupId);
  } catch (err) {
    toast(`History: ${err.message}`);
  }
  $('#msg-input').focus();
}

/** The latest page of history, or everything after `after` (paging on), merged by seq. */
async function loadHistory(groupId, { after } = {}) {
  let query = after === undefined ? '' : `&after_seq=${after}`;
  for (;;) {
    const page = await api(`/groups/${encodeURIComponent(groupId)}/messages?limit=${HISTORY_LIMIT}${query}`);
    for (const message of page.items) if (store(message)) renderMessage(message);
    if (after === undefined || !page.next_cursor) break;
    query = `&after_seq=${encodeURIComponent(page.next_cursor)}`;
  }
  markSeen();
}

function onMessage(message) {
  if (!app.groups.has(message.group_id)) scheduleGroupsRefresh(); // added to a group just now
  if (!store(message)) return;
  const group = app.groups.get(message.group_id);
  if (group) group.last_seq = Math.max(group.last_seq, message.seq);
  const seen = message.group_id === app.current && document.visibilityState === 'visible';
  if (group && !seen && message.sender_id !== app.me && message.seq > group.last_read_seq) {
    group.unread_count += 1;
    renderGroups();
  }
  if (message.group_id === app.current) {
    renderMessage(message);
    markSeen();
  }
}

function renderMessage(message) {
  if (message.group_id !== app.current || !Number.isInteger(message.seq)) return;
  const list = $('#messages');
  if (list.querySelector(`li[data-seq="${message.seq}"]`)) return;
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const mine = message.sender_id === app.me;
  const li = el('li', { cls: mine ? 'msg mine' : 'msg', data: { seq: String(message.seq), messageId: message.message_id } });
  const meta = el('div', { cls: 'meta' }, el('span', { cls: 'sender', text: message.sender_name || message.sender_id }), el('time', { text: fmtTime(message.created_at) }));
  const body = el('div', { cls: 'body' });
  if (message.msg_type === 2) {
    if (isHttpUrl(message.image_url)) {
      const img = document.createElement('img');
      img.alt = message.content || 'image';
      img.loading = 'lazy';
      img.referrerPolicy = 'no-referrer';
      img.src = message.image_url; // a DOM property, and only ever an http(s) URL
      body.append(img);
    } else {
      body.append(el('span', { cls: 'bad-url', text: message.image_url ?? '' }));
    }
  }
  if (message.msg_type !== 2 || message.content) body.append(el('p', { cls: 'content', text: message.content }));
  li.append(meta, body);
  let before = list.lastElementChild; // usually the new one goes last
  while (before && Number(before.dataset.seq) > message.seq) before = before.previousElementSibling;
  if (before) before.after(li);
  else list.prepend(li);
  $('#pending').querySelector(`li[data-seq="${message.seq}"]`)?.remove();
  if (stick || mine) list.scrollTop = list.scrollHeight;
}

/** Marks the open group read up to its last message while the page is visible. */
function markSeen() {
  clearTimeout(app.timers.read);
  app.timers.read = setTimeout(() => {
    const groupId = app.current;
    if (!groupId || document.visibilityState !== 'visible' || !app.client) return;
    const seq = lastSeq(groupId);
    const group = app.groups.get(groupId);
    if (group && group.unread_count !== 0) {
      group.unread_count = 0;
      renderGroups();
    }
    if (seq <= (app.readMarks.get(groupId) ?? 0)) return;
    app.readMarks.set(groupId, seq);
    app.client.markRead(groupId, seq).then(
      (ack) => {
        const current = app.groups.get(groupId);
        if (!current || ack.last_read_seq <= current.last_read_seq) return;
        current.last_read_seq = ack.last_read_seq; // confirmed by the server
        renderGroups();
      },
      () => app.readMarks.delete(groupId), // tried again with the next message
    );
  }, 150);
}

async function onSend(event) {
  event.preventDefault();
  const groupId = app.current;
  const input = $('#msg-input');
  const value = input.value.trim();
  const image = $('#msg-kind').value === '2';
  if (!groupId || !value) return;
  if (image && !isHttpUrl(value)) {
    toast('An image message needs an http(s) URL.');
    return;
  }
  input.value = '';
  const options = image ? { msgType: 2, imageUrl: value, content: '' } : { content: value };
  sendWithPending(groupId, { ...options, messageId: newId() }, value);
}

/** Shows the message as pending until the server's copy (same seq) arrives. */
async function sendWithPending(groupId, options, preview) {
  const status = el('div', { cls: 'meta', text: 'sending…' });
  const li = el('li', { cls: 'msg mine pending-msg' }, status, el('p', { cls: 'content', text: preview }));
  $('#pending').append(li);
  try {
    const ack = await app.client.send(groupId, options);
    if (groupId !== app.current || $('#messages').querySelector(`li[data-seq="${ack.seq}"]`)) li.remove();
    else li.dataset.seq = String(ack.seq);
  } catch (err) {
    li.classList.add('failed');
    status.textContent = `not sent: ${err.message}`;
    status.append(
      button('Retry', () => {
        li.remove();
        sendWithPending(groupId, options, preview); // same messageId: the server stores it once
      }),
      button('Dismiss', () => li.remove()),
    );
  }
}

// ------------------------------------------------------------------ presence

async function refreshOnline() {
  const groupId = app.current;
  if (!groupId) return;
  try {
    const { user_ids: users } = await api(`/groups/${encodeURIComponent(groupId)}/online`);
    if (groupId !== app.current) return;
    const chips = users.map((id) => el('span', { cls: id === app.me ? 'chip me' : 'chip', text: id, data: { userId: id } }));
    $('#online').replaceChildren(el('span', { cls: 'hint', text: `${users.length} online` }), ...chips);
  } catch {
    // the next refresh tries again
  }
}

// ------------------------------------------------------------------ notifications

async function loadNotices() {
  const page = await api('/notifications?unread_only=true&limit=100');
  for (const notice of page.items) addNotice(notice);
}

function addNotice(notice) {
  if (app.notices.has(notice.notification_id) || notice.read_at) return;
  app.notices.set(notice.notification_id, notice);
  const li = el(
    'li',
    { cls: 'notice', data: { id: notice.notification_id, created: String(notice.created_at) } },
    el('div', { cls: 'row' }, el('strong', { cls: 'title', text: notice.title }), el('span', { cls: 'tag', text: notice.type })),
    el('p', { cls: 'content', text: notice.content }),
    el('div', { cls: 'row' }, el('time', { text: fmtTime(notice.created_at) }), button('Mark read', () => readNotice(notice.notification_id))),
  );
  // Newest first, wherever it arrives from (live push or a reload after reconnecting).
  const list = $('#notifications');
  const next = [...list.children].find((node) => Number(node.dataset.created) < notice.created_at);
  list.insertBefore(li, next ?? null);
  renderBadge();
}

function dropNotice(id) {
  app.notices.delete(id);
  for (const node of $('#notifications').children) if (node.dataset.id === id) node.remove();
  renderBadge();
}

async function readNotice(id) {
  try {
    await api(`/notifications/${encodeURIComponent(id)}/read`, { method: 'POST' });
    dropNotice(id);
  } catch (err) {
    toast(`Could not mark read: ${err.message}`);
  }
}

async function readAllNotices() {
  try {
    await api('/notifications/read-all', { method: 'POST' });
    for (const id of [...app.notices.keys()]) dropNotice(id);
  } catch (err) {
    toast(`Could not mark read: ${err.message}`);
  }
}

function renderBadge() {
  const count = app.notices.size;
  const badge = $('#notif-badge');
  badge.textContent = String(count);
  badge.hidden = count === 0;
  $('#no-notifications').hidden = count > 0;
}

// ------------------------------------------------------------------ wiring

async function signIn(getToken, devUser = null, { remint = false } = {}) {
  $('#login-error').textContent = '';
  try {
    await start(await getToken(), devUser);
  } catch (err) {
    // A saved dev token may have expired: the dev login can simply mint a new one.
    if (err.status === 401 && devUser && remint) return signIn(() => devToken(devUser), devUser);
    showLogin(err.status === 401 ? 'That token was refused: it is invalid or expired.' : err.message);
  }
}

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn(async () => $('#token-input').value.trim());
});
$('#dev-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const devUser = { user_id: $('#dev-user').value.trim(), name: $('#dev-name').value.trim() || undefined };
  signIn(() => devToken(devUser), devUser);
});
$('#create-group').addEventListener('submit', onCreateGroup);
$('#send-form').addEventListener('submit', onSend);
$('#msg-kind').addEventListener('change', (event) => {
  $('#msg-input').placeholder = event.target.value === '2' ? 'https://… image URL' : 'Write a message';
});
$('#read-all').addEventListener('click', readAllNotices);
$('#logout').addEventListener('click', logout);
document.addEventListener('visibilitychange', markSeen);
window.addEventListener('online', () => app.client?.connect()); // reconnect now, not after the backoff

const saved = localStorage.getItem(KEY.token);
if (saved) {
  let devUser = null;
  try {
    devUser = JSON.parse(localStorage.getItem(KEY.dev) ?? 'null');
  } catch {
    devUser = null;
  }
  signIn(async () => saved, devUser, { remint: true });
} else {
  showLogin();
}
