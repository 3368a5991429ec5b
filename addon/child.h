// Helpers of the setup sequence, called only from child.cc. Every function here runs in the
// child between clone and exec: async-signal-safe, no allocation, no exceptions, no locks.
// Each returns 0 or a negative errno; `*where` is set to the path that failed, if any.
#pragma once
#include "plan.h"
#include "steps.h"

[[noreturn]] void die_step(int err_fd, unsigned step, int err, const char *detail);

int scratch_in_child(const char *size, int *scratch_fd);
int overlay_begin_in_child(const plan &p, const plan_op &op, const char *names, int *fs_out, const char **where);
int overlay_finish_in_child(int fs, const char *legacy_data, const char *mountpoint, int scratch_fd, int mnt_fd,
                            int parent_fd, int *root_fd, const char **where);
int resolve_in_root(int root_fd, const char *rel, bool create, bool is_file, int *out_fd);
int bind_in_child(int root_fd, const char *target, int tree_fd, bool is_file);
int bind_path_in_child(int root_fd, const char *target, const char *source, unsigned attrs, bool is_file);
int mount_in_child(int root_fd, const char *fstype, const char *target, unsigned attrs, const char *kv, unsigned npairs);
int dev_node_in_child(int root_fd, const char *host, const char *target);
int symlink_in_child(int root_fd, const char *text, const char *path);
int mask_in_child(int root_fd, const char *path, unsigned dir_attrs, const char *kv, unsigned npairs);
int readonly_in_child(int root_fd, const char *path, unsigned attrs);
int root_attrs_in_child(int root_fd, unsigned attrs);
int pivot_root_in_child(int root_fd);
int loopback_up_in_child(void);
int setup_mount_ns_in_child(plan &p);
int lock_mounts_in_child(plan &p);
