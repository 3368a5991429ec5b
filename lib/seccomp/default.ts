import type { SeccompArg, SeccompProfile, SeccompSyscallRule } from './profile.js';

// hutch's default seccomp profile. Its decisions are those of Docker's current default
// profile (moby profiles/seccomp/default.json) on x86_64 and aarch64: an allowlist, anything
// else ERRNO(EPERM), with capability-gated groups. It is written here grouped by what the
// calls do; docs/seccomp.md lists what it denies and why. Where it says it differently
// from Docker (socket, below), the decision for every well-formed call is the same.

/** Calls every program may make, grouped by concern. */
const ALWAYS = {
  pathsAndMetadata: [
    'access', 'chdir', 'chmod', 'chown', 'creat', 'faccessat', 'faccessat2', 'fchdir', 'fchmod', 'fchmodat',
    'fchmodat2', 'fchown', 'fchownat', 'fstat', 'fstatfs', 'futimesat', 'getcwd', 'getdents', 'getdents64',
    'lchown', 'link', 'linkat', 'lstat', 'mkdir', 'mkdirat', 'mknod', 'mknodat', 'name_to_handle_at',
    'newfstatat', 'open', 'openat', 'openat2', 'readlink', 'readlinkat', 'rename', 'renameat', 'renameat2',
    'rmdir', 'stat', 'statfs', 'statx', 'symlink', 'symlinkat', 'truncate', 'umask', 'unlink', 'unlinkat',
    'utime', 'utimensat', 'utimes', 'listmount', 'statmount',
  ],
  extendedAttributes: [
    'fgetxattr', 'flistxattr', 'fremovexattr', 'fsetxattr', 'getxattr', 'getxattrat', 'lgetxattr', 'listxattr',
    'listxattrat', 'llistxattr', 'lremovexattr', 'lsetxattr', 'removexattr', 'removexattrat', 'setxattr',
    'setxattrat',
  ],
  fileDescriptorIo: [
    'close', 'close_range', 'copy_file_range', 'dup', 'dup2', 'dup3', 'fadvise64', 'fallocate', 'fcntl',
    'fdatasync', 'flock', 'fsync', 'ftruncate', 'lseek', 'pipe', 'pipe2', 'pread64', 'preadv',
    'preadv2', 'pwrite64', 'pwritev', 'pwritev2', 'read', 'readahead', 'readv', 'sendfile', 'splice', 'sync',
    'sync_file_range', 'syncfs', 'tee', 'vmsplice', 'write', 'writev',
  ],
  asyncIo: ['io_cancel', 'io_destroy', 'io_getevents', 'io_pgetevents', 'io_setup', 'io_submit', 'ioprio_get', 'ioprio_set'],
  eventsAndPolling: [
    'epoll_create', 'epoll_create1', 'epoll_ctl', 'epoll_ctl_old', 'epoll_pwait', 'epoll_pwait2', 'epoll_wait',
    'epoll_wait_old', 'eventfd', 'eventfd2', 'fanotify_mark', 'inotify_add_watch', 'inotify_init',
    'inotify_init1', 'inotify_rm_watch', 'poll', 'ppoll', 'pselect6', 'select', '_newselect', 'signalfd',
    'signalfd4', 'timerfd_create', 'timerfd_gettime', 'timerfd_settime',
  ],
  memory: [
    'brk', 'cachestat', 'madvise', 'map_shadow_stack', 'membarrier', 'memfd_create', 'memfd_secret', 'mincore',
    'mlock', 'mlock2', 'mlockall', 'mmap', 'mprotect', 'mremap', 'mseal', 'msync', 'munlock', 'munlockall',
    'munmap', 'pkey_alloc', 'pkey_free', 'pkey_mprotect', 'remap_file_pages',
  ],
  processesAndThreads: [
    'capget', 'capset', 'execve', 'execveat', 'exit', 'exit_group', 'fork', 'vfork', 'futex', 'futex_requeue',
    'futex_wait', 'futex_waitv', 'futex_wake', 'getcpu', 'getpgid', 'getpgrp', 'getpid', 'getppid',
    'getpriority', 'getrandom', 'getrlimit', 'get_robust_list', 'getrusage', 'getsid', 'gettid',
    'get_thread_area', 'kill', 'landlock_add_rule', 'landlock_create_ruleset', 'landlock_restrict_self',
    'pause', 'pidfd_open', 'pidfd_send_signal', 'prctl', 'prlimit64', 'process_mrelease', 'restart_syscall',
    'riscv_hwprobe', 'rseq', 'sched_getaffinity', 'sched_getattr', 'sched_getparam', 'sched_get_priority_max',
    'sched_get_priority_min', 'sched_getscheduler', 'sched_rr_get_interval', 'sched_setaffinity',
    'sched_setattr', 'sched_setparam', 'sched_setscheduler', 'sched_yield', 'seccomp', 'setpgid',
    'setpriority', 'setrlimit', 'set_robust_list', 'setsid', 'set_thread_area', 'set_tid_address', 'sysinfo',
    'tgkill', 'times', 'tkill', 'uname', 'uretprobe', 'wait4', 'waitid', 'waitpid',
  ],
  credentials: [
    'getegid', 'geteuid', 'getgid', 'getgroups', 'getresgid', 'getresuid', 'getuid', 'setfsgid', 'setfsuid',
    'setgid', 'setgroups', 'setregid', 'setresgid', 'setresuid', 'setreuid', 'setuid',
  ],
  signals: [
    'rt_sigaction', 'rt_sigpending', 'rt_sigprocmask', 'rt_sigqueueinfo', 'rt_sigreturn', 'rt_sigsuspend',
    'rt_sigtimedwait', 'rt_tgsigqueueinfo', 'sigaltstack', 'sigprocmask', 'sigreturn',
  ],
  time: [
    'adjtimex', 'alarm', 'clock_adjtime', 'clock_getres', 'clock_gettime', 'clock_nanosleep', 'getitimer',
    'gettimeofday', 'nanosleep', 'setitimer', 'time', 'timer_create', 'timer_delete', 'timer_getoverrun',
    'timer_gettime', 'timer_settime',
  ],
  sysvAndPosixIpc: [
    'ipc', 'mq_getsetattr', 'mq_notify', 'mq_open', 'mq_timedreceive', 'mq_timedsend', 'mq_unlink', 'msgctl',
    'msgget', 'msgrcv', 'msgsnd', 'semctl', 'semget', 'semop', 'semtimedop', 'shmat', 'shmctl', 'shmdt',
    'shmget',
  ],
  sockets: [
    'accept', 'accept4', 'bind', 'connect', 'getpeername', 'getsockname', 'getsockopt', 'listen', 'recv',
    'recvfrom', 'recvmmsg', 'recvmsg', 'send', 'sendmmsg', 'sendmsg', 'sendto', 'setsockopt', 'shutdown',
    'socketcall', 'socketpair',
  ],
  // The 32-bit ABIs' spellings of the calls above. Neither x86_64 nor aarch64 has them (hutch
  // kills i386 and arm32 entries outright), so they are skipped there; they are kept so the
  // allowlist reads the same as Docker's wherever it is compared.
  thirtyTwoBitVariants: [
    'chown32', 'fchown32', 'fcntl64', 'fstat64', 'fstatat64', 'fstatfs64', 'ftruncate64', 'getegid32',
    'geteuid32', 'getgid32', 'getgroups32', 'getresgid32', 'getresuid32', 'getuid32', 'lchown32', '_llseek',
    'lstat64', 'mmap2', 'sendfile64', 'setfsgid32', 'setfsuid32', 'setgid32', 'setgroups32', 'setregid32',
    'setresgid32', 'setresuid32', 'setreuid32', 'setuid32', 'stat64', 'statfs64', 'truncate64', 'ugetrlimit',
    'fadvise64_64', 'clock_adjtime64', 'clock_getres_time64', 'clock_gettime64', 'clock_nanosleep_time64',
    'futex_time64', 'io_pgetevents_time64', 'mq_timedreceive_time64', 'mq_timedsend_time64', 'ppoll_time64',
    'pselect6_time64', 'recvmmsg_time64', 'rt_sigtimedwait_time64', 'sched_rr_get_interval_time64',
    'semtimedop_time64', 'timer_gettime64', 'timer_settime64', 'timerfd_gettime64', 'timerfd_settime64',
    'utimensat_time64',
  ],
};

