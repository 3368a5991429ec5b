/* probe: one escape attempt per subcommand, run inside a sandbox by the tests in test/security/.
 *
 * Built static by the tests (gcc -static -O2) and copied into the sandbox, so it needs nothing
 * from the image. Every subcommand prints exactly one line, so a test can assert the kernel's
 * answer precisely:
 *   ok                   the attempt succeeded (for an escape: a hole)
 *   refused <ERRNO>      the first call that failed, by errno name (EPERM, ENOSYS, ...)
 *   <word> <detail>      probes that observe rather than attempt (status, fds, read, chroot)
 * Nothing here is destructive when it succeeds: sysrq gets 'h' (help), hostname gets the
 * current name back, kill targets PID 1 of the sandbox itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_alg.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <linux/vm_sockets.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif
#define KEY_SPEC_SESSION_KEYRING -3
#define KEY_SPEC_PROCESS_KEYRING -2
#define KEYCTL_GET_KEYRING_ID 0

static const char *errname(int e) {
  const char *n = strerrorname_np(e);
  static char buf[32];
  if (n) return n;
  snprintf(buf, sizeof buf, "E%d", e);
  return buf;
}

/* Prints the outcome of a call that returns < 0 on failure with errno set. */
static int report(long r) {
  if (r < 0) printf("refused %s\n", errname(errno));
  else printf("ok\n");
  return 0;
}

static int refused(void) {
  printf("refused %s\n", errname(errno));
  return 0;
}

static int p_mount(int argc, char **argv) {
  (void)argc, (void)argv;
  mkdir("/tmp", 01777);
  mkdir("/tmp/probe-mnt", 0755);
  return report(mount("none", "/tmp/probe-mnt", "tmpfs", 0, NULL));
}

/* The new mount API: a detached tmpfs needs no target and no existing mount. */
static int p_fsopen(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_fsopen, "tmpfs", 0));
}

/* Unmasking: a masked /proc file lies under a /dev/null bind; removing it would reveal it. */
static int p_umount(int argc, char **argv) {
  return report(umount2(argc > 2 ? argv[2] : "/proc/kcore", MNT_DETACH));
}

static int p_unshare(int argc, char **argv) {
  const char *what = argc > 2 ? argv[2] : "user";
  int flag = strcmp(what, "user") == 0 ? CLONE_NEWUSER
           : strcmp(what, "mnt") == 0  ? CLONE_NEWNS
           : strcmp(what, "net") == 0  ? CLONE_NEWNET
           : strcmp(what, "pid") == 0  ? CLONE_NEWPID
           : CLONE_NEWCGROUP;
  return report(unshare(flag));
}

/* setns into PID 1's namespaces: the open needs ptrace access to init, setns CAP_SYS_ADMIN. */
static int p_setns(int argc, char **argv) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%s/ns/%s", argc > 3 ? argv[3] : "1", argc > 2 ? argv[2] : "mnt");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return refused();
  return report(setns(fd, 0));
}

/* mount_setattr PATH: clears MOUNT_ATTR_RDONLY on PATH and every mount below it. */
static int p_mount_setattr(int argc, char **argv) {
  if (argc < 3) return 2;
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_clr = MOUNT_ATTR_RDONLY;
  return report(syscall(SYS_mount_setattr, AT_FDCWD, argv[2], AT_RECURSIVE, &a, sizeof a));
}

/* remount_rw PATH: mount(2)'s way, keeping nosuid and nodev (so only read-only changes). */
static int p_remount_rw(int argc, char **argv) {
  if (argc < 3) return 2;
  return report(mount(NULL, argv[2], NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, NULL));
}

/* clone_rw PATH: a detached clone of PATH made writable, then attached at /tmp/probe-clone
 * and written to (FILE under it, when given): "ok" only if the write went through. */
