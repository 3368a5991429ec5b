/*
 * Seccomp listeners of init (EXEC_SECCOMP_NOTIFY): a part of init.c, in its own file for
 * size. Included once, by init.c, after CTL_FD and send_msg(); init-only code (never run by an
 * exec child), single-threaded.
 */
#ifndef HUTCH_INIT_LISTENERS_H
#define HUTCH_INIT_LISTENERS_H

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

/* ---- Seccomp listeners (EXEC_SECCOMP_NOTIFY) ----
 * An exec whose program refuses by SECCOMP_RET_USER_NOTIF | errno hands its filter's listener
 * to init before it execs; the exec's forks share the filter and so the listener. Init answers
 * each notification with -errno (never SECCOMP_USER_NOTIF_FLAG_CONTINUE: the call does not
 * run), and reports it to the host, at most REPORT_BURST at once and REPORT_PER_SECOND after,
 * counting the rest. The errno is the program's own: init runs the program over the
 * notification's seccomp_data and reads the data bits of its USER_NOTIF. A listener is closed
 * when no task uses its filter any more (POLLHUP); a notification nobody answers would keep its
 * caller waiting, and one whose caller died meanwhile is answered into the void (ENOENT). */
struct listener {
  int fd;
  uint32_t id;      /* the exec it was made for */
  uint32_t dropped; /* refusals not reported since the last message for it */
  uint32_t len;     /* instructions */
  struct sock_filter *prog;
  uint32_t cap;     /* bytes at prog */
};

static struct listener *listeners;
static size_t nlisteners, caplisteners;
/* The last program copy a closed listener had, kept for the next one: musl's malloc hands a
 * freed group's page back at once, an mmap and a munmap for every exec with a listener. */
static struct sock_filter *spare_prog;
static uint32_t spare_cap;
static struct pollfd poll_two[2]; /* the poll set until a listener needs more */
static struct pollfd *pollfds = poll_two;
static size_t cappollfds = 2;

/* Linux 6.6; older headers lack them. */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

#define REPORT_BURST 100.0
#define REPORT_PER_SECOND 100.0
static double report_tokens = REPORT_BURST;
static struct timespec report_refilled;

static int report_allowed(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  if (report_refilled.tv_sec == 0 && report_refilled.tv_nsec == 0) report_refilled = now;
  double dt = (double)(now.tv_sec - report_refilled.tv_sec) + (double)(now.tv_nsec - report_refilled.tv_nsec) / 1e9;
  report_refilled = now;
  report_tokens += dt * REPORT_PER_SECOND;
  if (report_tokens > REPORT_BURST) report_tokens = REPORT_BURST;
  if (report_tokens < 1.0) return 0;
  report_tokens -= 1.0;
  return 1;
}

/* Buffers for SECCOMP_IOCTL_NOTIF_RECV/SEND, as large as this kernel's structs (it may know
 * more fields than our headers): SECCOMP_GET_NOTIF_SIZES. */
static struct seccomp_notif *notif_req;
static struct seccomp_notif_resp *notif_resp;
static size_t notif_req_size, notif_resp_size;

static int notif_buffers(void) {
  if (notif_req) return 0;
  struct seccomp_notif_sizes sz;
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sz) < 0) return -1;
  notif_req_size = sz.seccomp_notif > sizeof *notif_req ? sz.seccomp_notif : sizeof *notif_req;
  notif_resp_size = sz.seccomp_notif_resp > sizeof *notif_resp ? sz.seccomp_notif_resp : sizeof *notif_resp;
  notif_req = calloc(1, notif_req_size);
  notif_resp = calloc(1, notif_resp_size);
  return notif_req && notif_resp ? 0 : -1;
}

/* Keeps a listener with its own copy of the program (msgbuf is the next message's), room for
 * it in the poll set, so that every listener is always polled, and the buffers to serve it:
 * whatever serving needs is had before the exec runs (or it does not run), never when a
 * caller is already waiting. */
