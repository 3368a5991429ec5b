/**
 * The phases of a start, as patterns over a folded perf stack (bench/lib/flame.ts
 * phaseShares): the first that matches names a sample's phase. perf names a process by its
 * comm: `hutch-init` is init and, until its exec, the command's child (bench/flame.ts renames
 * `memfd:hutch-ini`); the setup child is a `node` task whose stack starts at hutch_clone3_vm
 * (it runs on its own stack, in Node's memory, until it execs init).
 */
export const START_PHASES: readonly { name: string; test: RegExp }[] = [
  { name: 'sandbox exit: its processes, namespaces and mounts torn down', test: /^hutch-init;.*(get_signal|do_exit|do_group_exit)/ },
  { name: 'init: seccomp filter loaded (per exec)', test: /^hutch-init;.*do_seccomp/ },
  { name: 'init: fork of the command', test: /^hutch-init;.*(__x64_sys_fork|__x64_sys_vfork|__do_sys_clone|__x64_sys_clone|ret_from_fork)/ },
  { name: 'init: exec of init and of the command', test: /^hutch-init;.*(__x64_sys_execve|__x64_sys_execveat)/ },
  { name: 'init: the rest (page faults, its loop, other calls)', test: /^hutch-init/ },
  { name: 'the command itself (/bin/true)', test: /^true;/ },
  { name: 'setup child: mounts, pivot_root, id and cgroup steps', test: /^node;(hutch_clone3_vm|run_child|\[hutch\.node\];run_child)/ },
  { name: 'host: clone3 into new namespaces (libuv pool thread)', test: /^node;start_thread;worker;/ },
  { name: 'host: V8 compiler and GC threads', test: /^node;start_thread;/ },
  { name: 'host main thread: system calls and faults', test: /^node;__libc_start_call_main;.*(entry_SYSCALL_64|asm_exc_page_fault)/ },
  { name: 'host main thread: JavaScript and Node', test: /^node;__libc_start_call_main/ },
  { name: 'host: stacks perf could not unwind (libc without frame pointers)', test: /^node;/ },
];
