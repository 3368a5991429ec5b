/**
 * The page `GET /` serves: a textarea for the program, a language select, stdin, a Run
 * button and the output panes. Plain HTML and a few lines of script, no build step, nothing
 * loaded from elsewhere.
 */
export const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hutch code runner</title>
<style>
  :root { color-scheme: light dark; font-family: system-ui, sans-serif; }
  body { max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  p.lead { margin: 0 0 1rem; opacity: .75; }
  label { font-weight: 600; display: block; margin: .8rem 0 .3rem; }
  textarea, pre { font: 13px/1.4 ui-monospace, monospace; width: 100%; box-sizing: border-box; }
  textarea { padding: .5rem; border: 1px solid #8888; border-radius: 4px; }
  #source { height: 14rem; }
  #stdin { height: 3.5rem; }
  .row { display: flex; gap: .8rem; align-items: center; margin-top: .8rem; }
  button { font-size: 1rem; padding: .4rem 1.4rem; border-radius: 4px; border: 0; background: #2563eb; color: white; cursor: pointer; }
  button:disabled { opacity: .5; cursor: wait; }
  .panes { display: grid; grid-template-columns: 1fr 1fr; gap: .8rem; }
  pre { min-height: 6rem; max-height: 20rem; overflow: auto; margin: 0; padding: .5rem; border-radius: 4px; background: #8881; border: 1px solid #8884; white-space: pre-wrap; }
  #stderr { color: #c2410c; }
  #status { font-family: ui-monospace, monospace; font-size: 13px; }
</style>
</head>
<body>
<h1>hutch code runner</h1>
<p class="lead">Each run gets a fresh sandbox: its own namespaces, a copy-on-write root, memory, pids and time limits.</p>
<form id="form">
  <label for="source">Program</label>
  <textarea id="source" spellcheck="false"></textarea>
  <label for="stdin">Standard input</label>
  <textarea id="stdin" spellcheck="false"></textarea>
  <div class="row">
    <select id="language" aria-label="Language">
      <option value="python">Python 3</option>
      <option value="node">Node.js</option>
      <option value="sh">sh</option>
    </select>
    <label style="margin:0;font-weight:400">timeout <input id="timeout" type="number" min="100" step="100" value="5000" style="width:6rem"> ms</label>
    <button id="run" type="submit">Run</button>
    <span id="status" role="status"></span>
  </div>
</form>
<div class="panes">
  <div><label for="stdout">stdout</label><pre id="stdout"></pre></div>
  <div><label for="stderr">stderr</label><pre id="stderr"></pre></div>
</div>
<label for="usage">Usage</label>
<pre id="usage"></pre>
<script>
const samples = {
  python: 'import sys\\nname = sys.stdin.read().strip() or "world"\\nprint(f"hello, {name}")\\nprint(sum(i * i for i in range(10)))\\n',
  node: 'const name = require("fs").readFileSync(0, "utf8").trim() || "world";\\nconsole.log(\`hello, \${name}\`, process.version);\\n',
  sh: 'read name\\necho "hello, \${name:-world} from $(uname -n)"\\nid\\n',
};
const $ = (id) => document.getElementById(id);
let edited = false;
$('source').value = samples.python;
$('source').addEventListener('input', () => { edited = true; });
$('language').addEventListener('change', () => { if (!edited) $('source').value = samples[$('language').value]; });
$('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('run').disabled = true;
  $('status').textContent = 'running...';
  $('stdout').textContent = ''; $('stderr').textContent = ''; $('usage').textContent = '';
  try {
    const res = await fetch('/run', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ language: $('language').value, source: $('source').value, stdin: $('stdin').value, limits: { timeoutMs: Number($('timeout').value) } }),
    });
    const body = await res.json();
    if (!res.ok) {
      $('status').textContent = 'error ' + res.status + ' ' + body.error.code;
      $('stderr').textContent = body.error.message;
      return;
    }
    $('stdout').textContent = body.stdout;
    $('stderr').textContent = body.stderr;
    $('status').textContent = body.reason + (body.exitCode !== null ? ' ' + body.exitCode : ' ' + body.signal) + (body.truncated ? ' (output truncated)' : '');
    const u = body.usage;
    $('usage').textContent = 'wall ' + u.wallMs.toFixed(1) + ' ms, cpu ' + (u.cpuUserMs + u.cpuSystemMs).toFixed(1) + ' ms, peak memory ' + (u.memoryPeakBytes / 1048576).toFixed(1) + ' MiB, pids ' + u.pids + ', OOM kills ' + u.oomKills;
  } catch (e) {
    $('status').textContent = 'error';
    $('stderr').textContent = String(e);
  } finally {
    $('run').disabled = false;
  }
});
</script>
</body>
</html>
`;
