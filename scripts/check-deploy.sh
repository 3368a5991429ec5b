#!/bin/sh
# Checks deploy/ without a cluster (none is reachable from CI):
# - every document of deploy/kubernetes/*.yaml parses (the `yaml` package), is a kind the
#   check knows, and validates against the Kubernetes OpenAPI schema (kubernetes-models'
#   validate(): types, enums, required fields);
# - the same objects type-check as object literals against kubernetes-models' TypeScript
#   interfaces (tsc --strict), which rejects a field the API does not have (a misspelt
#   `procMount` would be silently dropped by the API server, and by the schema check);
# - what docs/kubernetes.md promises holds: hostUsers: false, a Localhost seccomp profile
#   that exists in deploy/seccomp and parses, procMount: Unmasked, capabilities dropped but
#   SETUID/SETGID/SETFCAP/CHOWN/FOWNER/DAC_OVERRIDE/SYS_PTRACE, no privilege escalation, probes on a path the code runner serves,
#   a PodDisruptionBudget and an autoscaler selecting the Deployment.
# The two packages are installed into a temporary directory (pinned versions), not into the
# project. Usage: scripts/check-deploy.sh
set -eu
cd "$(dirname "$0")/.."
repo=$(pwd)
tmp=$(mktemp -d /tmp/hutch-check-deploy.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
printf '{"name":"check-deploy","private":true,"type":"module"}\n' >package.json
npm install --no-audit --no-fund --silent kubernetes-models@4.5.1 yaml@2.8.1 >/dev/null
cat >check.mjs <<'EOF'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

const repo = process.argv[2];
const dir = join(repo, 'deploy/kubernetes');
// kind -> [module path, class/interface name]
const KINDS = {
  'apps/v1 Deployment': ['apps/v1/Deployment', 'Deployment'],
  'v1 Service': ['v1/Service', 'Service'],
  'policy/v1 PodDisruptionBudget': ['policy/v1/PodDisruptionBudget', 'PodDisruptionBudget'],
  'autoscaling/v2 HorizontalPodAutoscaler': ['autoscaling/v2/HorizontalPodAutoscaler', 'HorizontalPodAutoscaler'],
  'node.k8s.io/v1 RuntimeClass': ['node.k8s.io/v1/RuntimeClass', 'RuntimeClass'],
};
const problems = [];
const objects = [];
for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
  if (file === 'kustomization.yaml') continue;
  for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
    if (doc.errors.length) { problems.push(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`); continue; }
    const obj = doc.toJS();
    if (obj == null) continue;
    const key = `${obj.apiVersion} ${obj.kind}`;
    if (!KINDS[key]) { problems.push(`${file}: unknown kind ${key}`); continue; }
    const [mod, cls] = KINDS[key];
    const Model = (await import(`kubernetes-models/${mod}`))[cls];
    try { new Model(obj).validate(); } catch (e) { problems.push(`${file} (${key}): ${e.message}`); }
    objects.push({ file, key, mod, cls, obj });
  }
}
// The kustomization lists every file.
const kust = parseAllDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'))[0].toJS();
for (const f of new Set(objects.map((o) => o.file))) if (!kust.resources.includes(f)) problems.push(`kustomization.yaml lacks ${f}`);

// Object literals for tsc: excess properties are errors there.
const ts = [];
objects.forEach((o, i) => {
  ts.push(`import type { I${o.cls} as T${i} } from 'kubernetes-models/${o.mod}';`);
});
objects.forEach((o, i) => ts.push(`export const o${i}: T${i} = ${JSON.stringify(o.obj, null, 1)}; // ${o.file}`));
writeFileSync('objects.ts', ts.join('\n') + '\n');

// What docs/kubernetes.md promises.
const by = (k) => objects.filter((o) => o.key === k).map((o) => o.obj);
const [dep] = by('apps/v1 Deployment');
const need = (cond, what) => { if (!cond) problems.push(`deployment.yaml: ${what}`); };
if (!dep) problems.push('no Deployment');
else {
  const pod = dep.spec.template.spec;
  need(pod.hostUsers === false, 'spec.template.spec.hostUsers must be false');
  const sp = pod.securityContext?.seccompProfile;
  need(sp?.type === 'Localhost' && sp.localhostProfile === 'profiles/hutch.json', 'seccompProfile must be Localhost profiles/hutch.json');
  const prof = JSON.parse(readFileSync(join(repo, 'deploy/seccomp/hutch.json'), 'utf8'));
  const allowed = new Set(prof.syscalls.filter((s) => s.action === 'SCMP_ACT_ALLOW' && !s.args).flatMap((s) => s.names));
  for (const s of ['clone', 'clone3', 'unshare', 'setns', 'sethostname', 'mount', 'pivot_root', 'fsopen', 'open_tree', 'mount_setattr', 'seccomp', 'socket'])
    if (!allowed.has(s)) problems.push(`deploy/seccomp/hutch.json does not allow ${s}`);
  for (const s of ['kexec_load', 'init_module', 'bpf', 'perf_event_open', 'open_by_handle_at'])
    if (allowed.has(s)) problems.push(`deploy/seccomp/hutch.json allows ${s}`);
  const service = readFileSync(join(repo, 'examples/code-runner/service.ts'), 'utf8');
  for (const c of pod.containers) {
    const sc = c.securityContext ?? {};
    need(sc.procMount === 'Unmasked', `${c.name}: procMount must be Unmasked`);
    need(sc.allowPrivilegeEscalation === false, `${c.name}: allowPrivilegeEscalation must be false`);
    need(sc.privileged !== true, `${c.name}: must not be privileged`);
    need(JSON.stringify(sc.capabilities?.drop) === '["ALL"]', `${c.name}: capabilities.drop must be [ALL]`);
    need(JSON.stringify([...(sc.capabilities?.add ?? [])].sort()) === '["CHOWN","DAC_OVERRIDE","FOWNER","SETFCAP","SETGID","SETUID","SYS_PTRACE"]', `${c.name}: capabilities.add must be SETUID, SETGID, SETFCAP, CHOWN, FOWNER, DAC_OVERRIDE, SYS_PTRACE`);
    need(c.resources?.requests && c.resources?.limits, `${c.name}: resources.requests and limits`);
    for (const p of ['readinessProbe', 'livenessProbe']) {
      const path = c[p]?.httpGet?.path;
      need(path && service.includes(`url.pathname === '${path}'`), `${c.name}: ${p} must get a path the code runner serves (${path})`);
    }
    const mounts = new Set((c.volumeMounts ?? []).map((m) => m.mountPath));
    const root = c.env?.find((e) => e.name === 'HUTCH_ROOT')?.value;
    need(root && mounts.has(root), `${c.name}: HUTCH_ROOT must be a mounted volume (not the overlay root)`);
  }
  const sel = JSON.stringify(dep.spec.selector.matchLabels);
  const [pdb] = by('policy/v1 PodDisruptionBudget');
  need(pdb && JSON.stringify(pdb.spec.selector.matchLabels) === sel, 'a PodDisruptionBudget selecting the Deployment');
  const [hpa] = by('autoscaling/v2 HorizontalPodAutoscaler');
  need(hpa && hpa.spec.scaleTargetRef.kind === 'Deployment' && hpa.spec.scaleTargetRef.name === dep.metadata.name, 'an autoscaler on the Deployment');
  const [rc] = by('node.k8s.io/v1 RuntimeClass');
  need(rc && pod.runtimeClassName === rc.metadata.name, 'runtimeClassName naming the RuntimeClass (a writable cgroup namespace)');
  need(dep.spec.template.metadata.annotations?.['io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw'] === 'true', 'the CRI-O writable-cgroup annotation');
  need(hpa && hpa.spec.minReplicas >= 2 && pdb?.spec.maxUnavailable === 1, 'minReplicas >= 2 with a PDB of maxUnavailable 1 (a drain never takes the last pod)');
}
console.log(`   ${objects.length} objects: ${objects.map((o) => `${o.obj.kind}/${o.obj.metadata.name}`).join(', ')}`);
if (problems.length) { console.error(problems.map((p) => `check-deploy: ${p}`).join('\n')); process.exit(1); }
EOF
echo "== deploy/kubernetes: parse, OpenAPI schema, invariants"
node check.mjs "$repo"
echo "== deploy/kubernetes: no field the API lacks (tsc --strict against kubernetes-models' types)"
"$repo/node_modules/.bin/tsc" --noEmit --strict --skipLibCheck --module nodenext --moduleResolution nodenext \
  --target es2022 objects.ts
echo "check-deploy: PASS"