static int p_clone_rw(int argc, char **argv) {
  if (argc < 3) return 2;
  int t = (int)syscall(SYS_open_tree, AT_FDCWD, argv[2], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (t < 0) return refused();
  struct mount_attr a;
  memset(&a, 0, sizeof a);
  a.attr_clr = MOUNT_ATTR_RDONLY;
  if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH | AT_RECURSIVE, &a, sizeof a) < 0) return refused();
  mkdir("/tmp", 01777);
  mkdir("/tmp/probe-clone", 0755);
  if (syscall(SYS_move_mount, t, "", AT_FDCWD, "/tmp/probe-clone", MOVE_MOUNT_F_EMPTY_PATH) < 0) return refused();
  if (argc < 4) return report(0);
  char path[4096];
  snprintf(path, sizeof path, "/tmp/probe-clone/%s", argv[3]);
  int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return refused();
  return report(write(fd, "!", 1));
}

/* append PATH: opens PATH for appending and appends one byte. */
static int p_append(int argc, char **argv) {
  if (argc < 3) return 2;
  int fd = open(argv[2], O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return refused();
  return report(write(fd, "!", 1));
}

/* pidfd_getfd PID: tries to take each of PID's fds 0..31 (init's control socket is its fd 3);
 * "ok <fd>" at the first taken, else the errno of the last attempt. */
static int p_pidfd_getfd(int argc, char **argv) {
  pid_t pid = argc > 2 ? atoi(argv[2]) : 1;
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd < 0) return refused();
  int err = 0;
  for (int fd = 0; fd < 32; fd++) {
    int got = (int)syscall(SYS_pidfd_getfd, pfd, fd, 0);
    if (got >= 0) {
      printf("ok %d\n", fd);
      return 0;
    }
    err = errno;
  }
  printf("refused %s\n", errname(err));
  return 0;
}

static int p_keyctl(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
}

static int p_add_key(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_add_key, "user", "hutch-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING));
}

static int p_request_key(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_request_key, "user", "hutch-probe", NULL, KEY_SPEC_PROCESS_KEYRING));
}

static int p_io_uring(int argc, char **argv) {
  (void)argc, (void)argv;
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  return report(syscall(SYS_io_uring_setup, 8, &p));
}

static int p_userfaultfd(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_userfaultfd, O_CLOEXEC));
}

static int p_bpf(int argc, char **argv) {
  (void)argc, (void)argv;
  union bpf_attr a;
  memset(&a, 0, sizeof a);
  a.map_type = BPF_MAP_TYPE_ARRAY;
  a.key_size = 4;
  a.value_size = 4;
  a.max_entries = 1;
  return report(syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a));
}

