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
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
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

// Raw syscalls for the child of a CLONE_VM clone: they return -errno and never touch errno,
// which is the parent thread's (the child shares its memory and TLS until exec), so a failed
// call in the child cannot change what libuv reads in the parent.
#if defined(__x86_64__)
#define HUTCH_CLONE_VM 1
static inline long rsys6(long n, long a, long b, long c, long d, long e, long f) {
  long ret;
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  asm volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9) : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
#define HUTCH_CLONE_VM 1
static inline long rsys6(long n, long a, long b, long c, long d, long e, long f) {
  register long x8 asm("x8") = n;
  register long x0 asm("x0") = a;
  register long x1 asm("x1") = b;
  register long x2 asm("x2") = c;
  register long x3 asm("x3") = d;
  register long x4 asm("x4") = e;
  register long x5 asm("x5") = f;
  asm volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
  return x0;
}
#else
#define HUTCH_CLONE_VM 0
static inline long rsys6(long n, long a, long b, long c, long d, long e, long f) {
  long r = syscall(n, a, b, c, d, e, f);
  return r < 0 ? -errno : r;
}
#endif
#ifdef HUTCH_NO_CLONE_VM  // -DHUTCH_NO_CLONE_VM: build the path of CPUs without the trampoline
#undef HUTCH_CLONE_VM
#define HUTCH_CLONE_VM 0
#endif

#define RSYS_ARG(x) ((long)(x))
#define rsys0(n) rsys6((n), 0, 0, 0, 0, 0, 0)
#define rsys1(n, a) rsys6((n), RSYS_ARG(a), 0, 0, 0, 0, 0)
#define rsys2(n, a, b) rsys6((n), RSYS_ARG(a), RSYS_ARG(b), 0, 0, 0, 0)
#define rsys3(n, a, b, c) rsys6((n), RSYS_ARG(a), RSYS_ARG(b), RSYS_ARG(c), 0, 0, 0)
#define rsys4(n, a, b, c, d) rsys6((n), RSYS_ARG(a), RSYS_ARG(b), RSYS_ARG(c), RSYS_ARG(d), 0, 0)
#define rsys5(n, a, b, c, d, e) rsys6((n), RSYS_ARG(a), RSYS_ARG(b), RSYS_ARG(c), RSYS_ARG(d), RSYS_ARG(e), 0)

// clone3 that runs fn(arg) on the new stack in the child (which exits with its return) and
// returns the child's pid or -errno in the parent. Needed for CLONE_VM: after a raw clone3 the
// child cannot return into C code whose frame lives on the parent's stack. clone.cc defines it.
extern "C" long hutch_clone3_vm(struct clone_args *args, size_t size, int (*fn)(void *), void *arg);
