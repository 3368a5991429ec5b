/**
 * Network namespaces for the network tests: a stand-in sandbox (a process in new user + net
 * namespaces), and Node scripts run inside a netns. Traffic only between namespaces and links
 * the tests make, or loopback.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { startFakeSandbox } from './fake-sandbox.mjs';

export function sh(cmd: string): string {
  return execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });
}

/** Processes these helpers started; the tests kill them in afterAll. */
export const children: ChildProcess[] = [];

/** A stand-in for a sandbox: a process in new user + net namespaces, lo up. */
export async function fakeSandbox(): Promise<number> {
  const child = await startFakeSandbox();
  children.push(child);
  return child.pid!;
}

export function kill(pid: number): void {
  const c = children.find((x) => x.pid === pid);
  c?.kill('SIGKILL');
}

/** Runs a Node script inside the netns of `pid` (or a named netns); resolves with its stdout. */
export function inNetns(target: number | string, script: string, timeoutMs = 20_000): Promise<string> {
  const args = typeof target === 'number' ? ['nsenter', `--net=/proc/${target}/ns/net`] : ['ip', 'netns', 'exec', target];
  return new Promise((resolve, reject) => {
    const c = spawn(args[0]!, [...args.slice(1), process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d) => (out += d));
    c.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('close', (code) => {
      clearTimeout(t);
      if (code === 0) resolve(out.trim());
      else reject(new Error(`netns script failed (${code}): ${err}`));
    });
  });
}

/** Script: try a TCP connection, print 'ok' (and what the server said) or the error code. */
export function connectScript(host: string, port: number, timeoutMs = 1500): string {
  return `const s=require('net').connect(${port},'${host}');let d='';const t=setTimeout(()=>{console.log('timeout');process.exit(0)},${timeoutMs});
s.on('data',x=>d+=x);s.on('end',()=>{clearTimeout(t);console.log('ok '+d);process.exit(0)});s.on('error',e=>{clearTimeout(t);console.log(e.code);process.exit(0)});`;
}

/** A server inside a netns that answers every connection with `reply`; resolves once listening. */
export function serveInNetns(target: number | string, host: string, port: number, reply: string): Promise<ChildProcess> {
  const args = typeof target === 'number' ? ['nsenter', `--net=/proc/${target}/ns/net`] : ['ip', 'netns', 'exec', target];
  const script = `require('net').createServer(s=>{s.end('${reply}')}).listen(${port},'${host}',()=>console.log('ready'))`;
  return new Promise((resolve, reject) => {
    const c = spawn(args[0]!, [...args.slice(1), process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    let err = '';
    c.stderr.on('data', (d) => (err += d));
    c.stdout.on('data', (d) => {
      if (String(d).includes('ready')) resolve(c);
    });
    c.on('close', (code) => reject(new Error(`server ended (${code}): ${err}`)));
  });
}

/** A TCP port free on the host now (bound to 127.0.0.1:0, then closed). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}