static int add_listener(int fd, uint32_t id, const struct sock_filter *prog, uint32_t bytes) {
  if (notif_buffers() < 0) return -1;
  if (nlisteners == caplisteners) {
    size_t n = caplisteners ? caplisteners * 2 : 8;
    struct listener *p = realloc(listeners, n * sizeof *p);
    if (!p) return -1;
    listeners = p, caplisteners = n;
  }
  if (2 + nlisteners + 1 > cappollfds) {
    size_t n = 2 + caplisteners;
    struct pollfd *p = realloc(pollfds == poll_two ? NULL : pollfds, n * sizeof *p); /* poll_set fills it */
    if (!p) return -1;
    pollfds = p, cappollfds = n;
  }
  struct sock_filter *copy;
  uint32_t cap = bytes;
  if (spare_prog && spare_cap >= bytes) {
    copy = spare_prog, cap = spare_cap;
    spare_prog = NULL;
  } else {
    copy = malloc(bytes);
    if (!copy) return -1;
  }
  memcpy(copy, prog, bytes);
  /* The answer wakes the caller on init's CPU, as a switch, not a cross-CPU wake-up (6.6+;
   * older kernels refuse the flag and wake it the usual way). */
  ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0);
  listeners[nlisteners++] = (struct listener){fd, id, 0, bytes / (uint32_t)sizeof *prog, copy, cap};
  return 0;
}

/* The status socket's next record, with the listener it carries (if any) into *lfd. */
static ssize_t recv_status(int fd, uint32_t rec[2], int *lfd) {
  struct iovec iov = {rec, 2 * sizeof(uint32_t)};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } cbuf;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.buf, .msg_controllen = sizeof cbuf.buf};
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) return n;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(sizeof(int))) continue;
    int got;
    memcpy(&got, CMSG_DATA(c), sizeof got);
    if (*lfd >= 0) close(*lfd);
    *lfd = got;
  }
  return n;
}

/* Classic BPF as seccomp runs it, over one seccomp_data: what the program returns. An
 * instruction it does not know (hutch's compiler emits none) returns KILL_PROCESS, which the
 * caller answers as EPERM. */
static uint32_t run_filter(const struct sock_filter *p, uint32_t n, const struct seccomp_data *d) {
  uint32_t a = 0, x = 0, mem[BPF_MEMWORDS] = {0};
  for (uint32_t pc = 0; pc < n; pc++) {
    const struct sock_filter *f = &p[pc];
    uint32_t k = f->k, src = BPF_SRC(f->code) == BPF_X ? x : k;
    switch (BPF_CLASS(f->code)) {
    case BPF_LD:
      if (f->code == (BPF_LD | BPF_W | BPF_ABS) && k <= sizeof *d - 4 && (k & 3) == 0) memcpy(&a, (const char *)d + k, 4);
      else if (f->code == (BPF_LD | BPF_W | BPF_LEN)) a = sizeof *d;
      else if (f->code == (BPF_LD | BPF_IMM)) a = k;
      else if (f->code == (BPF_LD | BPF_MEM) && k < BPF_MEMWORDS) a = mem[k];
      else return SECCOMP_RET_KILL_PROCESS;
      break;
    case BPF_LDX:
      if (f->code == (BPF_LDX | BPF_W | BPF_LEN)) x = sizeof *d;
      else if (f->code == (BPF_LDX | BPF_IMM)) x = k;
      else if (f->code == (BPF_LDX | BPF_MEM) && k < BPF_MEMWORDS) x = mem[k];
      else return SECCOMP_RET_KILL_PROCESS;
      break;
    case BPF_ST:
    case BPF_STX:
      if (k >= BPF_MEMWORDS) return SECCOMP_RET_KILL_PROCESS;
      mem[k] = BPF_CLASS(f->code) == BPF_ST ? a : x;
      break;
    case BPF_ALU:
      switch (BPF_OP(f->code)) {
      case BPF_ADD: a += src; break;
      case BPF_SUB: a -= src; break;
      case BPF_MUL: a *= src; break;
      case BPF_DIV: if (src == 0) return SECCOMP_RET_KILL_PROCESS; a /= src; break;
      case BPF_MOD: if (src == 0) return SECCOMP_RET_KILL_PROCESS; a %= src; break;
      case BPF_OR: a |= src; break;
      case BPF_AND: a &= src; break;
      case BPF_XOR: a ^= src; break;
      case BPF_LSH: a = src < 32 ? a << src : 0; break;
      case BPF_RSH: a = src < 32 ? a >> src : 0; break;
      case BPF_NEG: a = -a; break;
      default: return SECCOMP_RET_KILL_PROCESS;
      }
      break;
    case BPF_JMP: {
      uint32_t skip;
      switch (BPF_OP(f->code)) {
      case BPF_JA: skip = k; break;
      case BPF_JEQ: skip = a == src ? f->jt : f->jf; break;
      case BPF_JGT: skip = a > src ? f->jt : f->jf; break;
      case BPF_JGE: skip = a >= src ? f->jt : f->jf; break;
      case BPF_JSET: skip = (a & src) ? f->jt : f->jf; break;
      default: return SECCOMP_RET_KILL_PROCESS;
      }
      if (skip >= n - pc) return SECCOMP_RET_KILL_PROCESS;
      pc += skip;
      break;
    }
    case BPF_RET:
      return BPF_RVAL(f->code) == BPF_A ? a : k;
    case BPF_MISC:
      if (BPF_MISCOP(f->code) == BPF_TAX) x = a;
      else a = x;
      break;
    }
  }
  return SECCOMP_RET_KILL_PROCESS;
}

