/*
 * One message with fds (SCM_RIGHTS) over a unix socket, in the shapes every part of hutch
 * uses: the addon's control socket to init (fdpass.cc), a child's go message (child.cc), a
 * template's fork sockets (zygote/helper.c, zygote/host.c). C and C++; memset, memcpy and
 * close only, so it serves between clone and exec too.
 */
#ifndef HUTCH_FDMSG_H
#define HUTCH_FDMSG_H

#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* A control buffer for up to N fds, aligned for struct cmsghdr. */
#define FDMSG_CBUF(name, n)                 \
  union {                                   \
    char buf[CMSG_SPACE(sizeof(int) * (n))]; \
    struct cmsghdr align;                   \
  } name

/* `msg` for one buffer, and a control buffer of `clen` bytes (NULL, 0: none). */
static inline void fdmsg_init(struct msghdr *msg, struct iovec *iov, void *data, size_t len, void *cbuf, size_t clen) {
  memset(msg, 0, sizeof *msg);
  iov->iov_base = data;
  iov->iov_len = len;
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  msg->msg_control = clen ? cbuf : NULL;
  msg->msg_controllen = clen;
}

/* Attaches `n` (> 0) fds to `msg`, whose control buffer holds at least CMSG_SPACE(n ints). */
static inline void fdmsg_put(struct msghdr *msg, const int *fds, size_t n) {
  msg->msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr *h = CMSG_FIRSTHDR(msg);
  h->cmsg_level = SOL_SOCKET;
  h->cmsg_type = SCM_RIGHTS;
  h->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(h), fds, sizeof(int) * n);
}

/* The fds a received `msg` carried, into `out` (at most `max`; any more are closed): how many. */
static inline size_t fdmsg_take(struct msghdr *msg, int *out, size_t max) {
  size_t k = 0;
  for (struct cmsghdr *h = CMSG_FIRSTHDR(msg); h; h = CMSG_NXTHDR(msg, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < cnt; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
      if (k < max) out[k++] = fd;
      else close(fd);
    }
  }
  return k;
}

#endif
