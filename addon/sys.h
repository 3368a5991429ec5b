// Raw syscall wrappers for what glibc 2.36 lacks or declares in headers that clash with
// <linux/mount.h>. All are async-signal-safe (a single syscall each).
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <linux/sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef MS_RDONLY
#define MS_RDONLY 1
#define MS_NOSUID 2
#define MS_NODEV 4
#define MS_NOEXEC 8
#define MS_REMOUNT 32
#define MS_BIND 4096
#define MS_REC 16384
#define MS_PRIVATE (1 << 18)
#endif
#ifndef MNT_DETACH
#define MNT_DETACH 2
#endif

static inline long sys_clone3(struct clone_args *args) { return syscall(__NR_clone3, args, sizeof(*args)); }
static inline int sys_mount(const char *src, const char *tgt, const char *type, unsigned long flags, const void *data) {
  return (int)syscall(__NR_mount, src, tgt, type, flags, data);
}
static inline int sys_umount2(const char *tgt, int flags) { return (int)syscall(__NR_umount2, tgt, flags); }
static inline int sys_pivot_root(const char *n, const char *o) { return (int)syscall(__NR_pivot_root, n, o); }
static inline int sys_open_tree(int dfd, const char *path, unsigned flags) {
  return (int)syscall(__NR_open_tree, dfd, path, flags);
}
static inline int sys_move_mount(int from_dfd, const char *from, int to_dfd, const char *to, unsigned flags) {
  return (int)syscall(__NR_move_mount, from_dfd, from, to_dfd, to, flags);
}
static inline int sys_fsopen(const char *fs, unsigned flags) { return (int)syscall(__NR_fsopen, fs, flags); }
static inline int sys_fsconfig(int fd, unsigned cmd, const char *key, const void *value, int aux) {
  return (int)syscall(__NR_fsconfig, fd, cmd, key, value, aux);
}
static inline int sys_fsmount(int fd, unsigned flags, unsigned attr) { return (int)syscall(__NR_fsmount, fd, flags, attr); }
static inline int sys_mount_setattr(int dfd, const char *path, unsigned flags, struct mount_attr *attr) {
  return (int)syscall(__NR_mount_setattr, dfd, path, flags, attr, sizeof(*attr));
}
static inline int sys_close_range(unsigned first, unsigned last, unsigned flags) {
  return (int)syscall(__NR_close_range, first, last, flags);
}
static inline int sys_pidfd_send_signal(int pidfd, int sig) {
  return (int)syscall(__NR_pidfd_send_signal, pidfd, sig, nullptr, 0);
}
