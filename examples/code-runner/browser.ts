/**
 * Drives Debian's headless chromium through the Chrome DevTools Protocol with nothing but
 * Node's own modules (Node 20 has no WebSocket without a flag, so a minimal client is here),
 * to check the code runner's page as a person would use it: load it, pick a language, type
 * a program, click Run, read the output pane.
 *
 *   node dist/examples/code-runner/browser.js http://127.0.0.1:8080/ [--screenshot out.png]
 *
 * Chromium runs headless with no sandbox of its own (we are root), no GPU, and no network
 * beyond loopback: background networking, component updates and sync are off, and every
 * host name but localhost and 127.0.0.1 resolves to nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';

/** The chromium flags: headless, no GPU, nothing reaching out. */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-extensions',
  '--disable-dev-shm-usage',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1',
  '--window-size=1000,1000',
  '--remote-debugging-address=127.0.0.1',
  '--remote-debugging-port=0',
];

/** A WebSocket client for one CDP connection: text frames, client-masked, no extensions. */
class WsClient {
  private buf = Buffer.alloc(0);
  private parts: Buffer[] = [];
  onMessage: (text: string) => void = () => undefined;
  onClose: () => void = () => undefined;

  private constructor(private readonly socket: Duplex) {
    socket.on('data', (d: Buffer) => this.read(d));
    socket.on('close', () => this.onClose());
    socket.on('error', () => undefined);
  }

  static connect(url: string): Promise<WsClient> {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      const req = request({
        host: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') },
      });
      req.on('upgrade', (_res, socket, head) => {
        const ws = new WsClient(socket);
        if (head.length) ws.read(head);
        resolve(ws);
      });
      req.on('response', (res) => reject(new Error(`no WebSocket upgrade from ${url}: HTTP ${res.statusCode}`)));
      req.on('error', reject);
      req.end();
    });
  }

  send(text: string): void {
    const payload = Buffer.from(text);
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x81, 0x80 | n]) : n < 65536 ? Buffer.alloc(4) : Buffer.alloc(10);
    if (n >= 126 && n < 65536) {
      head[0] = 0x81;
      head[1] = 0x80 | 126;
      head.writeUInt16BE(n, 2);
    } else if (n >= 65536) {
      head[0] = 0x81;
      head[1] = 0x80 | 127;
      head.writeBigUInt64BE(BigInt(n), 2);
    }
    const mask = randomBytes(4);
    for (let i = 0; i < n; i++) payload[i] = payload[i]! ^ mask[i & 3]!;
    this.socket.write(Buffer.concat([head, mask, payload]));
  }

  private read(d: Buffer): void {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      if (this.buf.length < 2) return;
      const fin = (this.buf[0]! & 0x80) !== 0;
      const op = this.buf[0]! & 0x0f;
      let len = this.buf[1]! & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) return;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) return;
        len = Number(this.buf.readBigUInt64BE(2));
        off = 10;
      }
      if (this.buf.length < off + len) return; // servers do not mask
      const payload = this.buf.subarray(off, off + len);
      this.buf = this.buf.subarray(off + len);
      if (op === 0x8) {
        this.socket.end();
        return;
      }
      if (op === 0x1 || op === 0x0) {
        this.parts.push(Buffer.from(payload));
        if (fin) {
          const text = Buffer.concat(this.parts).toString('utf8');
          this.parts = [];
          this.onMessage(text);
        }
      }
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** A CDP session on one page target. */
export class Cdp {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly listeners = new Map<string, ((params: unknown) => void)[]>();
  private sessionId: string | undefined;

  private constructor(private readonly ws: WsClient) {
    ws.onMessage = (text) => {
      const m = JSON.parse(text) as { id?: number; result?: unknown; error?: { message: string }; method?: string; params?: unknown };
      if (m.id !== undefined) {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        if (m.error) p?.reject(new Error(m.error.message));
        else p?.resolve(m.result);
      } else if (m.method) {
        for (const l of this.listeners.get(m.method) ?? []) l(m.params);
      }
    };
    ws.onClose = () => {
      for (const p of this.pending.values()) p.reject(new Error('the DevTools connection closed'));
      this.pending.clear();
    };
  }

  /** Connects to the browser and attaches to its first page (flattened session). */
  static async attach(browserWsUrl: string): Promise<Cdp> {
    const cdp = new Cdp(await WsClient.connect(browserWsUrl));
    const { targetInfos } = (await cdp.send('Target.getTargets')) as { targetInfos: { targetId: string; type: string }[] };
    let page = targetInfos.find((t) => t.type === 'page');
    if (!page) page = { targetId: ((await cdp.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string }).targetId, type: 'page' };
    const { sessionId } = (await cdp.send('Target.attachToTarget', { targetId: page.targetId, flatten: true })) as { sessionId: string };
    cdp.sessionId = sessionId;
    return cdp;
  }

