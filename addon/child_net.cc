// The sandbox's network namespace from inside. Runs in the child between clone and exec:
// raw syscalls only, no allocation, no errno.
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "child.h"
#include "sys.h"

// child; raw syscalls only. A new netns has `lo` down: bring it up (SIOCSIFFLAGS).
int loopback_up_in_child(void) {
  int s = (int)rsys3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return s;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, "lo", 3);
  int r = (int)rsys3(SYS_ioctl, s, SIOCGIFFLAGS, &ifr);
  if (r == 0) {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    r = (int)rsys3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
  }
  rsys1(SYS_close, s);
  return r < 0 ? r : 0;
}