/**
 * Calls allowed only with a capability. Without it they fail with EPERM, the same answer the
 * kernel would give for the missing capability, so programs see nothing new.
 */
const WITH_CAPABILITY: Record<string, string[]> = {
  // Namespaces, mounts, and kernel state that is global to the host (clone is below).
  SYS_ADMIN: [
    'bpf', 'clone', 'clone3', 'fanotify_init', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'lookup_dcookie',
    'lsm_get_self_attr', 'lsm_list_modules', 'lsm_set_self_attr', 'mount', 'mount_setattr', 'move_mount',
    'open_tree', 'perf_event_open', 'quotactl', 'quotactl_fd', 'setdomainname', 'sethostname', 'setns',
    'syslog', 'umount', 'umount2', 'unshare',
  ],
  DAC_READ_SEARCH: ['open_by_handle_at'],
  SYS_BOOT: ['reboot'],
  SYS_CHROOT: ['chroot'],
  SYS_MODULE: ['delete_module', 'init_module', 'finit_module'],
  SYS_PACCT: ['acct'],
  SYS_PTRACE: ['kcmp', 'pidfd_getfd', 'process_madvise', 'process_vm_readv', 'process_vm_writev', 'ptrace'],
  SYS_RAWIO: ['iopl', 'ioperm'],
  SYS_TIME: ['settimeofday', 'stime', 'clock_settime', 'clock_settime64'],
  SYS_TTY_CONFIG: ['vhangup'],
  SYS_NICE: ['get_mempolicy', 'mbind', 'set_mempolicy', 'set_mempolicy_home_node'],
  SYSLOG: ['syslog'],
  BPF: ['bpf'],
  PERFMON: ['perf_event_open'],
};