static int p_perf_event_open(int argc, char **argv) {
  (void)argc, (void)argv;
  struct perf_event_attr a;
  memset(&a, 0, sizeof a);
  a.size = sizeof a;
  a.type = PERF_TYPE_SOFTWARE;
  a.config = PERF_COUNT_SW_CPU_CLOCK;
  a.exclude_kernel = 1;
  return report(syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
}

/* ptrace PID [seize]: PTRACE_ATTACH, or PTRACE_SEIZE. */
static int p_ptrace(int argc, char **argv) {
  pid_t pid = argc > 2 ? atoi(argv[2]) : 1;
  if (argc > 3 && strcmp(argv[3], "seize") == 0) return report(ptrace(PTRACE_SEIZE, pid, 0, 0));
  return report(ptrace(PTRACE_ATTACH, pid, 0, 0));
}

/* Reading another process's memory without ptrace (allowed by the profile; the kernel decides). */
static int p_process_vm_readv(int argc, char **argv) {
  pid_t pid = argc > 2 ? atoi(argv[2]) : 1;
  char buf[8];
  struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
  return report(syscall(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0));
}

static int p_kexec_load(int argc, char **argv) {
  (void)argc, (void)argv;
  return report(syscall(SYS_kexec_load, 0, 0, NULL, 0));
}

/* The "shocker" attack: a file handle names an inode on the whole filesystem, outside any root. */
static int p_open_by_handle_at(int argc, char **argv) {
  (void)argc, (void)argv;
  struct {
    struct file_handle h;
    unsigned char bytes[MAX_HANDLE_SZ];
  } fh;
  int mount_id;
  fh.h.handle_bytes = MAX_HANDLE_SZ;
  int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return refused();
  if (name_to_handle_at(AT_FDCWD, "/", &fh.h, &mount_id, 0) < 0) {
    /* overlay may not export handles: a forged one is as good a test of the call */
    fh.h.handle_bytes = 8;
    fh.h.handle_type = 1;
    memset(fh.bytes, 0, 8);
    fh.bytes[0] = 2;
  }
  return report(open_by_handle_at(root, &fh.h, O_RDONLY));
}

/* TIOCSTI pushes input into a terminal; fd number or a path to open. */
static int p_tiocsti(int argc, char **argv) {
  const char *what = argc > 2 ? argv[2] : "0";
  int fd;
  if (what[0] == '/') {
    fd = open(what, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return refused();
  } else {
    fd = atoi(what);
  }
  char c = '\n';
  return report(ioctl(fd, TIOCSTI, &c));
}

static int wait_child(long pid) {
  if (pid < 0) return refused();
  if (pid == 0) _exit(0);
  int st;
  waitpid((pid_t)pid, &st, __WALL);
  printf("ok\n");
  return 0;
}

static int p_clone_newuser(int argc, char **argv) {
  (void)argc, (void)argv;
  return wait_child(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, NULL, NULL, 0));
}

/* clone3 keeps its flags in memory that seccomp cannot read: the profile answers ENOSYS. */
static int p_clone3(int argc, char **argv) {
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.exit_signal = SIGCHLD;
  if (argc > 2 && strcmp(argv[2], "user") == 0) a.flags = CLONE_NEWUSER;
  return wait_child(syscall(SYS_clone3, &a, sizeof a));
}

static int p_mknod(int argc, char **argv) {
  const char *kind = argc > 2 ? argv[2] : "char";
  mkdir("/tmp", 01777);
  unlink("/tmp/probe-node");
  if (strcmp(kind, "block") == 0) return report(mknod("/tmp/probe-node", S_IFBLK | 0600, makedev(7, 0)));
  return report(mknod("/tmp/probe-node", S_IFCHR | 0666, makedev(1, 1) /* /dev/mem */));
}

static int p_socket(int argc, char **argv) {
  const char *fam = argc > 2 ? argv[2] : "packet";
  if (strcmp(fam, "packet") == 0) return report(socket(AF_PACKET, SOCK_RAW, 0));
  if (strcmp(fam, "vsock") == 0) return report(socket(AF_VSOCK, SOCK_STREAM, 0));
  if (strcmp(fam, "alg") == 0) return report(socket(AF_ALG, SOCK_SEQPACKET, 0));
  /* The kernel reads an int: garbage in the upper half of the register must not slip past. */
  if (strcmp(fam, "vsock-high") == 0) return report(syscall(SYS_socket, (1UL << 32) | AF_VSOCK, SOCK_STREAM, 0));
  if (strcmp(fam, "raw") == 0) return report(socket(AF_INET, SOCK_RAW, 1));
  return report(socket(AF_INET, SOCK_STREAM, 0));
}

static int p_personality(int argc, char **argv) {
  unsigned long persona = argc > 2 ? strtoul(argv[2], NULL, 0) : READ_IMPLIES_EXEC;
  return report(syscall(SYS_personality, persona));
}

/* write PATH DATA: open for writing and write DATA. */
static int p_write(int argc, char **argv) {
  if (argc < 3) return 2;
  int fd = open(argv[2], O_WRONLY | O_CLOEXEC);
  if (fd < 0) return refused();
  const char *d = argc > 3 ? argv[3] : "";
  return report(write(fd, d, strlen(d)));
}

/* read PATH: "read <n>" with the byte count of the first read (up to 4096). */
static int p_read(int argc, char **argv) {
  if (argc < 3) return 2;
  int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
  if (fd < 0) return refused();
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0) return refused();
  printf("read %zd\n", n);
  return 0;
}

/* open PATH: opens for writing (CVE-2019-5736: overwrite the runtime through /proc/1/exe). */
static int p_open_write(int argc, char **argv) {
  if (argc < 3) return 2;
  return report(open(argv[2], O_WRONLY | O_CLOEXEC));
}

