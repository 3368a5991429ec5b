/*
 * hutch_zygote_node.node: the N-API addon of hutch's built-in Node zygote (zygote.cjs;
 * docs/templates.md, "The Node zygote"). It loads libhutch-zygote.so (the same C helper the
 * Python zygote loads through ctypes) and serves the zygote protocol in C: serve() blocks in
 * a poll loop (the zygote's socket and its tasks' pidfds) and returns only in a forked child,
 * once the helper has made it a fresh sandbox, with the task's request.
 *
 * Why the serving loop is C: node runs threads of its own (the V8 platform's workers, its
 * delayed-task scheduler, the inspector's SIGUSR1 thread) and fork() keeps only the calling
 * one. While serve() blocks, no JavaScript runs; before each fork node's worker tasks are
 * drained (none queued or running), and the child gets worker threads of its own at once
 * (node_platform.cc). In the child, libuv's event loop is then made the child's own
 * (uv_loop_fork: a new epoll, eventfd and signal pipe; the helper closed every fd the zygote
 * had), and the task ends through _exit (exit()): node's own exit joins the zygote's platform
 * threads, which the child does not have.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "../fdmsg.h"

static int (*z_fork_begin)(void);
static int (*z_fork_end)(int, int);
static int (*z_reap)(int);
static int (*z_task)(int, int, int, int, int);
static int (*z_ready)(void);
static int (*z_request)(char *, int);
static void (*z_fail)(const char *, int);
static void (*z_close)(void);
static int (*z_environ)(const char *, int);

/* node_platform.cc: worker threads for forks. */
const char *hutch_np_prepare(int node_major);
void hutch_np_quiesce(void);
void hutch_np_child(void);
int hutch_np_built_major(void);

static int sock = -1;      /* the zygote's end of its socket to the host */
static char req[1 << 20];  /* the request being served */
static int reqlen;
static int lockfd[2] = {-1, -1}; /* libuv's signal lock pipe in a child (made by its at-fork hook) */

#define MAX_POLL 4096
static struct pollfd pfds[MAX_POLL];
static int npfds;

static napi_value throw_err(napi_env env, const char *what, int err) {
  char m[256];
  snprintf(m, sizeof m, "hutch node zygote: %s: %s", what, strerror(err));
  napi_throw_error(env, NULL, m);
  return NULL;
}

static napi_value str(napi_env env, const char *s, size_t n) {
  napi_value v;
  napi_create_string_utf8(env, s, n, &v);
  return v;
}

static napi_value num(napi_env env, int n) {
  napi_value v;
  napi_create_int32(env, n, &v);
  return v;
}

static int arg_int(napi_env env, napi_value v) {
  int32_t n = -1;
  napi_get_value_int32(env, v, &n);
  return n;
}

/* The fds a fork's first moments may replace: libuv's at-fork hook closes its global signal
 * lock pipe and makes a new one (at the lowest free numbers: the old ones, or the zygote's
 * lowest free ones). Their inodes in the zygote, recorded just before fork(). */
#define SCAN_MIN 64
static ino_t before[1 << 12];
static int nscan;

static void record_fds(void) {
  int free2 = 0;
  nscan = 0;
  for (int fd = 0; fd < (int)(sizeof before / sizeof before[0]); fd++) {
    struct stat s;
    before[fd] = fstat(fd, &s) == 0 ? s.st_ino : 0;
    if (!before[fd]) free2++;
    nscan = fd + 1;
    if (fd >= SCAN_MIN && free2 >= 2) break;
  }
}

/* After the helper closed every fd the zygote had: libuv's state made the child's own. The
 * global signal lock pipe (libuv's at-fork hook made it in this child, at `lockfd`; the helper
 * closed it) is made again at the same numbers, unlocked; then uv_loop_fork (a new epoll,
 * async eventfd and signal pipe; the old numbers are closed already). The files pipe is moved
 * off fd 3 first (the old epoll may have been fd 3, which uv_loop_fork closes). Returns the
 * files pipe's new fd, or -1 with errno. */
