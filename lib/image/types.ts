/** An image in the store (API.md, "Images"). */
export interface Image {
  /** `sha256:<hex>` of the image config JSON, as Docker's image ID. */
  id: string;
  tags: string[];
  /** Diff ids (`sha256:<hex>` of each uncompressed layer tar), bottom first. */
  layers: string[];
  config: ImageConfig;
  /** Bytes of file data in the extracted layers. */
  sizeBytes: number;
}

/** The sandbox defaults an image carries. */
export interface ImageConfig {
  env: string[];
  cmd?: string[];
  entrypoint?: string[];
  workingDir?: string;
  user?: string;
  exposedPorts?: number[];
}

export interface Progress {
  phase: string;
  current: number;
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
