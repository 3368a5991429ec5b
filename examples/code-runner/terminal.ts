/**
 * The code runner's terminal: `GET /terminal` is a page with xterm.js (served from
 * node_modules, nothing from elsewhere); its WebSocket (`/terminal/ws`, the `ws` package) gets
 * one sandbox per connection with a shell on a pty. Keystrokes go in as binary frames, output
 * comes back as binary frames, `{"type":"resize","columns":C,"rows":R}` text frames resize the
 * pty. The sandbox is destroyed when the socket closes (the tab closed), when the shell exits,
 * and after `idleMs` without a keystroke.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { Sandbox, type Limits, type SandboxProcess } from '../../lib/index.js';

export interface TerminalOptions {
  /** Image of each terminal's sandbox. Default 'busybox'. */
  image?: string;
  /** The shell. Default ['sh']. */
  shell?: string[];
  limits?: Limits;
  /** Close a terminal after this long without input, ms. Default 10 minutes. */
  idleMs?: number;
  /** At most this many terminals at once; more are refused (close code 1013). Default 8. */
  maxTerminals?: number;
}

export interface Terminals {
  /** Serves GET /terminal and the xterm.js files; false when the request is not for it. */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  /** Takes the WebSocket upgrade of /terminal/ws; false when it is not for it. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  /** Open terminals now. */
  readonly count: number;
  /** Closes every terminal and destroys its sandbox. */
  close(): Promise<void>;
}

const require = createRequire(import.meta.url);

/** xterm.js's browser files, read once from node_modules. */
function xtermFiles(): Record<string, { type: string; body: Buffer }> {
  const js = require.resolve('@xterm/xterm/lib/xterm.js');
  const css = require.resolve('@xterm/xterm/css/xterm.css');
  return {
    '/xterm/xterm.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(js) },
    '/xterm/xterm.css': { type: 'text/css; charset=utf-8', body: readFileSync(css) },
  };
}