static int settle(void) {
  /* Above every fd number the zygote had: none of libuv's old numbers, which uv_loop_fork closes. */
  int files = fcntl(3, F_DUPFD_CLOEXEC, nscan);
  if (files < 0) return -1;
  close(3);
  /* Above every number that matters here, so moving one never clobbers another. */
  int top = files;
  if (lockfd[0] > top) top = lockfd[0];
  if (lockfd[1] > top) top = lockfd[1];
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return -1;
  int hi[2] = {fcntl(p[0], F_DUPFD_CLOEXEC, top + 1), fcntl(p[1], F_DUPFD_CLOEXEC, top + 2)};
  close(p[0]);
  close(p[1]);
  if (hi[0] < 0 || hi[1] < 0) return -1;
  for (int i = 0; i < 2; i++) {
    if (fcntl(lockfd[i], F_GETFD) >= 0) {
      errno = EEXIST; /* the helper should have closed it */
      return -1;
    }
    if (dup3(hi[i], lockfd[i], O_CLOEXEC) < 0) return -1;
    close(hi[i]);
  }
  char unlocked = 42;
  if (write(lockfd[1], &unlocked, 1) != 1) return -1;
  uv_loop_t *loop = uv_default_loop();

  /* A watcher left from the zygote (a preload that opened a socket, a server, stdin...) would
   * be re-armed on an fd that is gone, or is another file now: refuse the task instead. */
  for (unsigned int i = 0; i < loop->nwatchers; i++) {
    uv__io_t *w = loop->watchers[i];
    if (w && w != &loop->async_io_watcher && w != &loop->signal_io_watcher) {
      errno = EBUSY;
      return -1;
    }
  }
  /* libuv's spare fd for EMFILE (a /dev/null) went with the zygote's fds: a new one. */
  if (loop->emfile_fd >= 0) loop->emfile_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

  int r = uv_loop_fork(loop);

  if (r != 0) {
    errno = -r;
    return -1;
  }
  return files;
}

/* In a forked child right after fork(): the lock pipe libuv's at-fork hook made (a pipe that
 * the zygote did not have, holding its one unlocked byte), found by what changed. 0 or -1. */
static int find_lockpipe(void) {
  int k = 0, got[2] = {-1, -1};
  ino_t ino = 0;
  for (int fd = 0; fd < nscan; fd++) {
    struct stat s;
    if (fstat(fd, &s) < 0 || s.st_ino == before[fd] || !S_ISFIFO(s.st_mode)) continue;
    if (k == 2 || (k == 1 && s.st_ino != ino)) return -1;
    ino = s.st_ino;
    got[k++] = fd;
  }
  if (k != 2) return -1;
  int acc = fcntl(got[0], F_GETFL) & O_ACCMODE;
  lockfd[0] = acc == O_RDONLY ? got[0] : got[1];
  lockfd[1] = acc == O_RDONLY ? got[1] : got[0];
  int n = 0;
  if (ioctl(lockfd[0], FIONREAD, &n) < 0 || n != 1) return -1;
  return 0;
}

/* V8 marks its heap pages MADV_DONTFORK: a fork would have none of them (and crash on the
 * first object it touches). Every mapping is made inherited again before serving, and again
 * before each fork (the zygote's foreground tasks, run by node's DrainTasks then, may map new
 * pages; about a hundred mappings: a fraction of a millisecond). /proc/self/maps is read a
 * page at a time on the stack: a buffer of the zygote's own written before each fork would
 * be pages every live fork keeps a copy of (copy-on-write). */
static void inherit(const char *line) { /* "start-end perms ..." */
  char *p;
  unsigned long a = strtoul(line, &p, 16), b = 0;
  if (*p == '-') b = strtoul(p + 1, NULL, 16);
  if (b > a) madvise((void *)a, b - a, MADV_DOFORK); /* EINVAL for VM_IO (vvar...): nothing to do there */
}

static int inherit_all(void) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  char buf[4096];
  size_t len = 0;
  int skip = 0; /* in the rest of a line longer than buf, whose range is done */
  for (;;) {
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    buf[len] = 0;
    char *p = buf, *nl;
    while ((nl = strchr(p, '\n')) != NULL) {
      if (!skip) inherit(p);
      skip = 0;
      p = nl + 1;
    }
    len = (size_t)(buf + len - p); /* a line cut by the read: kept for the next */
    if (len == sizeof buf - 1) { /* no end of line in a whole buffer (a long path) */
      if (!skip) inherit(buf);
      skip = 1;
      len = 0;
    } else {
      memmove(buf, p, len);
    }
  }
  close(fd);
  return 0;
}

/* load(libPath): the helper's entry points. */
static napi_value load(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[4096];
  size_t n = 0;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], path, sizeof path, &n) != napi_ok) return throw_err(env, "load", EINVAL);
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    napi_throw_error(env, NULL, dlerror());
    return NULL;
  }
#define SYM(v, name)                                   \
  if (!(*(void **)&v = dlsym(h, name))) {              \
    napi_throw_error(env, NULL, "libhutch-zygote: " name " missing"); \
    return NULL;                                       \
  }
  SYM(z_fork_begin, "hutch_zygote_fork_begin");
  SYM(z_fork_end, "hutch_zygote_fork_end");
  SYM(z_reap, "hutch_zygote_reap");
  SYM(z_task, "hutch_zygote_task");
  SYM(z_ready, "hutch_zygote_ready");
  SYM(z_request, "hutch_zygote_request");
  SYM(z_fail, "hutch_zygote_fail");
  SYM(z_close, "hutch_zygote_close");
  SYM(z_environ, "hutch_zygote_environ");
  return NULL;
}

