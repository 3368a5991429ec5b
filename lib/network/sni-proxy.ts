/**
 * The readers of a connection's first bytes, for the name check of HTTP and TLS connections
 * (nfqueue.ts): the TLS ClientHello's SNI (`sniOf`) and the HTTP request's Host (`hostOf`).
 *
 * And the ask listener: with `ask`, new TCP connections to bare addresses that nothing admits
 * (nat.ts `askRules`) are redirected here: it asks about the address at once (before any
 * byte: protocols whose server speaks first work too) and holds the connection until the
 * answer; `true` connects to the original destination (SO_ORIGINAL_DST) and hands both
 * sockets to the kernel (splice on a thread of the addon, relay.cc; the address joins the
 * sandbox's asked set, so later connections go straight), anything else resets it with a
 * violation. The sandbox's connect() has succeeded by then (the listener completed the
 * handshake): a refusal shows as a reset on the first read or write, never as a timeout.
 */
import net from 'node:net';
import { isFailure, native } from '../native.js';

/** The most a ClientHello / HTTP request head is read for its name: past it, none. */
export const HELLO_MAX = 16_384;
export const HEAD_MAX = 8_192;
const MAX_CLIENTS = 1024;

/** The server name of a TLS ClientHello; null: none in it; undefined: need more bytes. */
export function sniOf(b: Buffer): string | null | undefined {
  if (b.length < 5) return undefined;
  if (b[0] !== 0x16) return null;
  const recLen = b.readUInt16BE(3);
  if (b.length < 5 + recLen) return b.length >= HELLO_MAX ? null : undefined;
  let o = 5;
  if (b[o] !== 1) return null; // not a ClientHello
  o += 4 + 2 + 32; // handshake header, version, random
  const end = 5 + recLen;
  const skip = (lenBytes: 1 | 2): boolean => {
    if (o + lenBytes > end) return false;
    o += lenBytes + (lenBytes === 1 ? b[o]! : b.readUInt16BE(o));
    return o <= end;
  };
  if (!skip(1) || !skip(2) || !skip(1)) return null; // session id, cipher suites, compression
  if (o + 2 > end) return null;
  const extEnd = Math.min(end, o + 2 + b.readUInt16BE(o));
  o += 2;
  while (o + 4 <= extEnd) {
    const type = b.readUInt16BE(o);
    const len = b.readUInt16BE(o + 2);
    o += 4;
    if (type === 0 && o + 5 <= extEnd) {
      // server_name list: length(2), type(1) = 0 host_name, length(2), name
      const nameLen = b.readUInt16BE(o + 3);
      if (b[o + 2] !== 0 || o + 5 + nameLen > extEnd) return null;
      return b.toString('latin1', o + 5, o + 5 + nameLen).toLowerCase();
    }
    o += len;
  }
  return null;
}

/** The Host of an HTTP request head (port removed); null: none; undefined: need more bytes. */
export function hostOf(b: Buffer): string | null | undefined {
  const end = b.indexOf('\r\n\r\n');
  if (end < 0) return b.length >= HEAD_MAX ? null : undefined;
  const m = /\r\nhost:[ \t]*([^\r\n]*)/i.exec(b.toString('latin1', 0, end + 2));
  if (!m) return null;
  return m[1]!.trim().replace(/:\d+$/, '').replace(/^\[|\]$/g, '').toLowerCase() || null;
}

let nextRelay = 1;

function listen(server: net.Server, bind: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, bind, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function fdOf(s: net.Socket): number | null {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

export interface ProxyHooks {
  refused(v: { host: string | null; address: string; port: number; reason: string }): void;
  /** `ask` about a bare address (once per address): true, or the reason it is refused. */
  askAddress(dst: { address: string; port: number }): Promise<true | string>;
}

export class SniProxy {
  private askServer: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private readonly relays = new Set<number>();

  constructor(
    private readonly bind: string,
    private readonly hooks: ProxyHooks,
  ) {}

  /** The listener for connections to bare addresses that `ask` decides; its port. */
  async startAsk(): Promise<number> {
    this.askServer = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => this.handleAsk(s));
    return listen(this.askServer, this.bind);
  }

  close(): void {
    this.askServer?.close();
    this.askServer = null;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    for (const id of this.relays) native().relayStop(id);
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
  }

  private handleAsk(client: net.Socket): void {
    if (this.sockets.size >= MAX_CLIENTS * 2) return void client.resetAndDestroy();
    this.track(client);
    const fd = fdOf(client);
    const dst = fd !== null ? native().originalDst(fd) : null;
    if (dst === null || isFailure(dst) || dst.address === this.bind) return void client.resetAndDestroy();
    void this.hooks
      .askAddress(dst)
      .catch(() => 'not allowed')
      .then((verdict) => {
        if (verdict !== true) {
          this.hooks.refused({ host: null, address: dst.address, port: dst.port, reason: verdict });
          // The reset goes out in resetAndDestroy's close(2); then the connection's conntrack
          // entry goes too. Left to linger closed, a new connection from the same source port
          // would reopen it with its redirect to this listener instead of meeting the kernel's
          // refusal (should the delete fail, only that: the listener answers from the same refusal).
          const { remoteAddress, remotePort } = client;
          client.resetAndDestroy();
          if (remoteAddress && remotePort) native().conntrackForget(remoteAddress, remotePort, dst.address, dst.port);
          return;
        }
        this.connectOn(client, dst);
      });
  }

  /** Connects to `dst`, then hands both sockets to the kernel splice. */
  private connectOn(client: net.Socket, dst: { address: string; port: number }): void {
    if (client.destroyed) return;
    const up = net.connect({ port: dst.port, host: dst.address });
    this.track(up);
    up.once('error', () => client.resetAndDestroy());
    up.once('connect', () => {
      // From here the kernel moves the bytes (splice, addon/relay.cc); Node's handles close.
      const a = fdOf(client);
      const b = fdOf(up);
      if (a === null || b === null) return void (client.resetAndDestroy(), up.resetAndDestroy());
      const id = nextRelay++;
      this.relays.add(id);
      void native().spliceRelay(a, b, id).finally(() => this.relays.delete(id));
      client.destroy();
      up.destroy();
    });
  }
}
