// Type declarations for campushub.js (WebSocket protocol v1, SPEC §3).

/** Ids are opaque strings (UUIDs); seqs are consecutive integers per group, starting at 1. */
export type GroupId = string;
export type Seq = number;

// ---------------------------------------------------------------- frames

/** Every frame, in both directions: one JSON object per WebSocket text frame. */
export interface Frame<T extends string = string, D extends object = Record<string, unknown>> {
  type: T;
  /** Client-chosen id of a client frame (≤ 64 chars); server id of a pushed message. */
  message_id?: string;
  /** Unix milliseconds. */
  timestamp?: number;
  data?: D;
}

export interface AuthData {
  token: string;
  /** Last seen seq per group; the server replays what came after. */
  resume?: Record<GroupId, Seq>;
}
export interface SendMessageData {
  group_id: GroupId;
  /** 1 text, 2 image. */
  msg_type: 1 | 2;
  content: string;
  image_url?: string;
}
export interface GroupData {
  group_id: GroupId;
}
export interface MarkReadData {
  group_id: GroupId;
  seq: Seq;
}
export interface SyncData {
  group_id: GroupId;
  after_seq: Seq;
  limit: number;
}

export type ClientFrame =
  | Frame<'ping', Record<string, never>>
  | Frame<'auth', AuthData>
  | Frame<'send_message', SendMessageData>
  | Frame<'join_group', GroupData>
  | Frame<'leave_group', GroupData>
  | Frame<'mark_read', MarkReadData>
  | Frame<'sync', SyncData>;

export interface AuthSuccess {
  user_id: string;
  groups: GroupId[];
  /** Unix milliseconds. */
  expires_at: number;
}
export interface ServerErrorData {
  code: number;
  message: string;
}
export interface NewMessage {
  message_id: string;
  group_id: GroupId;
  seq: Seq;
  sender_id: string;
  sender_name: string;
  msg_type: 1 | 2;
  content: string;
  image_url: string | null;
  /** Unix milliseconds. */
  created_at: number;
}
export interface Notification {
  notification_id: string;
  type: string;
  title: string;
  content: string;
  created_at: number;
}
export interface ReadUpdate {
  group_id: GroupId;
  last_read_seq: Seq;
}
export interface SendAck {
  /** Server message id. */
  message_id: string;
  group_id: GroupId;
  seq: Seq;
  created_at: number;
  success: true;
}
export interface JoinAck {
  group_id: GroupId;
  success: true;
}
export type LeaveAck = Record<string, unknown> & { group_id?: GroupId };
export interface MarkReadAck {
  group_id: GroupId;
  last_read_seq: Seq;
}
export interface SyncAck {
  group_id: GroupId;
  last_seq: Seq;
  has_more: boolean;
}

export type ServerFrame =
  | Frame<'pong'>
  | Frame<'auth_success', AuthSuccess>
  | Frame<'auth_failed', ServerErrorData>
  | Frame<'ack', Record<string, unknown>>
  | Frame<'error', ServerErrorData>
  | Frame<'new_message', NewMessage>
  | Frame<'notification', Notification>
  | Frame<'read_update', ReadUpdate>;

// ---------------------------------------------------------------- options

/** Why the token provider is asked for a token. */
export type TokenReason = 'connect' | 'reconnect' | 'expired' | 'auth_failed' | 'refresh';
export type TokenProvider = (context: { reason: TokenReason }) => string | Promise<string>;

/** The part of the WebSocket API the client uses (browser WebSocket, Node 22 global, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(id: unknown): void;
}

export interface CampusHubOptions {
  /** ws:// or wss:// URL of the /ws endpoint. */
  url: string;
  /** A JWT, or a function returning one; a function is called on every (re)connect and refresh. */
  token: string | TokenProvider;
  /** Refresh this long before `expires_at`, with a second `auth` on the open socket. Default 60000. */
  refreshBeforeMs?: number;
  /** Backoff base: delay = random() * min(maxDelayMs, minDelayMs * 2 ** attempt). Default 500. */
  minDelayMs?: number;
  /** Backoff cap. Default 20000. */
  maxDelayMs?: number;
  /** A handshake that does not open within this is abandoned (close 4000). Default 15000. */
  connectTimeoutMs?: number;
  /** A JSON `ping` every N ms; 0 disables. Default 25000. */
  pingIntervalMs?: number;
  /** No frame at all within this after a ping: the socket is dead (close 4000, reconnect). Default 10000. */
  pongTimeoutMs?: number;
  /** A request without a reply this long after it was written is rejected ('timeout'). Default 10000. */
  ackTimeoutMs?: number;
  /** Requests that may wait for a connection; beyond it they reject with 'outbox_full'. Default 100. */
  outboxLimit?: number;
  /** `limit` of each `sync` page. Default 100. */
  syncLimit?: number;
  /** Out-of-order messages held per group while a gap is filled. Default 1000. */
  bufferLimit?: number;
  /** Requests whose frame is larger are rejected with code 413 before sending. Default 524288. */
  maxFrameBytes?: number;
  /** Last seen seq per group, e.g. from a previous `lastSeqs()`; sent as `resume`. */
  initialSeqs?: Record<GroupId, Seq> | Map<GroupId, Seq>;
  /** WebSocket implementation; defaults to `globalThis.WebSocket` (pass the `ws` package on Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Timer functions (tests inject fakes). */
  timers?: Timers;
  /** Clock in Unix ms (frame timestamps, token expiry). */
  now?: () => number;
  /** Random numbers in [0, 1) for backoff jitter. */
  random?: () => number;
}