/* listen(): the socket pair, the ready line on stdout, the host's hello. true when served. */
static napi_value listen_(napi_env env, napi_callback_info info) {
  const napi_node_version *nv = NULL;
  if (napi_get_node_version(env, &nv) != napi_ok || !nv) return throw_err(env, "node's version", EINVAL);
  const char *why = hutch_np_prepare((int)nv->major);
  if (why) {
    char m[640];
    snprintf(m, sizeof m, "hutch node zygote: cannot give forks worker threads: %s", why);
    napi_throw_error(env, "EUNSUPPORTED", m);
    return NULL;
  }
  hutch_np_quiesce(); /* the preload's and the start's worker tasks done before the first fork */
  if (inherit_all() < 0) return throw_err(env, "/proc/self/maps", errno);
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) < 0) return throw_err(env, "socketpair", errno);
  char line[64];
  int k = snprintf(line, sizeof line, "hutch-zygote 1 %d\n", sp[1]);
  if (write(1, line, (size_t)k) != k) return throw_err(env, "the ready line", errno);
  char hello[256];
  ssize_t r;
  do r = recv(sp[0], hello, sizeof hello, 0); while (r < 0 && errno == EINTR);
  close(sp[1]); /* the host holds its copy now: our end reading EOF means it is gone */
  napi_value v;
  napi_get_boolean(env, r > 0, &v);
  sock = sp[0];
  pfds[0].fd = sock;
  pfds[0].events = POLLIN;
  npfds = 1;
  return v;
}

/* The result in a task: [request JSON, files fd]; throws (and the child exits 125) if not. */
static napi_value task_result(napi_env env, const char *json, int len) {
  int files = settle();
  if (files < 0) {
    int e = errno;
    z_fail("fds", e ? e : EIO);
  }
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, str(env, json, (size_t)len));
  napi_set_element(env, arr, 1, num(env, files));
  return arr;
}

/* serve(): the protocol loop. Returns null when the host is gone (the zygote exits), and in a
 * forked child: "prepared" (a fork prepared ahead: warm up, then ready()), or [request, files fd]. */
static napi_value serve(napi_env env, napi_callback_info info) {
  static FDMSG_CBUF(cb, 8);
  for (;;) {
    int r = poll(pfds, (nfds_t)npfds, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return throw_err(env, "poll", errno);
    }
    for (int i = npfds - 1; i >= 1; i--) {
      if (!pfds[i].revents) continue;
      if (z_reap(pfds[i].fd) != 1) pfds[i] = pfds[--npfds]; /* reported (or not ours) */
    }
    if (!pfds[0].revents) continue;
    struct iovec iov;
    struct msghdr msg;
    fdmsg_init(&msg, &iov, req, sizeof req - 1, cb.buf, sizeof cb.buf);
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
    if (n <= 0) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    int fds[8];
    int nf = (int)fdmsg_take(&msg, fds, 8);
    reqlen = (int)n;
    req[n] = 0;
    int prepared = nf == 1 && strncmp(req, "{\"prepared\":true}", (size_t)n) == 0 && n == 17;
    if (prepared) fds[1] = fds[2] = fds[3] = fds[4] = -1, nf = 5;
    if (nf != 5 || npfds == MAX_POLL) {
      for (int i = 0; i < nf; i++)
        if (fds[i] >= 0) close(fds[i]);
      continue;
    }
    int pid = -1;
    /* No worker task queued or running in the zygote at fork(). Node's DrainTasks also runs
     * the isolate's foreground tasks, which may allocate: pages V8 maps MADV_DONTFORK, made
     * inherited again. */
    hutch_np_quiesce();
    if (inherit_all() < 0) { /* the host sees its request's socket close */
      for (int i = 0; i < nf; i++)
        if (fds[i] >= 0) close(fds[i]);
      continue;
    }
    if (z_fork_begin() == 0) {
      record_fds(); /* after fork_begin, which may open an fd of its own */
      pid = fork();
    }
    if (pid == 0) {
      hutch_np_child(); /* before anything here could post a worker task */
      if (find_lockpipe() < 0) {
        /* Not the libuv this addon was built for: nothing here may run a task. */
        char m[512];
        int k = snprintf(m, sizeof m, "hutch node zygote: libuv's signal lock pipe is not where expected (%d %d; open:", lockfd[0], lockfd[1]);
        for (int fd = 0; fd < 64 && k < 480; fd++)
          if (fcntl(fd, F_GETFD) >= 0) k += snprintf(m + k, sizeof m - k, " %d", fd);
        k += snprintf(m + k, sizeof m - k, ")\n");
        (void)!write(2, m, (size_t)k);
        _exit(125);
      }
      close(sock);
      int t = z_task(fds[0], fds[1], fds[2], fds[3], fds[4]);
      if (t == 1) return str(env, "prepared", 8);
      if (t != 0) _exit(125);
      return task_result(env, req, reqlen);
    }
    int pidfd = z_fork_end(pid, fds[0]);
    for (int i = 0; i < 5; i++)
      if (fds[i] >= 0) close(fds[i]);
    if (pidfd >= 0) {
      pfds[npfds].fd = pidfd;
      pfds[npfds].events = POLLIN;
      pfds[npfds].revents = 0;
      npfds++;
    }
  }
}

