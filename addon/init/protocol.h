/* The control protocol between the Node process (lib/protocol.ts mirrors it) and init, over
 * a SOCK_SEQPACKET socket: one message per request or report, host byte order, fixed headers
 * followed by variable parts. A message that does not parse gets MSG_PROTOCOL_ERROR back and
 * changes nothing. */
#pragma once
#include <stdint.h>

#define HUTCH_PROTOCOL_VERSION 1

/* Init's end of the setup error pipe (the addon's steps.h: struct setup_error). Once running,
 * init writes one record whose step is SETUP_READY there and closes it: the host takes only
 * that record as success, and EOF without it as init dying before it was ready. */
#define READY_FD 5
#define SETUP_READY 0xffffffffu
#define SETUP_RECORD_SIZE 264 /* sizeof(struct setup_error) */

enum msg_type {
  MSG_EXEC = 1,  /* struct exec_req, [struct tty_req], rlimits, seccomp program, strings; fds: stdin, stdout,
                  * stderr (none with EXEC_TTY: init makes a pty and sends its master with MSG_STARTED) */
  MSG_KILL = 2,  /* struct kill_req */
  MSG_STARTED = 101, /* with EXEC_TTY: one fd, the pty's master (SCM_RIGHTS) */
  MSG_FAILED = 102,
  MSG_EXITED = 103,
  MSG_PROTOCOL_ERROR = 104,
  MSG_VIOLATION = 105, /* struct violation_msg: a call the exec's seccomp program refused (EXEC_SECCOMP_NOTIFY) */
};

enum exec_flags {
  EXEC_SECCOMP = 1, /* a seccomp program follows the rlimits */
  EXEC_NO_NEW_PRIVS = 2,
  EXEC_TTY = 4, /* a struct tty_req follows the header; the process runs on a new pty of the sandbox's devpts */
  EXEC_KEEP_GROUPS = 8, /* setgroups is denied (a one-id map written unprivileged): the groups stay as they are */
  EXEC_SECCOMP_NOTIFY = 16, /* the program refuses by SECCOMP_RET_USER_NOTIF | errno: init installs it with a
                             * listener, answers each refusal with -errno and reports it (MSG_VIOLATION) */
};

/* Steps of an exec inside the sandbox, for MSG_FAILED. */
enum exec_step {
  XSTEP_FORK = 1,
  XSTEP_FDS = 2,
  XSTEP_RLIMIT = 3,
  XSTEP_CWD = 4,
  XSTEP_CREDENTIALS = 5,
  XSTEP_CAPABILITIES = 6,
  XSTEP_SECCOMP = 7,
  XSTEP_EXEC = 8,
};

struct exec_req {
  uint32_t type;
  uint32_t id;
  uint32_t uid;
  uint32_t gid;
  uint64_t caps;       /* capability bits kept (effective = permitted = bounding) when uid is 0 */
  uint32_t flags;
  uint32_t nrlimits;   /* struct rlimit_req records follow */
  uint32_t seccomp_len; /* bytes of struct sock_filter records after the rlimits */
  uint32_t argc;       /* strings after the program: cwd, argv[argc], envp[envc], each NUL-ended */
  uint32_t envc;
  uint32_t strings_len;
};

/* The window size a pty starts with (EXEC_TTY). */
struct tty_req {
  uint16_t columns;
  uint16_t rows;
  uint32_t pad;
};

struct rlimit_req {
  uint32_t resource;
  uint32_t pad;
  uint64_t soft;
  uint64_t hard;
};

struct kill_req {
  uint32_t type;
  uint32_t id;
  int32_t signal;
  uint32_t group; /* 1: the process group of the exec (its whole tree unless it left it) */
};

struct started_msg {
  uint32_t type;
  uint32_t id;
  int32_t pid;
  uint32_t pad;
};

struct failed_msg {
  uint32_t type;
  uint32_t id;
  int32_t err;
  uint32_t step;
};

struct exited_msg {
  uint32_t type;
  uint32_t id;
  int32_t status; /* wait status */
  uint32_t pad;
  uint64_t utime_us;
  uint64_t stime_us;
  uint64_t maxrss_kb;
};

/* A refused call (flags 0) or only a count of unreported ones (VIOLATION_COUNT_ONLY). `id` is
 * the exec whose filter refused it (its forks share the filter); `dropped` counts the refusals
 * of that filter init did not report (rate bound) since its last message for it. */
#define VIOLATION_COUNT_ONLY 1u
struct violation_msg {
  uint32_t type;
  uint32_t id;
  int32_t pid;   /* in the sandbox's pid namespace */
  int32_t nr;    /* syscall number */
  uint32_t arch; /* AUDIT_ARCH_* */
  uint32_t err;  /* the errno the caller got */
  uint32_t dropped;
  uint32_t flags;
};

struct protocol_error_msg {
  uint32_t type;
  uint32_t id;
  uint32_t code; /* errno-like: EPROTO malformed, E2BIG too large, EEXIST duplicate id, ESRCH unknown id */
  uint32_t pad;
};