  /** A new tab (its own target) at about:blank, attached; closeTab() closes it as a person would. */
  static async openTab(browserWsUrl: string): Promise<Cdp> {
    const cdp = new Cdp(await WsClient.connect(browserWsUrl));
    const { targetId } = (await cdp.send('Target.createTarget', { url: 'about:blank' })) as { targetId: string };
    const { sessionId } = (await cdp.send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string };
    cdp.sessionId = sessionId;
    cdp.targetId = targetId;
    return cdp;
  }

  private targetId: string | undefined;

  /** Closes this tab (Target.closeTarget): the page's sockets close with it. */
  async closeTab(): Promise<void> {
    if (this.targetId) await this.send('Target.closeTarget', { targetId: this.targetId }, true);
    this.close();
  }

  send(method: string, params: Record<string, unknown> = {}, browser = false): Promise<unknown> {
    const id = this.nextId++;
    const msg: Record<string, unknown> = { id, method, params };
    if (this.sessionId && !browser) msg.sessionId = this.sessionId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify(msg));
    });
  }

  once(event: string, timeoutMs = 15_000): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const list = this.listeners.get(event) ?? [];
      const t = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
      const l = (p: unknown): void => {
        clearTimeout(t);
        list.splice(list.indexOf(l), 1);
        resolve(p);
      };
      list.push(l);
      this.listeners.set(event, list);
    });
  }

  /** Evaluates an expression in the page and returns its value. */
  async eval<T>(expression: string): Promise<T> {
    const r = (await this.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true })) as {
      result: { value?: T };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    };
    if (r.exceptionDetails) throw new Error(`in the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return r.result.value as T;
  }

  /** A real mouse click at the centre of the element matching `selector`. */
  async click(selector: string): Promise<void> {
    const box = await this.eval<{ x: number; y: number } | null>(
      `(() => { const e = document.querySelector(${JSON.stringify(selector)}); if (!e) return null; e.scrollIntoView(); const r = e.getBoundingClientRect(); return { x: r.left + r.width / 2, y: r.top + r.height / 2 }; })()`,
    );
    if (!box) throw new Error(`no element ${selector} on the page`);
    for (const type of ['mousePressed', 'mouseReleased']) {
      await this.send('Input.dispatchMouseEvent', { type, x: box.x, y: box.y, button: 'left', clickCount: 1 });
    }
  }

  /** Focuses a text field by clicking it, clears it, and types `text` into it. */
  async type(selector: string, text: string): Promise<void> {
    await this.click(selector);
    await this.eval(`document.querySelector(${JSON.stringify(selector)}).select()`);
    await this.send('Input.insertText', { text });
  }

  close(): void {
    this.ws.close();
  }
}

/** A headless chromium with a DevTools endpoint; `close()` kills it and removes its profile. */
export interface Browser {
  readonly process: ChildProcess;
  readonly wsUrl: string;
  close(): Promise<void>;
}

export async function launchChromium(binary = process.env.CHROMIUM ?? 'chromium', timeoutMs = 30_000): Promise<Browser> {
  const profile = mkdtempSync(join(tmpdir(), 'hutch-example-chromium-'));
  // Its own process group (detached): chromium's helpers (zygote, renderers) end with it.
  const child = spawn(binary, [...CHROMIUM_FLAGS, `--user-data-dir=${profile}`, 'about:blank'], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  const close = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      try {
        process.kill(-child.pid!, 'SIGKILL'); // the group this browser leads, nothing else
      } catch {
        child.kill('SIGKILL');
      }
      await gone;
    }
    // A helper may still be writing into the profile for a moment after the kill.
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 50 });
  };
  try {
    const wsUrl = await new Promise<string>((resolve, reject) => {
      let err = '';
      const t = setTimeout(() => reject(new Error(`chromium printed no DevTools URL within ${timeoutMs} ms:\n${err}`)), timeoutMs);
      child.once('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
      child.once('exit', (code, sig) => {
        clearTimeout(t);
        reject(new Error(`chromium exited (${code ?? sig}) before it listened:\n${err}`));
      });
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m) {
          clearTimeout(t);
          resolve(m[1]!);
        }
      });
    });
    child.stderr!.resume();
    return { process: child, wsUrl, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * The check: loads `url`, picks Python, types `source` (and `stdin`), clicks Run and waits
 * until the stdout pane is filled. Returns what the panes show.
 */
export async function runInPage(
  browser: Browser,
  url: string,
  program: { language: string; source: string; stdin?: string },
  options: { timeoutMs?: number; screenshot?: string } = {},
): Promise<{ stdout: string; stderr: string; status: string; usage: string }> {
  const cdp = await Cdp.attach(browser.wsUrl);
  try {
    await cdp.send('Page.enable');
    await cdp.send('Runtime.enable');
    const loaded = cdp.once('Page.loadEventFired');
    const nav = (await cdp.send('Page.navigate', { url })) as { errorText?: string };
    if (nav.errorText) throw new Error(`chromium could not load ${url}: ${nav.errorText}`);
    await loaded;
    await cdp.eval(`(() => { const s = document.querySelector('#language'); s.value = ${JSON.stringify(program.language)}; s.dispatchEvent(new Event('change')); })()`);
    await cdp.type('#source', program.source);
    if (program.stdin !== undefined) await cdp.type('#stdin', program.stdin);
    await cdp.click('#run');
    const deadline = Date.now() + (options.timeoutMs ?? 20_000);
    let panes = { stdout: '', stderr: '', status: '', usage: '' };
    for (;;) {
      panes = await cdp.eval<typeof panes>(`({ stdout: document.querySelector('#stdout').textContent, stderr: document.querySelector('#stderr').textContent, status: document.querySelector('#status').textContent, usage: document.querySelector('#usage').textContent })`);
      if (panes.status !== '' && panes.status !== 'running...') break;
      if (Date.now() > deadline) throw new Error(`the page showed no result within ${options.timeoutMs ?? 20_000} ms: ${JSON.stringify(panes)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    if (options.screenshot) {
      const { data } = (await cdp.send('Page.captureScreenshot', { format: 'png' })) as { data: string };
      writeFileSync(options.screenshot, Buffer.from(data, 'base64'));
    }
    return panes;
  } finally {
    cdp.close();
  }
}