/* list DIR: "entries <n>" (a masked directory is empty). */
static int p_list(int argc, char **argv) {
  if (argc < 3) return 2;
  char cmd[4096];
  int fd = open(argv[2], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return refused();
  long n = 0;
  for (;;) {
    long k = syscall(SYS_getdents64, fd, cmd, sizeof cmd);
    if (k < 0) return refused();
    if (k == 0) break;
    for (long off = 0; off < k;) {
      unsigned short reclen = *(unsigned short *)(cmd + off + 16);
      const char *name = cmd + off + 19;
      if (strcmp(name, ".") != 0 && strcmp(name, "..") != 0) n++;
      off += reclen;
    }
  }
  printf("entries %ld\n", n);
  return 0;
}

/* kill SIG [PID]: signals PID 1 of the sandbox by default. */
static int p_kill(int argc, char **argv) {
  int sig = argc > 2 ? atoi(argv[2]) : SIGKILL;
  pid_t pid = argc > 3 ? atoi(argv[3]) : 1;
  return report(kill(pid, sig));
}

/* fds: every fd number from 3 to the nofile limit must be closed. "closed 3..N" or "open <fd>". */
static int p_fds(int argc, char **argv) {
  (void)argc, (void)argv;
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t top = rl.rlim_cur;
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max > top) top = rl.rlim_max;
  if (top > (1u << 20)) top = 1u << 20;
  for (rlim_t fd = 3; fd < top; fd++) {
    if (fcntl((int)fd, F_GETFD) >= 0 || errno != EBADF) {
      char link[64], target[256];
      snprintf(link, sizeof link, "/proc/self/fd/%d", (int)fd);
      ssize_t n = readlink(link, target, sizeof target - 1);
      target[n < 0 ? 0 : n] = 0;
      printf("open %d %s\n", (int)fd, target);
      return 0;
    }
  }
  printf("closed 3..%lu\n", (unsigned long)top - 1);
  return 0;
}

/* cwd: the starting cwd is inside the root, and no /proc/<self|1>/fd/N is a way out
 * (CVE-2024-21626). "inside <cwd>" or "escaped <how>". */
static int p_cwd(int argc, char **argv) {
  (void)argc, (void)argv;
  char buf[4096];
  if (!getcwd(buf, sizeof buf) || buf[0] != '/') {
    printf("escaped getcwd %s\n", errno ? errname(errno) : buf);
    return 0;
  }
  char start[4096];
  strcpy(start, buf);
  const char *who[] = {"self", "1"};
  for (int w = 0; w < 2; w++) {
    for (int fd = 0; fd < 256; fd++) {
      char path[64];
      snprintf(path, sizeof path, "/proc/%s/fd/%d", who[w], fd);
      if (chdir(path) < 0) continue;
      /* a pipe or socket is no directory; a directory reached this way must be inside */
      if (!getcwd(buf, sizeof buf) || buf[0] != '/') {
        printf("escaped %s\n", path);
        return 0;
      }
      if (chdir(start) < 0) return refused();
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/cwd", who[w]);
    if (chdir(path) == 0 && (!getcwd(buf, sizeof buf) || buf[0] != '/')) {
      printf("escaped %s\n", path);
      return 0;
    }
    snprintf(path, sizeof path, "/proc/%s/root", who[w]);
    if (chdir(path) == 0 && (!getcwd(buf, sizeof buf) || buf[0] != '/')) {
      printf("escaped %s\n", path);
      return 0;
    }
    if (chdir(start) < 0) return refused();
  }
  printf("inside %s\n", start);
  return 0;
}

/* chroot MARKER: the classic chroot(2) escapes (chroot into a subdir, then climb with ".." or
 * with an fd kept from before); "inside" when MARKER (a file at the sandbox's root) is still
 * at "/" afterwards. */
static int p_chroot(int argc, char **argv) {
  if (argc < 3) return 2;
  const char *marker = argv[2];
  int old = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  mkdir("/tmp", 01777);
  mkdir("/tmp/probe-jail", 0755);
  if (chroot("/tmp/probe-jail") < 0) return refused();
  if (fchdir(old) < 0) return refused();
  for (int i = 0; i < 256; i++)
    if (chdir("..") < 0) return refused();
  if (chroot(".") < 0) return refused();
  if (chdir("/") < 0) return refused();
  printf(access(marker, F_OK) == 0 ? "inside\n" : "escaped\n");
  return 0;
}

/* status: the kernel's view of this process's privileges, one line. */
/* int80 NR: an i386 syscall through `int $0x80` from a 64-bit process (x86_64 only). The
 * default filter kills every non-native ABI, so a surviving process is a hole. */
static int p_int80(int argc, char **argv) {
#if defined(__x86_64__)
  long nr = argc > 2 ? strtol(argv[2], NULL, 0) : 20; /* i386 getpid */
  long r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr) : "r8", "r9", "r10", "r11", "memory");
  if (r < 0 && r > -4096) {
    printf("refused %s\n", errname((int)-r));
    return 0;
  }
  printf("ok %ld\n", r);
  return 0;