export const TERMINAL_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>hutch terminal</title>
<link rel="stylesheet" href="/xterm/xterm.css">
<style>
  html, body { margin: 0; height: 100%; background: #111; }
  #term { position: absolute; inset: 0; padding: 4px; }
  #status { position: fixed; right: 8px; bottom: 4px; color: #888; font: 12px system-ui, sans-serif; }
</style>
</head>
<body>
<div id="term"></div>
<div id="status">connecting</div>
<script src="/xterm/xterm.js"></script>
<script>
  const el = document.getElementById('term');
  const status = document.getElementById('status');
  const term = new Terminal({ cursorBlink: true, fontSize: 14 });
  term.open(el);
  // The size that fits the window, from the cell size xterm rendered (what its fit addon does).
  function fit() {
    const screen = term.element && term.element.querySelector('.xterm-screen');
    if (!screen || !screen.clientWidth || !screen.clientHeight) return;
    const cw = screen.clientWidth / term.cols, ch = screen.clientHeight / term.rows;
    const cols = Math.max(2, Math.floor((el.clientWidth - 8) / cw));
    const rows = Math.max(1, Math.floor((el.clientHeight - 8) / ch));
    if (cols !== term.cols || rows !== term.rows) term.resize(cols, rows);
  }
  fit();
  const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/terminal/ws?columns=' + term.cols + '&rows=' + term.rows);
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  ws.onopen = () => { status.textContent = 'connected'; term.focus(); };
  ws.onmessage = (e) => term.write(new Uint8Array(e.data));
  ws.onclose = (e) => { status.textContent = 'closed' + (e.reason ? ': ' + e.reason : ''); };
  term.onData((d) => { if (ws.readyState === 1) ws.send(enc.encode(d)); });
  term.onResize(({ cols, rows }) => { if (ws.readyState === 1) ws.send(JSON.stringify({ type: 'resize', columns: cols, rows })); });
  window.addEventListener('resize', fit);
  window.hutchTerm = term;
  window.hutchWs = ws;
  // For the bench: sends s as keystrokes, resolves with the ms until output holding it came back.
  window.hutchProbe = (s) => new Promise((resolve) => {
    const t0 = performance.now(), dec = new TextDecoder();
    const listener = (e) => { if (dec.decode(e.data).includes(s)) { ws.removeEventListener('message', listener); resolve(performance.now() - t0); } };
    ws.addEventListener('message', listener);
    ws.send(enc.encode(s));
  });
</script>
</body>
</html>
`;

export function createTerminals(options: TerminalOptions = {}): Terminals {
  const idleMs = options.idleMs ?? 10 * 60_000;
  const max = options.maxTerminals ?? 8;
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  const open = new Set<Promise<void>>();
  let files: ReturnType<typeof xtermFiles> | undefined;

  /** One terminal: its sandbox lives exactly as long as the socket. */
  async function serve(ws: WebSocket, size: { columns: number; rows: number }): Promise<void> {
    let sb: Sandbox | undefined;
    let p: SandboxProcess | undefined;
    let idle: NodeJS.Timeout | undefined;
    const closed = new Promise<void>((r) => ws.once('close', () => r()));
    const bump = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => ws.close(4000, 'idle timeout'), idleMs);
    };
    try {
      sb = await Sandbox.create({ image: options.image ?? 'busybox', limits: options.limits ?? { memory: '256MiB', pids: 64 }, env: { HOME: '/root' } });
      if (ws.readyState !== ws.OPEN) return;
      const proc = sb.spawn(options.shell ?? ['sh'], { tty: size, cwd: '/' });
      p = proc;
      bump();
      proc.stdout.on('data', (b: Buffer) => {
        ws.send(b);
        // Backpressure: a slow browser stops the pty's reader, then the shell.
        if (ws.bufferedAmount > 1 << 20 && !proc.stdout.isPaused()) {
          proc.stdout.pause();
          const wait = (): void => {
            if (ws.readyState !== ws.OPEN) return;
            if (ws.bufferedAmount > 1 << 18) setTimeout(wait, 10);
            else proc.stdout.resume();
          };
          wait();
        }
      });
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        bump();
        if (isBinary) return void proc.stdin.write(data);
        try {
          const m = JSON.parse(data.toString()) as { type?: string; columns?: number; rows?: number };
          if (m.type === 'resize') proc.resize(Number(m.columns), Number(m.rows));
        } catch {
          ws.close(1003, 'bad control message');
        }
      });
      void proc.result.then(
        (r) => ws.close(1000, `exited ${r.exitCode ?? r.signal}`),
        () => ws.close(1011, 'the shell could not start'),
      );
      await closed;
    } catch (e) {
      console.error('terminal:', e);
      ws.close(1011, 'no sandbox');
    } finally {
      clearTimeout(idle);
      p?.kill('SIGKILL');
      await sb?.destroy().catch((e: unknown) => console.error('terminal: destroy:', e));
    }
  }

  return {
    handle(req, res) {
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      if (req.method !== 'GET') return false;
      if (path === '/terminal') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(TERMINAL_PAGE);
        return true;
      }
      files ??= xtermFiles();
      const f = files[path];
      if (!f) return false;
      res.writeHead(200, { 'content-type': f.type, 'content-length': String(f.body.length) });
      res.end(f.body);
      return true;
    },
    upgrade(req, socket, head) {
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (url.pathname !== '/terminal/ws') return false;
      const dim = (k: string, d: number): number => {
        const n = Number(url.searchParams.get(k) ?? d);
        return Number.isInteger(n) && n >= 1 && n <= 1000 ? n : d;
      };
      wss.handleUpgrade(req, socket, head, (ws) => {
        if (open.size >= max) return ws.close(1013, 'too many terminals; try again later');
        const t = serve(ws, { columns: dim('columns', 80), rows: dim('rows', 24) });
        open.add(t);
        void t.finally(() => open.delete(t));
      });
      return true;
    },
    get count() {
      return open.size;
    },
    async close() {
      for (const ws of wss.clients) ws.close(1001, 'the server is closing');
      await Promise.allSettled([...open]);
      wss.close();
    },
  };
}