// ---------------------------------------------------------------- events

export type ConnectionState =
  | 'connecting'
  | 'authenticating'
  | 'connected'
  | 'reconnecting'
  | 'disconnected'
  | 'failed';

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** Close code that caused the change (null when no socket closed, e.g. a token provider error). */
  code?: number | null;
  reason?: string;
  /** `reconnecting`: ms until the next attempt. */
  delay?: number;
  /** `connecting`: backoff attempt number. */
  attempt?: number;
  /** `failed`: why the client stopped. */
  error?: CampusHubError;
}

export interface CampusHubEvents {
  /** `new_message` data, in seq order per group, without duplicates. */
  message: NewMessage;
  notification: Notification;
  read_update: ReadUpdate;
  state: StateChange;
  /** Server errors not tied to a pending request, auth failures, 1003/1009 closes, seq holes ('gap'). */
  error: CampusHubError;
  /** `auth_success` data, after every successful auth (connect and in-place refresh). */
  auth: AuthSuccess;
  /** Every inbound frame, before it is handled (debugging, future frame types). */
  frame: ServerFrame;
}

// ---------------------------------------------------------------- classes

/**
 * `code` is the server's error code (400, 401, 403, 404, 413, 429, 503), a close code
 * (1003, 1008, 1009), or a client code: 'timeout', 'disconnected', 'closed', 'failed',
 * 'outbox_full', 'token', 'socket', 'protocol', 'gap'.
 */
export class CampusHubError extends Error {
  constructor(code: number | string, message: string, data?: unknown);
  readonly code: number | string;
  readonly data?: unknown;
  /** 429, 503 or 'timeout': a send may be retried with the same `messageId`. */
  readonly retryable: boolean;
}

export const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  UNSUPPORTED_DATA: 1003;
  ABNORMAL: 1006;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  CLIENT_TIMEOUT: 4000;
  TOKEN_EXPIRED: 4001;
}>;

/** Full-jitter backoff delay in ms for a 0-based attempt. */
export function backoffDelay(
  attempt: number,
  bounds: { minDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;

export interface SendOptions {
  content?: string;
  /** 1 text (default), 2 image. */
  msgType?: 1 | 2;
  imageUrl?: string;
  /** Reuse an id to retry a send idempotently; by default a fresh id is generated. */
  messageId?: string;
}

export class CampusHubClient {
  constructor(options: CampusHubOptions);
  readonly state: ConnectionState;
  on<E extends keyof CampusHubEvents>(event: E, listener: (payload: CampusHubEvents[E]) => void): () => void;
  off<E extends keyof CampusHubEvents>(event: E, listener: (payload: CampusHubEvents[E]) => void): void;
  /** Opens the connection; while waiting to reconnect, reconnects now. */
  connect(): void;
  /** Resolves once connected; rejects if the client stops first. */
  ready(): Promise<void>;
  /** Stops: close 1000, timers cleared, pending requests rejected with 'closed'. */
  close(): void;
  /** Last in-order seq per group (what `resume` carries). */
  lastSeqs(): Record<GroupId, Seq>;
  send(groupId: GroupId, message: SendOptions): Promise<SendAck>;
  markRead(groupId: GroupId, seq: Seq): Promise<MarkReadAck>;
  join(groupId: GroupId): Promise<JoinAck>;
  leave(groupId: GroupId): Promise<LeaveAck>;
  /** Replays what the group has after its last seen seq, paging until caught up. */
  sync(groupId: GroupId): Promise<SyncAck>;
}
