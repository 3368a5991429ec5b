/**
 * What the parts of the image store (records, gc, operations, import, builtin, registry,
 * commit, build, view) need of it: the {@link ImageStore} façade passes itself as this, so the
 * parts never import the façade back (issue 14: no import cycle, type-only included).
 */
import type { StoreLock } from './lock.js';
import type { ExtractLimits, LayerStats } from './tar.js';
import type { BlobRef, Image, ImageConfig, ImageRecord } from './types.js';

/** A private work directory of one import (tmp/op-...): operations.ts makes it. @internal */
export interface Op {
  readonly dir: string;
  /** Keeps layers/<hex> from being pruned until the op ends; true when the layer exists. */
  pin(hex: string): Promise<boolean>;
  close(): Promise<void>;
}

/** One layer of an image ready to be committed. @internal */
export interface PendingLayer {
  diffHex: string;
  blob: BlobRef;
  /** The blob as received, in the op dir; null when the store has it already. */
  blobFile: string | null;
  /** The extracted tree, in the op dir; null when layers/<diffHex> already exists. */
  tree: string | null;
  stats: LayerStats | null;
}

/** An image ready to be committed (ImageStore.commit). @internal */
export interface PendingImage {
  configBytes: Buffer;
  configDigest: string;
  configMediaType: string;
  config: ImageConfig;
  layers: PendingLayer[];
  tags: string[];
  hostBinds: string[];
  builtin?: string;
}

/** The store as its parts see it (an ImageStore). @internal */
export interface StoreContext {
  readonly root: string;
  readonly limits: ExtractLimits;
  readonly lock: StoreLock;
  path(...parts: string[]): string;
  /** The id shift of the store's files (a store owned by an unprivileged range), or null. */
  shift(): { uid: number; gid: number } | null;
  /** Creates the store's directories when missing. */
  ensure(): void;
  writeJson(target: string, value: unknown): Promise<void>;
  readTags(): Promise<Record<string, string>>;
  readRecord(hex: string): Promise<ImageRecord | undefined>;
  toImage(rec: ImageRecord, tags: Record<string, string>): Image;
  hasLayer(hex: string): boolean;
  beginOp(): Promise<Op>;
  commit(op: Op, p: PendingImage): Promise<Image>;
  checkTag(tag: unknown): asserts tag is string;
  get(ref: string): Promise<Image>;
  tag(image: Image | string, tag: string): Promise<void>;
  remove(ref: string): Promise<void>;
}
