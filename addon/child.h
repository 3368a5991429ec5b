// Helpers of the setup sequence, called only from child.cc. Every function here runs in the
// child between clone and exec: async-signal-safe, no allocation, no exceptions, no locks.
// Each returns 0 or a negative errno; `*where` is set to the path that failed, if any.
#pragma once
#include "plan.h"
#include "steps.h"

[[noreturn]] void die_step(int err_fd, unsigned step, int err, const char *detail);

int overlay_begin_in_child(const plan &p, int *fs_out, const char **where);
int scratch_in_child(const plan &p, int persistent_fd, int *scratch_fd);
int overlay_finish_in_child(const plan &p, int fs, int scratch_fd, int mnt_fd, int parent_fd, int *root_fd,
                            const char **where);
int resolve_in_root(int root_fd, const char *rel, bool create, bool is_file, int *out_fd);
int binds_in_child(const plan &p, int root_fd, const char **where);
int proc_in_child(int root_fd);
int dev_in_child(const plan &p, int root_fd, const char **where);
int mask_in_child(const plan &p, int root_fd, const char **where);
int readonly_in_child(const plan &p, int root_fd, const char **where);
int pivot_root_in_child(int root_fd);
int loopback_up_in_child(void);
int setup_mount_ns_in_child(plan &p);
int lock_mounts_in_child(plan &p);
