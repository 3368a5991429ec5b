/*
 * rawsys NR [ARG...]: makes one raw system call with up to six arguments (decimal or 0x hex,
 * 64-bit) and prints "ok" or "errno NAME" on one line, so a test can read from inside a
 * sandbox what its seccomp filter (or the kernel) answered. Built static by the test.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static const char *errno_name(int e) {
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EACCES: return "EACCES";
	case EINVAL: return "EINVAL";
	case ENOSYS: return "ENOSYS";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
	default: return NULL;
	}
}

int main(int argc, char **argv) {
	unsigned long long v[7] = {0};
	if (argc < 2 || argc > 8) {
		fprintf(stderr, "usage: rawsys NR [ARG...]\n");
		return 2;
	}
	for (int i = 1; i < argc; i++) v[i - 1] = strtoull(argv[i], NULL, 0);
	long r = syscall((long)v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
	if (r >= 0) {
		printf("ok\n");
		return 0;
	}
	const char *name = errno_name(errno);
	if (name) printf("errno %s\n", name);
	else printf("errno %d\n", errno);
	return 0;
}
