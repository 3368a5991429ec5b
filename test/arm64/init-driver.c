/* Drives a hutch-init of another architecture under qemu-user through its real control
 * protocol (addon/init/protocol.h), the way the addon does, on this machine's kernel:
 *   init-driver QEMU INIT [cwd-enosys]
 * The init runs as PID 1 of a new PID namespace (as in a sandbox; its kill(-1) at the end can
 * reach nothing else) with the SEQPACKET control socket as fd 3 and the setup pipe as fd 5 (READY_FD),
 * on which it must first say ready, as the addon expects. It is then sent an empty message
 * (answer: MSG_PROTOCOL_ERROR EPROTO), then an exec of /bin/echo with stdout on a pipe
 * (answers: MSG_STARTED, the output, MSG_EXITED with status 0; qemu-user passes execve to the
 * kernel, so echo itself is this machine's), then the socket is closed: init must exit 0.
 * With `cwd-enosys` (qemu-user before 9.1 has no openat2) the exec must instead fail at its
 * cwd step with ENOSYS: fork, fd passing, rlimits and the failure report still ran. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../addon/fdmsg.h"
#include "../../addon/init/protocol.h"

static int fail(const char *what) {
  fprintf(stderr, "init-driver: FAIL: %s (errno %d)\n", what, errno);
  return 1;
}

/* One message from init within 30 s (qemu's start is slow on a busy machine), or -1. */
static ssize_t recv_msg(int sock, void *buf, size_t len) {
  struct pollfd p = {sock, POLLIN, 0};
  if (poll(&p, 1, 30000) != 1) return -1;
  return recv(sock, buf, len, 0);
}

int main(int argc, char **argv) {
  int cwd_enosys = argc == 4 && strcmp(argv[3], "cwd-enosys") == 0;
  if (argc != 3 && !cwd_enosys) {
    fprintf(stderr, "usage: init-driver QEMU INIT [cwd-enosys]\n");
    return 2;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return fail("socketpair");
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return fail("pipe2");
  if (unshare(CLONE_NEWPID) < 0) return fail("unshare(CLONE_NEWPID)");
  pid_t pid = fork();
  if (pid < 0) return fail("fork");
  if (pid == 0) {
    if (dup2(sv[1], 3) < 0 || dup2(ready[1], READY_FD) < 0) _exit(126);
    execl(argv[1], argv[1], argv[2], (char *)NULL);
    _exit(127);
  }
  close(sv[1]);
  close(ready[1]);
  int sock = sv[0];
  uint8_t buf[4096];

  /* 0. init says ready on its setup pipe: one record whose step is SETUP_READY, then EOF. */
  {
    uint32_t rec[SETUP_RECORD_SIZE / 4];
    struct pollfd p = {ready[0], POLLIN, 0};
    if (poll(&p, 1, 30000) != 1 || read(ready[0], rec, sizeof rec) != (ssize_t)sizeof rec || rec[0] != SETUP_READY)
      return fail("init did not say ready on its setup pipe (fd 5)");
    close(ready[0]);
  }

  /* 1. An empty message is malformed: MSG_PROTOCOL_ERROR, id 0, EPROTO. */
  if (send(sock, "", 0, 0) < 0) return fail("send empty");
  struct protocol_error_msg pe;
  if (recv_msg(sock, &pe, sizeof pe) != sizeof pe || pe.type != MSG_PROTOCOL_ERROR || pe.code != EPROTO)
    return fail("no MSG_PROTOCOL_ERROR/EPROTO for an empty message");

  /* 2. An exec: echo with stdout on a pipe. */
  int out[2];
  if (pipe(out) < 0) return fail("pipe");
  int devnull = open("/dev/null", O_RDWR);
  const char strings[] = "/\0/bin/echo\0hello from the init\0PATH=/usr/bin:/bin";
  struct exec_req r;
  memset(&r, 0, sizeof r);
  r.type = MSG_EXEC;
  r.id = 7;
  r.caps = 0;
  r.flags = EXEC_NO_NEW_PRIVS;
  r.argc = 2;
  r.envc = 1;
  r.strings_len = sizeof strings;
  memcpy(buf, &r, sizeof r);
  memcpy(buf + sizeof r, strings, sizeof strings);
  int fds[3] = {devnull, out[1], devnull};
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(cbuf, 3);
  fdmsg_init(&msg, &iov, buf, sizeof r + sizeof strings, cbuf.buf, sizeof cbuf.buf);
  fdmsg_put(&msg, fds, 3);
  if (sendmsg(sock, &msg, 0) < 0) return fail("send exec");
  close(out[1]);
  close(devnull);
  union {
    struct started_msg started;
    struct failed_msg failed;
    struct exited_msg exited;
  } m;
  memset(&m, 0, sizeof m);
  ssize_t got = recv_msg(sock, &m, sizeof m);
  int32_t exec_pid = 0;
  if (cwd_enosys) {
    if (got != sizeof m.failed || m.failed.type != MSG_FAILED || m.failed.id != 7 || m.failed.step != XSTEP_CWD || m.failed.err != ENOSYS)
      return fail("expected MSG_FAILED at the cwd step with ENOSYS (qemu-user without openat2)");
    close(out[0]);
  } else {
    if (got != sizeof m.started || m.started.type != MSG_STARTED || m.started.id != 7) {
      if (m.failed.type == MSG_FAILED) fprintf(stderr, "init-driver: MSG_FAILED step %u errno %d\n", m.failed.step, m.failed.err);
      return fail("no MSG_STARTED for the exec");
    }
    exec_pid = m.started.pid;
    char text[64] = {0};
    ssize_t n = read(out[0], text, sizeof text - 1);
    if (n <= 0 || strcmp(text, "hello from the init\n") != 0) return fail("the exec's output is not echo's");
    memset(&m, 0, sizeof m);
    if (recv_msg(sock, &m, sizeof m) != sizeof m.exited || m.exited.type != MSG_EXITED || m.exited.id != 7 ||
        !WIFEXITED(m.exited.status) || WEXITSTATUS(m.exited.status) != 0)
      return fail("no MSG_EXITED with status 0");
  }

  /* 3. The owner hangs up: init kills what is left and exits 0. */
  close(sock);
  int status;
  if (waitpid(pid, &status, 0) != pid) return fail("waitpid");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "init-driver: FAIL: init ended with status 0x%x\n", status);
    return 1;
  }
  if (cwd_enosys)
    printf("init-driver: %s: ready, protocol error, exec failure report (cwd: ENOSYS, qemu has no openat2) and hang-up as expected\n", argv[2]);
  else
    printf("init-driver: %s: ready, protocol error, exec (pid %d in its namespace), exit report and hang-up as expected\n", argv[2], exec_pid);
  return 0;
}
