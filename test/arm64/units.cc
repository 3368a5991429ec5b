// Units of the addon's C++ that need no Node, compiled for another architecture (aarch64 by
// scripts/check-arm64.sh) and run under qemu-user: the setup-step table and its error record,
// SCM_RIGHTS fd passing (fdpass.cc), and the netlink request builder talking to the real
// kernel (netlink_msg.cc: RTM_GETLINK of "lo" through qemu's netlink translation). The addon's
// sources are included whole; their N-API functions are never referenced and the linker drops
// them (-ffunction-sections, --gc-sections).
#include "../../addon/fdpass.cc"
#include "../../addon/netlink_msg.cc"
#include "../../addon/steps.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

using namespace hutch_netlink;

static int failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
      failures++;                                                          \
    }                                                                      \
  } while (0)

static void test_steps() {
  // The same numbering on aarch64 as the list says: one entry per step, exec_init last.
  static const char *const names[] = {
#define X(id, name) name,
      HUTCH_STEPS(X)
#undef X
  };
  CHECK(STEP_COUNT == sizeof names / sizeof names[0]);
  CHECK(STEP_EXEC_INIT == STEP_COUNT - 1);
  CHECK(strcmp(names[STEP_EXEC_INIT], "exec_init") == 0);
  CHECK(strcmp(names[STEP_CLONE], "clone") == 0);
  CHECK(sizeof(setup_error) == 264);
  CHECK(offsetof(setup_error, detail) == 8);
}

static void test_fdpass() {
  int sv[2], p[2];
  CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
  CHECK(pipe2(p, O_CLOEXEC) == 0);
  int fds[1] = {p[1]};
  CHECK(send_with_fds(sv[0], "hello", 5, fds, 1) == 5);
  CHECK(send_with_fds(sv[0], "x", 1, fds, 254) == -EINVAL);
  char data[16];
  struct iovec iov;
  struct msghdr msg;
  FDMSG_CBUF(cbuf, 1);
  fdmsg_init(&msg, &iov, data, sizeof data, cbuf.buf, sizeof cbuf.buf);
  ssize_t n = recvmsg(sv[1], &msg, MSG_CMSG_CLOEXEC);
  CHECK(n == 5 && memcmp(data, "hello", 5) == 0);
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  CHECK(c && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)));
  if (c) {
    int got;
    memcpy(&got, CMSG_DATA(c), sizeof got);
    CHECK(write(got, "ok", 2) == 2);  // the received fd is the pipe's write end
    close(got);
  }
  char buf[4] = {0};
  CHECK(read(p[0], buf, sizeof buf) == 2 && memcmp(buf, "ok", 2) == 0);
  close(p[0]);
  close(p[1]);
  close(sv[0]);
  close(sv[1]);
}

static void test_netlink() {
  // The builder: a header, two attributes and a nest, each aligned as the kernel parses them.
  nl_req r;
  ifinfomsg *ifi = static_cast<ifinfomsg *>(msg_begin(r, RTM_NEWLINK, NLM_F_CREATE, sizeof(ifinfomsg)));
  CHECK(ifi != nullptr);
  attr_str(r, IFLA_IFNAME, "abc");  // 4 + 4 bytes
  rtattr *nest = nest_begin(r, IFLA_LINKINFO);
  attr_str(r, IFLA_INFO_KIND, "veth");  // 4 + 5 -> 12
  nest_end(r, nest);
  CHECK(r.count == 1);
  CHECK(r.len == NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(ifinfomsg)) + 8 + 4 + 12);
  CHECK(nest->rta_len == 4 + 12);
  CHECK(reinterpret_cast<nlmsghdr *>(r.buf)->nlmsg_len == r.len);
  // The kernel: the loopback of this network namespace is index 1; a missing link is ENODEV.
  int fd = nl_open();
  CHECK(fd >= 0);
  if (fd >= 0) {
    std::string detail;
    CHECK(ifindex_of(fd, "lo", &detail) == 1);
    CHECK(ifindex_of(fd, "hutch-none0", &detail) == -ENODEV);
    close(fd);
  }
}

int main() {
  struct utsname u;
  uname(&u);
  test_steps();
  test_fdpass();
  test_netlink();
#if defined(__aarch64__)
  const char *arch = "aarch64";
#elif defined(__x86_64__)
  const char *arch = "x86-64";
#else
  const char *arch = "other";
#endif
  printf("units (%s code, uname %s): %s\n", arch, u.machine, failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
