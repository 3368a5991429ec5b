/*
 * The host's side of a template's sockets (lib/template/): a SEQPACKET socketpair per fork
 * request, receiving a message with its fds (the fork's pidfd), and taking the zygote's
 * socket end out of the zygote with pidfd_getfd (the zygote runs in the template sandbox,
 * which has no way to receive an fd from the host by itself). Plain N-API, no C++.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <node_api.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../fdmsg.h"

static napi_value num(napi_env env, double v) {
  napi_value r;
  napi_create_double(env, v, &r);
  return r;
}

static napi_value failure(napi_env env, int err) {
  napi_value o;
  napi_create_object(env, &o);
  napi_set_named_property(env, o, "errno", num(env, err));
  return o;
}

static int arg_int(napi_env env, napi_callback_info info, size_t i) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t v = -1;
  if (i < argc) napi_get_value_int32(env, argv[i], &v);
  return v;
}

/* socketpair(): [a, b], SOCK_SEQPACKET, close-on-exec; a non-blocking (the host's end). */
static napi_value SocketPair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return failure(env, errno);
  if (fcntl(sv[0], F_SETFL, O_NONBLOCK) < 0) {
    int e = errno;
    close(sv[0]), close(sv[1]);
    return failure(env, e);
  }
  napi_value a;
  napi_create_array_with_length(env, 2, &a);
  napi_set_element(env, a, 0, num(env, sv[0]));
  napi_set_element(env, a, 1, num(env, sv[1]));
  return a;
}

/* recvFds(fd): undefined when nothing waits, null at EOF, { errno }, else { data, fds }. */
static napi_value RecvFds(napi_env env, napi_callback_info info) {
  int fd = arg_int(env, info, 0);
  static unsigned char data[65536];
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(c, 8);
  fdmsg_init(&msg, &iov, data, sizeof data, c.buf, sizeof c.buf);
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); while (n < 0 && errno == EINTR);
  napi_value r;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    napi_get_undefined(env, &r);
    return r;
  }
  if (n < 0) return failure(env, errno);
  int got[8];
  uint32_t k = (uint32_t)fdmsg_take(&msg, got, 8);
  napi_value fds;
  napi_create_array_with_length(env, k, &fds);
  for (uint32_t i = 0; i < k; i++) napi_set_element(env, fds, i, num(env, got[i]));
  if (n == 0 && k == 0) {
    napi_get_null(env, &r);
    return r;
  }
  napi_value buf;
  void *out;
  napi_create_buffer_copy(env, (size_t)n, data, &out, &buf);
  napi_create_object(env, &r);
  napi_set_named_property(env, r, "data", buf);
  napi_set_named_property(env, r, "fds", fds);
  return r;
}

/* sendFds(fd, buffer, fds[]): one message with up to 128 fds; the byte count or { errno }. */
static napi_value SendFds(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t fd = -1;
  napi_get_value_int32(env, argv[0], &fd);
  void *data = NULL;
  size_t len = 0;
  napi_get_buffer_info(env, argv[1], &data, &len);
  uint32_t nfds = 0;
  napi_get_array_length(env, argv[2], &nfds);
  if (nfds > 128) return failure(env, EINVAL);
  int fds[128];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    fds[i] = -1;
    napi_get_element(env, argv[2], i, &v);
    napi_get_value_int32(env, v, &fds[i]);
  }
  FDMSG_CBUF(c, 128);
  struct iovec iov;
  struct msghdr msg;
  fdmsg_init(&msg, &iov, data, len, c.buf, nfds > 0 ? sizeof c.buf : 0);
  if (nfds > 0) fdmsg_put(&msg, fds, nfds);
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
  return n < 0 ? failure(env, errno) : num(env, (double)n);
}

struct proc_args {
  int fd;
  int err;
};

/* In a vfork'd task of the target pid namespace: a proc of that namespace, as a detached mount. */
static int proc_child(void *arg) {
  struct proc_args *a = (struct proc_args *)arg;
  int fs = (int)syscall(SYS_fsopen, "proc", FSOPEN_CLOEXEC);
  int r = fs < 0 ? -1 : (int)syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0);
  int m = r < 0 ? -1 : (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
  a->err = m < 0 ? errno : 0;
  a->fd = m;
  if (fs >= 0) close(fs);
  return 0;
}

/*
 * procFor(pidfd): a detached proc mount of the pid namespace whose PID 1 is the pidfd's
 * process, or { errno }. A template's fork cannot mount a full proc itself: the template's
 * proc is masked by locked mounts, so the kernel refuses one in that user namespace
 * (mount_too_revealing). Host root can: this thread joins the namespace for its children,
 * a vfork'd task (sharing our memory and fd table, raw syscalls only) mounts it, and the
 * thread goes back.
 */
static napi_value ProcFor(napi_env env, napi_callback_info info) {
  int pidfd = arg_int(env, info, 0);
  int self = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC);
  if (self < 0) return failure(env, errno);
  if (setns(pidfd, CLONE_NEWPID) < 0) {
    int e = errno;
    close(self);
    return failure(env, e);
  }
  static char stack[64 * 1024] __attribute__((aligned(16)));
  struct proc_args a = {-1, 0};
  int pid = clone(proc_child, stack + sizeof stack, CLONE_VM | CLONE_FILES | CLONE_VFORK | SIGCHLD, &a);
  int e = pid < 0 ? errno : 0;
  if (pid > 0) {
    int st;
    while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
  if (setns(self, CLONE_NEWPID) < 0) abort(); /* cannot leave this thread in a sandbox's namespace */
  close(self);
  if (pid < 0) return failure(env, e);
  if (a.fd < 0) return failure(env, a.err);
  return num(env, a.fd);
}

/* pidfdOpen(pid): a pidfd (close-on-exec by the kernel), or { errno }. */
static napi_value PidfdOpen(napi_env env, napi_callback_info info) {
  int fd = (int)syscall(SYS_pidfd_open, arg_int(env, info, 0), 0);
  return fd < 0 ? failure(env, errno) : num(env, fd);
}

/* pidfdGetfd(pidfd, fd): a close-on-exec copy of that process's fd, or { errno }. */
static napi_value PidfdGetfd(napi_env env, napi_callback_info info) {
  int fd = (int)syscall(SYS_pidfd_getfd, arg_int(env, info, 0), arg_int(env, info, 1), 0);
  return fd < 0 ? failure(env, errno) : num(env, fd);
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor d[] = {
      {"socketPair", NULL, SocketPair, NULL, NULL, NULL, napi_default, NULL},
      {"recvFds", NULL, RecvFds, NULL, NULL, NULL, napi_default, NULL},
      {"sendFds", NULL, SendFds, NULL, NULL, NULL, napi_default, NULL},
      {"procFor", NULL, ProcFor, NULL, NULL, NULL, napi_default, NULL},
      {"pidfdOpen", NULL, PidfdOpen, NULL, NULL, NULL, napi_default, NULL},
      {"pidfdGetfd", NULL, PidfdGetfd, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof d / sizeof d[0], d);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
