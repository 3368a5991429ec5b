/* The new root of a template fork (addon/zygote/mounts.c): used by helper.c only. */
#ifndef HUTCH_ZYGOTE_MOUNTS_H
#define HUTCH_ZYGOTE_MOUNTS_H

#pragma GCC visibility push(hidden) /* not part of libhutch-zygote.so's interface */

int fsconfig_str(int fs, const char *k, const char *v);
/* A path inside the new root, as if root were "/" (no escape through symlinks or ".."). */
int open_in(int root, const char *rel, int flags);
int move_onto(int tree, int target);
/* The fork's root: a scratch tmpfs of `scratch_size` over the template's /proc with upper/
 * and work/ (or in `disk`, the host's directory on the store's disk, when >= 0), the `n`
 * layer trees attached in it, overlay over them (one "lowerdir" list when `lower_list`:
 * before 6.8) attached at its "root"; every fd given is consumed. Returns the overlay's mount
 * with *sfd (the scratch) and *holder (where upper/ is: the scratch or the disk's directory),
 * or -1 with errno and *where naming the step. */
int make_root(const char *scratch_size, int disk, const int *layers, int n, int lower_list, int *sfd, int *holder,
              const char **where);
/* A new filesystem at `target` (below `at`, which is a new-root fd or a directory fd). */
int fs_at(int at, const char *type, const char *target, unsigned attrs, const char *k1, const char *v1, const char *k2,
          const char *v2, int *out);
/* Reads /proc/self/mountinfo (the template's mounts) for carry_mounts, before the namespace changes. */
int read_mountinfo(void);
/* The template's own mounts directly on its root, carried onto `root`; not /proc, /dev nor `skip`. */
int carry_mounts(int root, const char *skip, const char **where);
/* A new /dev with /dev/shm of `shm_size` bytes. */
int make_dev(int root, const char *shm_size, const char **where);
/* Masked and read-only paths (lists ended by an empty string). */
int mask_and_readonly(int root, const char *masked, const char *ro, const char **where);
/* The task's mounts locked against it: a user namespace of its own (ids 1:1 onto the
 * template's) with a copy of its mount namespace. 0, or -1 with errno. */
int lock_mounts(void);

#pragma GCC visibility pop

#endif