static void send_violation(struct listener *l, int32_t pid, int32_t nr, uint32_t arch, uint32_t err, uint32_t flags) {
  struct violation_msg m = {MSG_VIOLATION, l->id, pid, nr, arch, err, l->dropped, flags};
  l->dropped = 0;
  send_msg(&m, sizeof m);
}

/* Before an exec's MSG_EXITED: how many of its refusals went unreported, so its result has them. */
static void flush_dropped(uint32_t id) {
  for (size_t i = 0; i < nlisteners; i++)
    if (listeners[i].id == id && listeners[i].fd >= 0 && listeners[i].dropped) send_violation(&listeners[i], 0, -1, 0, 0, VIOLATION_COUNT_ONLY);
}

/* One notification: answered with the program's errno, reported or counted. */
static void serve_one(struct listener *l) {
  memset(notif_req, 0, notif_req_size); /* RECV wants it zeroed */
  if (ioctl(l->fd, SECCOMP_IOCTL_NOTIF_RECV, notif_req) < 0) return; /* ENOENT: its caller is gone */
  uint32_t ret = run_filter(l->prog, l->len, &notif_req->data);
  uint32_t err = (ret & SECCOMP_RET_ACTION_FULL) == SECCOMP_RET_USER_NOTIF ? (ret & SECCOMP_RET_DATA) : EPERM;
  memset(notif_resp, 0, notif_resp_size);
  notif_resp->id = notif_req->id;
  notif_resp->error = -(int32_t)err;
  notif_resp->val = 0;
  notif_resp->flags = 0; /* never SECCOMP_USER_NOTIF_FLAG_CONTINUE: a refused call does not run */
  while (ioctl(l->fd, SECCOMP_IOCTL_NOTIF_SEND, notif_resp) < 0 && errno == EINTR) {
  }
  if (report_allowed()) send_violation(l, (int32_t)notif_req->pid, notif_req->data.nr, notif_req->data.arch, err, 0);
  else if (l->dropped < UINT32_MAX) l->dropped++;
}

/* The listeners' part of the poll set: a notification each, closed once no task uses them. */
static void serve_listeners(const struct pollfd *p, size_t n) {
  for (size_t i = 0; i < n && i < nlisteners; i++) {
    struct listener *l = &listeners[i];
    if (p[i].revents & POLLIN) serve_one(l);
    if (p[i].revents & (POLLHUP | POLLERR | POLLNVAL)) {
      if (l->dropped) send_violation(l, 0, -1, 0, 0, VIOLATION_COUNT_ONLY);
      close(l->fd);
      if (!spare_prog || spare_cap < l->cap) {
        free(spare_prog);
        spare_prog = l->prog, spare_cap = l->cap;
      } else {
        free(l->prog);
      }
      l->fd = -1;
    }
  }
  size_t k = 0;
  for (size_t i = 0; i < nlisteners; i++)
    if (listeners[i].fd >= 0) listeners[k++] = listeners[i];
  nlisteners = k;
}

/* The poll set: control socket, signalfd, listeners (add_listener made room for them). */
static struct pollfd *poll_set(int sfd) {
  pollfds[0] = (struct pollfd){CTL_FD, POLLIN, 0};
  pollfds[1] = (struct pollfd){sfd, POLLIN, 0};
  for (size_t i = 0; i < nlisteners; i++) pollfds[2 + i] = (struct pollfd){listeners[i].fd, POLLIN, 0};
  return pollfds;
}

#endif
