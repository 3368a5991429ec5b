/* Between helper.c (a fork becoming a sandbox) and serve.c (the zygote's side): internal to
 * libhutch-zygote; the exported API is the hutch_zygote_* functions. */
#pragma once
#include <sys/resource.h>

/* A one-byte message `kind` with n fds on the request socket. 0 or -1. */
int hz_send_fds(int ctl, unsigned char kind, const int *fds, int n);
/* The task's end to the host: 'X', its wait status, its ru_maxrss (KiB; 0 when ru is NULL). */
void hz_send_exited(int ctl, int status, const struct rusage *ru);
/* In the zygote's child: the request (JSON) it was forked for, kept in place. */
void hz_request_is(const unsigned char *data, int len);
/* In the zygote's child: the zygote's own live-task table, pid namespace fd and fd limit dropped. */
void hz_drop_zygote_state(void);
/* helper.c's, called by the serving loop in the child (also exported). */
int hutch_zygote_task(int ctl, int in, int out, int err, int keep);
