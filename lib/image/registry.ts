import { HutchError } from '../errors.js';
import type { ImageStore } from './store.js';
import type { Image, ImageRecord, Progress } from './types.js';

interface RegistryOptions {
  insecure?: boolean;
  auth?: { username: string; password: string };
  onProgress?: (p: Progress) => void;
}

export async function pull(_store: ImageStore, ref: string, _o: RegistryOptions): Promise<Image> {
  throw new HutchError('EUNSUPPORTED', `pull ${ref}: registry pull is not implemented yet`);
}

export async function push(_store: ImageStore, _rec: ImageRecord, ref: string, _o: RegistryOptions): Promise<void> {
  throw new HutchError('EUNSUPPORTED', `push ${ref}: registry push is not implemented yet`);
}
