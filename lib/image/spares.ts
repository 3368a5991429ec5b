/**
 * Spare owner records: this process's list of them per store (records.ts makes and reuses
 * them, gc.ts removes them). Apart from records.ts so that gc.ts needs nothing of it.
 */
import { rmSync } from 'node:fs';
import { perProcessLists } from '../host/lease.js';

/**
 * Spare owner records of this process, by store root: the dirs of ended sandboxes' records
 * (owner.json alone), moved out of sandboxes/ to `spare/rec-<pid>-<start>-<random>` for the
 * next markInUse. Where the store is on ext4 without a journal (this VM's `/`), every inode
 * allocated scans the group's bitmap past each inode freed in the last 30 s (find_inode_bit,
 * recently_deleted) and every unlink evicts the inode and discards its block: two inodes (the
 * dir and owner.json) per sandbox. A rename and an overwrite in place cost none of it.
 * A spare is not a record: remove() and prune read sandboxes/ only, so the image a spare's
 * owner.json still names is not held by it; a prune removes the spares of a dead owner (their
 * names carry it) and this process's own. Cleared in a forked child, which must not move the parent's files.
 */
export const spareRecordList = perProcessLists((dir) => rmSync(dir, { recursive: true, force: true }));
/** Spares kept per store. */
export const MAX_SPARE_RECORDS = 8;

/**
 * Forgets this process's spare records of the store at `root` and returns their paths, for a
 * prune to remove (it asks for the store as small as it can be). @internal
 */
export function takeSpareRecords(root: string): string[] {
  return spareRecordList(root)?.splice(0) ?? [];
}