#else
  (void)argc; (void)argv;
  printf("skipped not-x86_64\n");
  return 0;
#endif
}

/* listmount NS_ID: lists the root mount's children of another mount namespace, named by its
 * 64-bit id (struct mnt_id_req, version 1: 32 bytes). */
static int p_listmount(int argc, char **argv) {
  struct {
    uint32_t size, spare;
    uint64_t mnt_id, param, mnt_ns_id;
  } req = {32, 0, 0xffffffffffffffffULL /* LSMT_ROOT */, 0, argc > 2 ? strtoull(argv[2], NULL, 0) : 0};
  uint64_t ids[64];
  long r = syscall(458 /* listmount */, &req, ids, 64, 0);
  if (r < 0) return refused();
  printf("ok %ld\n", r);
  return 0;
}

/* ids: real and effective uid and gid (for a setuid binary run by an ordinary user). */
static int p_ids(int argc, char **argv) {
  (void)argc; (void)argv;
  printf("uid %d euid %d gid %d egid %d\n", (int)getuid(), (int)geteuid(), (int)getgid(), (int)getegid());
  return 0;
}

static int p_status(int argc, char **argv) {
  (void)argc, (void)argv;
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return refused();
  char line[512], out[2048] = "";
  const char *keys[] = {"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:", "Seccomp:"};
  while (fgets(line, sizeof line, f)) {
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
      size_t kl = strlen(keys[k]);
      if (strncmp(line, keys[k], kl) != 0) continue;
      char *v = line + kl;
      while (*v == ' ' || *v == '\t') v++;
      v[strcspn(v, "\n")] = 0;
      for (char *c = v; *c; c++)
        if (*c == '\t') *c = ',';
      size_t ol = strlen(out);
      snprintf(out + ol, sizeof out - ol, "%s%.*s=%s", ol ? " " : "", (int)(kl - 1), keys[k], v);
    }
  }
  printf("%s\n", out);
  return 0;
}

struct probe {
  const char *name;
  int (*fn)(int, char **);
};

static const struct probe probes[] = {
    {"mount", p_mount},
    {"fsopen", p_fsopen},
    {"umount", p_umount},
    {"unshare", p_unshare},
    {"setns", p_setns},
    {"mount_setattr", p_mount_setattr},
    {"remount_rw", p_remount_rw},
    {"clone_rw", p_clone_rw},
    {"append", p_append},
    {"pidfd_getfd", p_pidfd_getfd},
    {"keyctl", p_keyctl},
    {"add_key", p_add_key},
    {"request_key", p_request_key},
    {"io_uring", p_io_uring},
    {"userfaultfd", p_userfaultfd},
    {"bpf", p_bpf},
    {"perf_event_open", p_perf_event_open},
    {"ptrace", p_ptrace},
    {"process_vm_readv", p_process_vm_readv},
    {"kexec_load", p_kexec_load},
    {"open_by_handle_at", p_open_by_handle_at},
    {"tiocsti", p_tiocsti},
    {"clone_newuser", p_clone_newuser},
    {"clone3", p_clone3},
    {"mknod", p_mknod},
    {"socket", p_socket},
    {"personality", p_personality},
    {"write", p_write},
    {"read", p_read},
    {"open_write", p_open_write},
    {"list", p_list},
    {"kill", p_kill},
    {"fds", p_fds},
    {"cwd", p_cwd},
    {"chroot", p_chroot},
    {"status", p_status},
    {"int80", p_int80},
    {"listmount", p_listmount},
    {"ids", p_ids},
};

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: probe <attempt> [args]\n");
    return 2;
  }
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
    if (strcmp(argv[1], probes[i].name) == 0) return probes[i].fn(argc, argv);
  fprintf(stderr, "probe: unknown attempt %s\n", argv[1]);
  return 2;
}