/** The terminal page (`/terminal`) in a tab of its own: type into xterm.js, read its screen. */
export class TerminalTab {
  private constructor(readonly cdp: Cdp) {}

  /** Opens `url` (the /terminal page) in a new tab and waits until its socket is open. */
  static async open(browser: Browser, url: string, timeoutMs = 30_000): Promise<TerminalTab> {
    const cdp = await Cdp.openTab(browser.wsUrl);
    const tab = new TerminalTab(cdp);
    await cdp.send('Page.enable');
    await cdp.send('Page.bringToFront'); // a background tab's timers are throttled
    await cdp.send('Runtime.enable');
    const loaded = cdp.once('Page.loadEventFired');
    const nav = (await cdp.send('Page.navigate', { url })) as { errorText?: string };
    if (nav.errorText) throw new Error(`chromium could not load ${url}: ${nav.errorText}`);
    await loaded;
    await tab.waitFor(() => tab.status(), (s) => s === 'connected', timeoutMs);
    return tab;
  }

  status(): Promise<string> {
    return this.cdp.eval<string>(`document.querySelector('#status').textContent`);
  }

  /** The terminal's screen, its lines trimmed, as text. */
  screen(): Promise<string> {
    return this.cdp.eval<string>(
      `(() => { const b = window.hutchTerm.buffer.active, out = []; for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true)); return out.join('\\n').replace(/\\n+$/, ''); })()`,
    );
  }

  /** Types into the terminal as keystrokes (xterm's textarea, as a person's typing reaches it). */
  async type(text: string): Promise<void> {
    await this.cdp.eval(`window.hutchTerm.focus()`);
    for (const ch of text) {
      const key = ch === '\r' ? { key: 'Enter', code: 'Enter', windowsVirtualKeyCode: 13 } : { key: ch };
      await this.cdp.send('Input.dispatchKeyEvent', { type: 'keyDown', text: ch, ...key });
      await this.cdp.send('Input.dispatchKeyEvent', { type: 'keyUp', ...key });
    }
  }

  /** Resizes the tab's viewport: the page fits the terminal to it and tells the server. */
  async setViewport(width: number, height: number): Promise<void> {
    await this.cdp.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: 1, mobile: false });
  }

  /** Polls `get` until `ok`, or throws with the last value. */
  async waitFor<T>(get: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await get();
      if (ok(v)) return v;
      if (Date.now() > deadline) throw new Error(`the terminal page did not get there within ${timeoutMs} ms: ${JSON.stringify(v)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Closes the tab. */
  close(): Promise<void> {
    return this.cdp.closeTab();
  }
}

// As a command: node dist/examples/code-runner/browser.js URL [--screenshot FILE]
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const url = process.argv[2];
  if (!url) {
    console.error('usage: node dist/examples/code-runner/browser.js http://127.0.0.1:8080/ [--screenshot out.png]');
    process.exit(2);
  }
  const i = process.argv.indexOf('--screenshot');
  const browser = await launchChromium();
  try {
    const panes = await runInPage(browser, url, { language: 'python', source: 'import sys\nprint("hello from the page,", sys.stdin.read())\n', stdin: 'stdin' }, i > 0 ? { screenshot: process.argv[i + 1]! } : {});
    console.log(JSON.stringify(panes, null, 2));
  } finally {
    await browser.close();
  }
}
