// The resolved plan of one sandbox, built by the parent (clone.cc) from the object that
// lib/plan.ts makes, before clone. The child only reads it: every string and array here is
// allocated before clone and never touched again until the parent frees it.
#pragma once
#include <string>
#include <vector>

struct bind_op {
  int tree_fd;         // a detached mount tree (open_tree(OPEN_TREE_CLONE) + mount_setattr), made by the parent
  std::string target;  // path inside the new root, relative (no leading '/'), normalised by lib/
  bool is_file;        // create the target as a file, not a directory, when it is missing
};

// The most fds one go message carries to a blank child (the kernel's SCM_MAX_FD).
static const size_t kMaxGoFds = 253;

struct plan {
  // A blank child is cloned before its setup is known; releaseBlank fills the setup fields
  // below and sends its fds with the go message.
  bool blank = false;
  std::string hostname;
  std::string layers_dir;       // the store's layers directory: lowerdirs are relative to it
  std::string lowerdirs;        // "top:...:bottom", names relative to layers_dir
  bool legacy_overlay = false;  // before 6.8 (no "lowerdir+"): overlay through mount(2)'s data
  std::vector<int> layer_fds;   // optional, parallel to lowerdirs: idmapped trees mounted over each layer first
  std::string scratch_size;     // tmpfs size= for the writable layer, in bytes
  std::string shm_size;         // tmpfs size= for /dev/shm, in bytes (lib/ decides: limits.ts)
  std::string upper_dir;        // persistent: an on-disk dir holding upper/ and work/ instead of the tmpfs
  std::string root_mountpoint;  // an empty host directory where the root is attached before pivot_root
  std::vector<bind_op> binds;
  std::vector<std::string> masked;    // relative paths hidden (file: /dev/null over it; dir: empty ro tmpfs)
  std::vector<std::string> readonly;  // relative paths remounted read-only
  bool readonly_root = false;
  std::vector<std::string> init_args;
  std::vector<const char *> init_argv;  // points into init_args, NULL-terminated
  std::vector<const char *> init_envp;  // empty, NULL-terminated: init needs no environment

  // Set up by clone.cc before clone.
  int init_fd = -1;    // sealed memfd holding the init binary
  int sync_fd = -1;    // go: one byte (and a blank child's fds) on a SEQPACKET socket; id maps are in place
  int err_fd = -1;     // child writes a setup_error record; close-on-exec, so EOF means exec happened
  int ctl_fd = -1;     // the child's end of the control socket; becomes fd 3 of init
  std::vector<int> join_fds;  // v1 `tasks` files, opened by the parent: the child writes "0" to each
  std::vector<std::string> join_paths;  // their paths, for the error record
  // The helper that makes the setup mount namespace (child_lock.cc): its stack (CLONE_VM) and
  // the pipe it reports on, made by the child.
  std::vector<char> holder_stack;
  int holder_pipe[2] = {-1, -1};
  int holder_pid = -1;
  int parent_fds[3] = {-1, -1, -1};  // the parent's ends (sync write, error read, control): the
                                     // child closes its copies first, or the parent's death
                                     // would never reach it as EOF
};

// child.cc: the setup sequence. Runs in the child between clone and exec: async-signal-safe
// only, no allocation. Never returns.
[[noreturn]] void run_child(plan &p);