/* ready(): in a prepared fork, after its warm-up: waits for the task's request. */
static napi_value ready(napi_env env, napi_callback_info info) {
  if (z_ready() != 0) _exit(125);
  int k = z_request(req, (int)sizeof req - 1);
  if (k < 0 || k >= (int)sizeof req) z_fail("request", EPROTO);
  req[k] = 0;
  return task_result(env, req, k);
}

/* fail(step, errno): a step of the zygote's own before task code failed; never returns. */
static napi_value fail_(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char step[32] = "task";
  size_t n;
  if (argc > 0) napi_get_value_string_utf8(env, argv[0], step, sizeof step, &n);
  int e = argc > 1 ? arg_int(env, argv[1]) : EIO;
  z_fail(step, e > 0 ? e : EIO);
  _exit(125);
}

/* close(): the request socket, right before the task's own code. */
static napi_value close_(napi_env env, napi_callback_info info) {
  z_close();
  return NULL;
}

/* environ(block): the task's C environment at once ("K=V\0..."). */
static napi_value environ_(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data;
  size_t len;
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &data, &len) != napi_ok) return throw_err(env, "environ", EINVAL);
  if (z_environ((const char *)data, (int)len) != 0) return throw_err(env, "environ", ENOMEM);
  return NULL;
}

/* exec(file, argv): execvp with the environment set; returns its errno when it fails. */
static napi_value exec_(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint32_t n = 0;
  if (argc < 2 || napi_get_array_length(env, argv[1], &n) != napi_ok || n == 0) return num(env, EINVAL);
  char **av = calloc(n + 1, sizeof *av);
  if (!av) return num(env, ENOMEM);
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    size_t len = 0;
    napi_get_element(env, argv[1], i, &e);
    napi_get_value_string_utf8(env, e, NULL, 0, &len);
    av[i] = malloc(len + 1);
    if (!av[i]) return num(env, ENOMEM);
    napi_get_value_string_utf8(env, e, av[i], len + 1, &len);
  }
  execvp(av[0], av);
  return num(env, errno);
}

/* exit(code): the task ends here (node's own exit would wait for threads this process lacks). */
static napi_value exit_(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  _exit(argc > 0 ? arg_int(env, argv[0]) & 0xff : 0);
}

/* pipe(): [read fd, write fd] (close-on-exec): the zygote's stdio warm-up. */
static napi_value pipe_(napi_env env, napi_callback_info info) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return throw_err(env, "pipe", errno);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, num(env, p[0]));
  napi_set_element(env, arr, 1, num(env, p[1]));
  return arr;
}

/* ids(): [getpid(), getppid()] (node read its pid once, at its start: the zygote's). */
static napi_value ids(napi_env env, napi_callback_info info) {
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, num(env, getpid()));
  napi_set_element(env, arr, 1, num(env, getppid()));
  return arr;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
    {"load", NULL, load, NULL, NULL, NULL, napi_default, NULL},
    {"listen", NULL, listen_, NULL, NULL, NULL, napi_default, NULL},
    {"serve", NULL, serve, NULL, NULL, NULL, napi_default, NULL},
    {"ready", NULL, ready, NULL, NULL, NULL, napi_default, NULL},
    {"fail", NULL, fail_, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, close_, NULL, NULL, NULL, napi_default, NULL},
    {"environ", NULL, environ_, NULL, NULL, NULL, napi_default, NULL},
    {"exec", NULL, exec_, NULL, NULL, NULL, napi_default, NULL},
    {"exit", NULL, exit_, NULL, NULL, NULL, napi_default, NULL},
    {"ids", NULL, ids, NULL, NULL, NULL, napi_default, NULL},
    {"pipe", NULL, pipe_, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  napi_set_named_property(env, exports, "nodeMajor", num(env, hutch_np_built_major()));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
