/*
 * The Node zygote's address-space packing (docs/templates.md, "Memory per fork"): an `mmap`
 * that ignores the placement hint of a small anonymous mapping, so the kernel packs it beside
 * the others.
 *
 * V8 asks for each 256 KiB page of its heap at a random address (its own ASLR, a hardening of
 * the engine against heap spraying). Each such page then needs page tables of its own at
 * every level: about 12 KiB of kernel memory per 256 KiB page, which every fork of the zygote
 * copies (a fork copies the page tables of each private mapping with pages in it) and every
 * page a task's heap grows by adds again. Measured on node 20 with a 40 MiB heap: 2,152 KiB of
 * page tables scattered, 320 KiB packed. The hint is a hint: V8 takes whatever address mmap
 * returns (it trims its over-sized reservation to the alignment it needs).
 *
 * Active only where this library is LD_PRELOADed (the node zygote: lib/template/index.ts),
 * ahead of libc in the symbol search order; loaded with dlopen (the Python zygote's ctypes,
 * the node addon) it interposes nothing that is already bound. What a zygote's forks share is
 * its layout in any case (docs/security.md, "Templates"); the heap's place in the address
 * space still moves with the kernel's own randomised mmap base, per zygote.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* Reservations larger than this keep their hint: V8's code range (128 MiB, asked for near
 * node's own code so that calls into builtins are short) and WebAssembly's guard regions. */
#define HZ_HINT_KEPT_ABOVE (64UL << 20)

__attribute__((visibility("default"))) void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (addr && (flags & MAP_ANONYMOUS) && !(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) && len <= HZ_HINT_KEPT_ABOVE)
		addr = NULL;
	/* syscall() returns -1 with errno set on failure: MAP_FAILED, as mmap's contract says. */
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

__attribute__((visibility("default"), alias("mmap"))) void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off);