/** clone(2) flags that create namespaces; clone without CAP_SYS_ADMIN must not set any of them. */
const CLONE_NAMESPACE_FLAGS =
  0x00020000 | // CLONE_NEWNS
  0x02000000 | // CLONE_NEWCGROUP
  0x04000000 | // CLONE_NEWUTS
  0x08000000 | // CLONE_NEWIPC
  0x10000000 | // CLONE_NEWUSER
  0x20000000 | // CLONE_NEWPID
  0x40000000; //  CLONE_NEWNET

/**
 * personality(2) values programs use (PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26,
 * and 0xffffffff to query); other personas (e.g. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weaken
 * the process's own hardening.
 */
const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

/** Address families refused to socket(2): AF_ALG (38, kernel crypto) and AF_VSOCK (40, to the host). */
const REFUSED_FAMILIES = [38, 40];

/**
 * ioctl(2) requests refused: TIOCSTI (0x5412) pushes bytes into a terminal's input as if typed,
 * TIOCLINUX (0x541c) reaches the virtual console (its selection paste does the same): the
 * CVE-2017-5226 class, a sandboxed program typing commands into the terminal it was run from.
 * hutch never hands the host's terminal in, and these close it for any terminal a program has.
 */
const REFUSED_IOCTLS = [0x5412, 0x541c];

/**
 * The 32-bit values other than `refused`, as a list of (mask, value) pairs, each the set
 * `(x & mask) === value`: the siblings met walking down each refused value's bits from bit
 * 31. They are disjoint; the one holding 0..31 (every common family) comes first.
 */
