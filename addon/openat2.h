// The one openat2 of the host-side code that reads or writes a tree it does not trust (an
// image layer being extracted or read, a sandbox's root): the kernel resolves the path with
// `resolve` and never lets it out; EAGAIN (a rename raced the lookup) and EINTR are retried.
// Returns the fd, or -1 with errno set.
#pragma once
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Beneath a directory fd, through real directories only: no symlink, no /proc magic link, no
// other mount (a layer or a store tree never contains either legitimately).
constexpr unsigned long long kResolveBeneath = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;

inline int openat2_retry(int dfd, const char *path, int flags, unsigned long long resolve, unsigned long long mode = 0) {
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (unsigned long long)(flags | O_CLOEXEC | ((flags & O_PATH) ? 0 : O_NOCTTY));
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = resolve;
  int fd;
  do fd = (int)syscall(SYS_openat2, dfd, path, &how, sizeof how); while (fd < 0 && (errno == EAGAIN || errno == EINTR));
  return fd;
}
