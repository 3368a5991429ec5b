/**
 * An image in an {@link ImageStore}: read-only layers and the defaults a sandbox takes from
 * it. Pass it (or any reference to it) as {@link SandboxOptions.image}.
 *
 * @example
 * ```ts
 * const store = ImageStore.default();
 * const img = await store.get('busybox');
 * console.log(img.id, img.tags, img.layers.length, img.sizeBytes);
 * const sb = await Sandbox.create({ image: img, store });
 * ```
 */
export interface Image {
  /** `sha256:<hex>` of the image config JSON, as Docker's image ID. */
  id: string;
  /** The tags that point at it, e.g. `['app:1.0']`; may be empty. */
  tags: string[];
  /** Diff ids (`sha256:<hex>` of each uncompressed layer tar), bottom first. */
  layers: string[];
  /** The sandbox defaults it carries (environment, command, working directory, user). */
  config: ImageConfig;
  /** Bytes of file data in the extracted layers. */
  sizeBytes: number;
}

/**
 * The sandbox defaults an image carries (the OCI / Docker image config's `Env`, `Cmd`, ...);
 * a sandbox's options override them.
 *
 * @example
 * ```ts
 * const { config } = await store.get('app:1.0');
 * console.log(config.env);                                 // ['PATH=/usr/bin:/bin', 'LANG=C.UTF-8']
 * console.log([...(config.entrypoint ?? []), ...(config.cmd ?? [])]); // what Sandbox.run runs without a command
 * ```
 */
export interface ImageConfig {
  /** `NAME=value` entries, under the sandbox's `env`; its `PATH` is the sandbox's PATH. */
  env: string[];
  /** Default arguments (Docker's `CMD`), appended to `entrypoint`. */
  cmd?: string[];
  /** Docker's `ENTRYPOINT`: what {@link Sandbox.run} runs (with `cmd`) when given no command. */
  entrypoint?: string[];
  /** Default working directory (absolute path inside); absent: `/`. */
  workingDir?: string;
  /** Default user: `'uid'`, `'uid:gid'` or a name in the image's /etc/passwd; absent: root (0). */
  user?: string;
  /** Ports the image says it listens on (Docker's `EXPOSE`); informational, nothing is published. */
  exposedPorts?: number[];
}

/**
 * Progress of a long store operation, passed to an `onProgress` callback of
 * {@link ImageStore.import}, {@link ImageStore.pull}, {@link ImageStore.push} or
 * {@link ImageStore.build}.
 *
 * @example
 * ```ts
 * await store.pull('alpine:3.20', {
 *   onProgress: (p) => console.log(p.phase, p.total ? `${Math.round((100 * p.current) / p.total)}%` : p.current),
 * });
 * ```
 */
export interface Progress {
  /**
   * What is being done, e.g. `'extract'`, `'verify'`, `'pull layer 2/3'`, `'push layer 1/2'`,
   * `'step'` or `'cached'` (builds). For display; the set may grow.
   */
  phase: string;
  /** Done so far: bytes for transfers and extraction, the instruction number for builds. */
  current: number;
  /** The whole, in the same unit as `current`, when known. */
  total?: number;
}

/** What a sandbox needs to mount an image (see ImageStore.resolve). */
export interface ResolvedImage {
  image: Image;
  /** `<root>/layers`: chdir here, then name the lowerdirs relative to it. */
  layersDir: string;
  /** Layer directory names (64 hex digits) inside layersDir, TOP FIRST, as overlay's lowerdir wants. */
  lowerdirs: string[];
  /** Host paths to bind read-only at the same path inside, over the overlay; [] except for `host`. */
  hostBinds: string[];
}

/** A blob as an OCI descriptor names it. */
export interface BlobRef {
  digest: string;
  size: number;
  mediaType: string;
}

/** images/<hex>.json */
export interface ImageRecord {
  schema: 1;
  id: string;
  layers: string[];
  config: ImageConfig;
  sizeBytes: number;
  hostBinds: string[];
  /** The config blob (blobs/sha256/<id hex>), kept for push. */
  configBlob: BlobRef;
  /** The layer blobs as received, parallel to `layers`, kept in blobs/ for push. */
  layerBlobs: BlobRef[];
  /** `busybox` or `host` for the generated images. */
  builtin?: string;
  created: string;
}

/** layerinfo/<hex>.json: kept outside layers/ so that layers/ holds only layer trees. */
export interface LayerInfo {
  diffId: string;
  sizeBytes: number;
  entries: number;
  created: string;
}

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;
