/*
 * The capability steps of confining a process before it runs untrusted code, shared by
 * init's exec child (init.c) and a template fork's task (zygote/helper.c). Raw syscalls
 * only. Each returns 0, or -1 with errno.
 */
#ifndef HUTCH_CONFINE_H
#define HUTCH_CONFINE_H

#include <errno.h>
#include <linux/capability.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The bounding set reduced to `keep`, the ambient set cleared; a non-root uid then loses the
 * rest on setresuid (no KEEPCAPS). */
static inline int drop_bounding_caps(uint64_t keep) {
  for (int cap = 0; cap < 64; cap++) {
    if (keep & (1ULL << cap)) continue;
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) break; /* past CAP_LAST_CAP */
      return -1;
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) return -1;
  return 0;
}

/* After setresuid: `caps` effective and permitted for uid 0, none for any other uid. */
static inline int set_caps(uint32_t uid, uint64_t caps) {
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (uid == 0) {
    data[0].effective = data[0].permitted = (uint32_t)caps;
    data[1].effective = data[1].permitted = (uint32_t)(caps >> 32);
  }
  return (int)syscall(SYS_capset, &hdr, data);
}

#endif
