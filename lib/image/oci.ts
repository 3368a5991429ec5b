import { DEFAULT_PATH as CONVENTIONAL_PATH } from '../conventions.js';
import { HutchError } from '../errors.js';
import type { Compression } from './blob.js';
import { MEDIA, type ImageConfig } from './types.js';

/** The `Env` entry of an image that sets no PATH (lib/conventions.ts). */
export const DEFAULT_PATH = `PATH=${CONVENTIONAL_PATH}`;

/** The OCI name of this host's architecture. */
export function hostArch(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', ia32: '386', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

export const INDEX_TYPES = new Set<string>([MEDIA.ociIndex, MEDIA.dockerList]);
export const MANIFEST_TYPES = new Set<string>([MEDIA.ociManifest, MEDIA.dockerManifest]);
export const CONFIG_TYPES = new Set<string>([MEDIA.ociConfig, MEDIA.dockerConfig]);

/** Compression of a layer by its media type; EBADIMAGE for a type that is not a layer hutch can unpack. */
export function layerCompression(mediaType: unknown, what: string): Compression {
  switch (mediaType) {
    case MEDIA.ociLayer:
    case 'application/vnd.oci.image.layer.nondistributable.v1.tar':
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return 'none';
    case MEDIA.ociLayerGzip:
    case MEDIA.dockerLayer:
    case 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip':
    case 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip':
      return 'gzip';
    case MEDIA.ociLayerZstd:
    case 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd':
      return 'zstd';
    default:
      throw new HutchError('EBADIMAGE', `${what}: media type ${JSON.stringify(mediaType)} is not an image layer`);
  }
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

export function descriptor(value: unknown, what: string): Descriptor {
  const v = value as Record<string, unknown> | null;
  if (typeof v !== 'object' || v === null || typeof v.digest !== 'string' || typeof v.size !== 'number' || !Number.isSafeInteger(v.size) || v.size < 0) {
    throw new HutchError('EBADIMAGE', `${what}: not a descriptor (digest, size)`);
  }
  return { mediaType: typeof v.mediaType === 'string' ? v.mediaType : '', digest: v.digest, size: v.size, platform: v.platform as Descriptor['platform'], annotations: v.annotations as Record<string, string> };
}

/**
 * Picks the manifest for this host from an index: linux + this architecture, skipping
 * attestation manifests; the only entry when there is one.
 */
export function pickManifest(index: unknown, what: string): Descriptor {
  const list = (index as { manifests?: unknown })?.manifests;
  if (!Array.isArray(list) || list.length === 0) throw new HutchError('EBADIMAGE', `${what}: index lists no manifests`);
  const descs = list.map((m, i) => descriptor(m, `${what} manifests[${i}]`));
  const arch = hostArch();
  const usable = descs.filter((d) => d.annotations?.['vnd.docker.reference.type'] !== 'attestation-manifest');
  const match = usable.find((d) => d.platform?.os === 'linux' && d.platform.architecture === arch);
  if (match) return match;
  const unplatformed = usable.filter((d) => !d.platform);
  if (unplatformed.length >= 1) return unplatformed[0]!;
  if (usable.length === 1 && descs.length === 1) return usable[0]!;
  const have = usable.map((d) => `${d.platform?.os}/${d.platform?.architecture}`).join(', ');
  throw new HutchError('EBADIMAGE', `${what}: no manifest for linux/${arch} (has ${have})`);
}

function strings(v: unknown, field: string, what: string): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
    throw new HutchError('EBADIMAGE', `${what}: config.${field} is not a list of strings`);
  }
  return v as string[];
}

/** The sandbox defaults from an OCI/Docker image config. */
export function toImageConfig(config: unknown, what: string): ImageConfig {
  const c = ((config as { config?: unknown })?.config ?? {}) as Record<string, unknown>;
  if (typeof c !== 'object') throw new HutchError('EBADIMAGE', `${what}: config is not an object`);
  const out: ImageConfig = { env: strings(c.Env, 'Env', what) ?? [] };
  const cmd = strings(c.Cmd, 'Cmd', what);
  if (cmd) out.cmd = cmd;
  const ep = strings(c.Entrypoint, 'Entrypoint', what);
  if (ep) out.entrypoint = ep;
  if (typeof c.WorkingDir === 'string' && c.WorkingDir !== '') out.workingDir = c.WorkingDir;
  if (typeof c.User === 'string' && c.User !== '') out.user = c.User;
  if (c.ExposedPorts && typeof c.ExposedPorts === 'object') {
    const ports = Object.keys(c.ExposedPorts)
      .map((k) => Number.parseInt(k, 10))
      .filter((n) => Number.isInteger(n) && n > 0 && n < 65536);
    if (ports.length > 0) out.exposedPorts = [...new Set(ports)].sort((a, b) => a - b);
  }
  return out;
}

/** The diff ids an image config lists. */
export function diffIds(config: unknown, what: string): string[] {
  const ids = (config as { rootfs?: { diff_ids?: unknown } })?.rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((s) => typeof s === 'string')) {
    throw new HutchError('EBADIMAGE', `${what}: config has no rootfs.diff_ids`);
  }
  return ids as string[];
}

/** A config for an image hutch makes itself (a rootfs tarball, the builtins). */
export function synthConfig(diffIdList: string[], config: { Env: string[]; Cmd?: string[] }): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: hostArch(),
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: diffIdList },
    }),
  );
}