function complementCubes(refused: readonly number[]): { mask: number; value: number }[] {
  const out: { mask: number; value: number }[] = [];
  const walk = (bit: number, prefix: number, values: readonly number[]): void => {
    if (values.length === 0) {
      // every value with these high bits: the mask keeps bits 31..bit+1
      out.push({ mask: bit === 31 ? 0 : (~0 << (bit + 1)) >>> 0, value: prefix >>> 0 });
      return;
    }
    if (bit < 0) return; // exactly a refused value
    const one = (prefix | (1 << bit)) >>> 0;
    walk(bit - 1, prefix, values.filter((v) => (v & (1 << bit)) === 0));
    walk(bit - 1, one, values.filter((v) => (v & (1 << bit)) !== 0));
  };
  walk(31, 0, refused);
  return out.sort((a, b) => a.value - b.value);
}

const arg0 = (op: SeccompArg['op'], value: number, valueTwo?: number): SeccompArg[] => [
  valueTwo === undefined ? { index: 0, op, value } : { index: 0, op, value, valueTwo },
];

function buildDefault(): SeccompProfile {
  const rules: SeccompSyscallRule[] = [];
  rules.push({ names: Object.values(ALWAYS).flat(), action: 'SCMP_ACT_ALLOW', comment: 'everyday calls' });
  // Since 4.8 seccomp runs after ptrace's changes, so a tracer can no longer bypass the filter.
  rules.push({
    names: ['process_vm_readv', 'process_vm_writev', 'ptrace'],
    action: 'SCMP_ACT_ALLOW',
    includes: { minKernel: '4.8' },
  });
  // socket(2): every family but the refused ones, said as allow rules only, so that Docker
  // reads this JSON as hutch does (runc drops a rule whose action is the default one, and
  // libseccomp lets an unconditional rule replace every conditional one for the call).
  // Docker allows the 64-bit ranges around 38 and 40; these rules test the low 32 bits (the
  // kernel reads `int family`), so 38 and 40 with garbage in the upper half of the register,
  // which a 64-bit range test lets through, are refused too. 34 disjoint rules; the first
  // holds families 0..31, so a common socket() is allowed after one test.
  for (const { mask, value } of complementCubes(REFUSED_FAMILIES)) {
    rules.push({ names: ['socket'], action: 'SCMP_ACT_ALLOW', args: arg0('SCMP_CMP_MASKED_EQ', mask, value) });
  }
  // ioctl(2): every request but the refused ones, said as allow rules as for socket (the
  // kernel reads `unsigned int cmd`, the low 32 bits of argument 1).
  for (const { mask, value } of complementCubes(REFUSED_IOCTLS)) {
    rules.push({ names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, op: 'SCMP_CMP_MASKED_EQ', value: mask, valueTwo: value }] });
  }
  for (const persona of PERSONALITIES) {
    rules.push({ names: ['personality'], action: 'SCMP_ACT_ALLOW', args: arg0('SCMP_CMP_EQ', persona) });
  }
  rules.push({ names: ['arch_prctl'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32'] } });
  rules.push({ names: ['modify_ldt'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64', 'x32', 'x86'] } });
  for (const [cap, names] of Object.entries(WITH_CAPABILITY)) {
    rules.push({ names, action: 'SCMP_ACT_ALLOW', includes: { caps: [`CAP_${cap}`] } });
  }
  // Without CAP_SYS_ADMIN: clone only without namespace flags (s390's argument order differs,
  // which matters to no arch hutch builds for), and clone3, whose flags live in memory that
  // seccomp cannot read, answers ENOSYS so that libc falls back to clone.
  rules.push({
    names: ['clone'],
    action: 'SCMP_ACT_ALLOW',
    args: arg0('SCMP_CMP_MASKED_EQ', CLONE_NAMESPACE_FLAGS),
    excludes: { caps: ['CAP_SYS_ADMIN'], arches: ['s390', 's390x'] },
  });
  rules.push({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38, excludes: { caps: ['CAP_SYS_ADMIN'] } });
  return { defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 1, syscalls: rules };
}

/** The default profile. Treat it as read-only: compiled programs are cached by its identity. */
export const DEFAULT_SECCOMP_PROFILE: SeccompProfile = buildDefault();
