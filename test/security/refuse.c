/*
 * refuse MODE [ARG...]: drives seccomp refusals from inside a sandbox, for the violation tests
 * and bench/seccomp-notify.ts. Built static by the test (no compiler in the image).
 *   call NR [COUNT]       makes raw syscall NR (no arguments) COUNT times (default 1); prints
 *                         "ok", or "errno N" for the last failure, and the count that failed
 *   add_key COUNT         COUNT add_key calls (refused by the default profile)
 *   unshare_user          unshare(CLONE_NEWUSER): prints "ok" or "errno N"
 *   fork N NR             N children each make raw syscall NR once; prints each child's errno
 *   listener              tries to install a filter of its own with a listener (as a nested
 *                         supervisor would, to answer refused calls with CONTINUE): "ok" or "errno N"
 *   allowed COUNT         COUNT getppid calls (allowed): the allowed path, for the bench
 *   time MODE COUNT       as `allowed COUNT` or `add_key COUNT`, printing only the loop's time
 *                         in nanoseconds (bench/seccomp-notify.ts)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void result(long r, int e) {
  if (r >= 0) printf("ok\n");
  else printf("errno %d\n", e);
}

static int loop(long nr, unsigned long count) {
  unsigned long failed = 0;
  int last = 0;
  for (unsigned long i = 0; i < count; i++) {
    if (syscall(nr, 0, 0, 0, 0, 0, 0) < 0) failed++, last = errno;
  }
  if (failed) printf("errno %d failed %lu\n", last, failed);
  else printf("ok\n");
  return 0;
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "time") == 0) {
    unsigned long count = strtoul(argv[3], NULL, 0);
    int refused = strcmp(argv[2], "add_key") == 0;
    long long t0 = now_ns();
    for (unsigned long i = 0; i < count; i++) {
      if (refused) syscall(SYS_add_key, "user", "k", "v", 1, -2);
      else syscall(SYS_getppid);
    }
    printf("%lld\n", now_ns() - t0);
    return 0;
  }
  if (argc < 2) {
    fprintf(stderr, "usage: refuse MODE [ARG...]\n");
    return 2;
  }
  const char *mode = argv[1];
  if (strcmp(mode, "call") == 0 && argc >= 3) return loop(strtol(argv[2], NULL, 0), argc >= 4 ? strtoul(argv[3], NULL, 0) : 1);
  if (strcmp(mode, "add_key") == 0 && argc >= 3) {
    unsigned long count = strtoul(argv[2], NULL, 0), failed = 0;
    int last = 0;
    for (unsigned long i = 0; i < count; i++)
      if (syscall(SYS_add_key, "user", "k", "v", 1, -2) < 0) failed++, last = errno;
    printf("errno %d failed %lu\n", last, failed);
    return 0;
  }
  if (strcmp(mode, "allowed") == 0 && argc >= 3) {
    unsigned long count = strtoul(argv[2], NULL, 0);
    for (unsigned long i = 0; i < count; i++) syscall(SYS_getppid);
    printf("ok\n");
    return 0;
  }
  if (strcmp(mode, "unshare_user") == 0) {
    long r = unshare(CLONE_NEWUSER);
    result(r, errno);
    return 0;
  }
  if (strcmp(mode, "fork") == 0 && argc >= 4) {
    int n = atoi(argv[2]);
    long nr = strtol(argv[3], NULL, 0);
    for (int i = 0; i < n; i++) {
      pid_t p = fork();
      if (p == 0) {
        long r = syscall(nr, 0, 0, 0, 0, 0, 0);
        _exit(r < 0 ? errno : 0);
      }
    }
    int status;
    pid_t p;
    while ((p = wait(&status)) > 0) printf("child errno %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
  }
  if (strcmp(mode, "listener") == 0) {
    /* Its own filter: getppid answered by its own listener, all else allowed. */
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof f / sizeof f[0], f};
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    result(r, errno);
    return 0;
  }
  fprintf(stderr, "refuse: unknown mode %s\n", mode);
  return 2;
}
