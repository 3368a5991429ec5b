// The setup steps of a sandbox, in the order they run. One list: the child reports the
// step's number, the addon exports the names at load, and lib/setup-errors.ts keys its hints
// on the names (a test checks the two lists agree).
#pragma once

#define HUTCH_STEPS(X)                                  \
  X(CLONE, "clone")                                     \
  X(SYNC, "sync")                                       \
  X(ID_MAP, "id_map")                                   \
  X(CGROUP, "cgroup")                                   \
  X(SETID, "setid")                                     \
  X(HOSTNAME, "hostname")                               \
  X(MOUNT_NS, "mount_ns")                               \
  X(MOUNT_PRIVATE, "mount_private")                     \
  X(SCRATCH, "scratch")                                 \
  X(LAYERS, "layers")                                   \
  X(OVERLAY, "overlay")                                 \
  X(ROOT_ATTACH, "root_attach")                         \
  X(BIND, "bind")                                       \
  X(PROC, "proc")                                       \
  X(DEV, "dev")                                         \
  X(MASK, "mask")                                       \
  X(READONLY, "readonly")                               \
  X(PIVOT_ROOT, "pivot_root")                           \
  X(LOCK_MOUNTS, "lock_mounts")                         \
  X(LOOPBACK, "loopback")                               \
  X(FDS, "fds")                                         \
  X(EXEC_INIT, "exec_init")

enum hutch_step : unsigned {
#define X(id, name) STEP_##id,
  HUTCH_STEPS(X)
#undef X
  STEP_COUNT
};

// The name of a step, as lib/ knows it; nullptr past the list.
static inline const char *step_name(unsigned step) {
  static const char *const names[] = {
#define X(id, name) name,
      HUTCH_STEPS(X)
#undef X
  };
  return step < STEP_COUNT ? names[step] : nullptr;
}

// What a failing child writes to the error pipe before _exit(127): fixed size, filled on
// the stack, `detail` copied from the plan (a path), never formatted.
struct setup_error {
  unsigned step;
  int err;  // positive errno
  char detail[256];
};

#include "init/protocol.h"
static_assert(sizeof(setup_error) == SETUP_RECORD_SIZE, "init/protocol.h: SETUP_RECORD_SIZE");
