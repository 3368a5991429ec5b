"""hutch's built-in Python zygote (docs/templates.md, "The zygote protocol").

Imports the preload, says it is ready, then serves in libhutch-zygote's C loop
(hutch_zygote_serve), which forks once per request; in each child the helper makes it a fresh
sandbox (its own namespaces, writable layer, cgroup, capabilities, seccomp) and returns in the
task process; then the task runs in this already-initialised interpreter: `python3 main.py
args`, `-m module`, `-c code`. Any other command is exec'd (no warm start, same isolation).
"""
import ctypes
import json
import os
import socket
import sys
# What every task uses, imported once in the zygote and named globally: an `import` statement
# in a fork goes through the import machinery (and writes the pages of what it touches).
# pkgutil: runpy imports it (with typing, re and enum: 2 MiB) on its first run_path or
# run_module, which was in every fork of a script task.
import atexit
import pkgutil  # noqa: F401
import runpy
import traceback


def _preload(names):
    import importlib
    for name in names:
        if name.endswith('.py') or '/' in name:
            runpy.run_path(name, run_name='__hutch_preload__')
        else:
            importlib.import_module(name)


def _write_files(files, fd):
    """The request's files: [[path, size], ...] in order, their bytes one after another on fd."""
    for path, size in files:
        data = bytearray()
        while len(data) < size:
            chunk = os.read(fd, min(1 << 20, size - len(data)))
            if not chunk:
                raise EOFError('the files of the request ended early')
            data += chunk
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        if data[:2] == b'#!' or data[:4] == b'\x7fELF':
            os.chmod(path, 0o755)  # a script or a program: runnable, as the task expects
    os.close(fd)


PY_FLAGS = set('uBEsSIOqdv')


def _step(lib, step, f, *a):
    """A step of the zygote's own before task code: its OSError is the host's setup failure."""
    try:
        return f(*a)
    except OSError as e:
        lib.hutch_zygote_fail(step, e.errno or 5)


_kept = []
_FS = (sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())  # what os.fsencode does


def _set_env(lib, env):
    """The task's environment, set at once: the C environ (what exec and subprocess pass on)
    replaced by one pointer, os.environ's mapping by a new one. Emptying and filling them entry
    by entry would write (so copy, in each fork) many pages of the zygote's own."""
    data = {k.encode(*_FS): v.encode(*_FS) for k, v in env.items() if k and '=' not in k and '\0' not in k + v}
    block = b''.join([k + b'=' + v + b'\0' for k, v in data.items()])
    if lib.hutch_zygote_environ(block, len(block)) != 0:
        raise MemoryError('the task environment')
    _kept.append(os.environ._data)  # never freed here: freeing would write its pages too
    os.environ._data = data


def _run_task(lib, req, files_fd):
    """In the task process (PID 1 of its own sandbox). Never returns."""
    code = 0
    try:
        _set_env(lib, req['env'])
        _step(lib, b'files', _write_files, req['files'], files_fd)
        _step(lib, b'cwd', os.chdir, req['cwd'])
        argv = req['argv']
        name = os.path.basename(argv[0])
        if not (name == 'python' or name.startswith('python3')):
            _step(lib, b'exec', os.execvpe, argv[0], argv, req['env'])
        args = argv[1:]
        while args and args[0].startswith('-') and len(args[0]) > 1 and set(args[0][1:]) <= PY_FLAGS:
            args = args[1:]
        if args and args[0] not in ('-c', '-m', '-'):
            try:
                open(args[0], 'rb').close()
            except OSError as e:
                # As python3 itself says it, and its status.
                lib.hutch_zygote_close()
                sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n" % (argv[0], os.path.abspath(args[0]), e.errno, e.strerror))
                sys.stderr.flush()
                os._exit(2)
        lib.hutch_zygote_close()  # task code from here on: the request socket is gone
        # sys.stdin stays the zygote's object: fd 0, which is the task's stdin now, and which
        # the zygote never read (a new one costs pages of its own in every fork).
        if args[:1] == ['-c']:
            sys.argv = ['-c'] + args[2:]
            sys.path[0:0] = ['']
            exec(compile(args[1], '<string>', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})
        elif args[:1] == ['-m']:
            sys.argv = [args[1]] + args[2:]
            sys.path[0:0] = [os.getcwd()]
            runpy.run_module(args[1], run_name='__main__', alter_sys=True)
        elif not args or args[0] == '-':
            sys.argv = [''] + args[1:]
            exec(compile(sys.stdin.read(), '<stdin>', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})
        else:
            sys.argv = args
            sys.path[0:0] = [os.path.dirname(os.path.abspath(args[0]))]
            runpy.run_path(args[0], run_name='__main__')
    except SystemExit as e:
        c = e.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c & 0xff
        else:
            print(c, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            code = code or 120
    os._exit(code)


_filler = []
_sample = ctypes.c_uint64(0)  # _warm reads it as a request is read


def _fill_pools():
    """Fills the free blocks of pymalloc's partly used pools with objects that are never
    touched again. A fork's new objects then go to pools of their own (pages it writes anyway),
    not into free blocks scattered over the zygote's pages, each of which would cost the fork a
    copy of a whole page. Best effort: CPython's allocator statistics, as 3.8-3.12 print them."""
    import re
    try:
        r, w = os.pipe()
        saved = os.dup(2)
        try:
            os.dup2(w, 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(w)
        out = b''
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            out += chunk
        os.close(r)
    except (AttributeError, OSError):
        return
    for line in out.decode('ascii', 'replace').split('\n'):
        m = re.match(r'\s+\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$', line)
        if not m:
            continue
        size, free = int(m.group(1)), int(m.group(2))
        if size == 16:
            _filler.extend(object() for _ in range(free))
        elif size == 32:
            _filler.extend((1 << 20) + i for i in range(free))  # a one-digit int: 28 bytes
        elif size >= 48:
            _filler.extend(bytes(size - 33) + b'' for _ in range(free))


def _warm(lib):
    """The zygote's own code along the path a task takes (parse a request, compile, exec), on a
    sample: no task input is seen here. Run once in the zygote before it serves, so what that
    path makes on first use is made there, once, in pages every fork shares (the first
    compile() of a process creates the ~120 classes of the `_ast` module: 0.5 MiB that each
    fork would otherwise make for itself); and again in a fork prepared ahead, before its
    task's request, so the pages that path writes are copied off the task's critical path."""
    _parse(b'{"argv": ["python3", "-c", "pass"], "env": {"A": "b"}, "cwd": "/", "files": []}')
    ctypes.string_at(ctypes.addressof(_sample), 8)
    exec(compile('pass', '<string>', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})
    os.environ.get('PATH')
    os.fsencode('PATH')
    os.getcwd()


def _warm_script():
    """In the zygote only (best effort): a task's path for `python3 main.py` with its file, on a
    sample written to the zygote's own /tmp (forks never see the template's root) and removed:
    writing the request's files, then runpy.run_path. What that path makes on first use is then
    the zygote's, not each script fork's (0.08 MiB each)."""
    d = '/tmp/.hutch-zygote-warm'
    path = d + '/main.py'
    r = w = -1
    try:
        r, w = os.pipe()
        os.write(w, b'pass\n')
        os.close(w)
        w = -1
        _write_files([[path, 5]], r)  # closes r
        r = -1
        open(path, 'rb').close()
        runpy.run_path(path, run_name='__hutch_warm__')
        os.unlink(path)
        os.rmdir(d)
    except OSError:
        pass
    for fd in (r, w):
        if fd >= 0:
            os.close(fd)


def _serve(lib, sock):
    """Serves requests in libhutch-zygote's own loop (hutch_zygote_serve): this process runs
    no Python between them, so it writes none of its heap while forks live (each page it wrote
    would stay in every live fork as a private copy). Returns in the zygote when the host is
    gone; in a forked child it runs the task and never returns."""
    api = ctypes.pythonapi
    hooks = [ctypes.cast(getattr(api, n), ctypes.c_void_p) for n in ('PyOS_BeforeFork', 'PyOS_AfterFork_Parent', 'PyOS_AfterFork_Child')]
    r = lib.hutch_zygote_serve(sock, *hooks)
    if r < 0:
        return
    if r == 1:
        _warm(lib)
        r = lib.hutch_zygote_ready()
    if r != 0:
        os._exit(125)
    k = lib.hutch_zygote_request(None, 0)
    _run_task(lib, _parse(ctypes.string_at(lib.hutch_zygote_request_data(), k)), 3)  # the files pipe, on fd 3 now


_decode = json.JSONDecoder().raw_decode


def _parse(raw):
    """The request's JSON (bytes, as it comes; _warm runs this on a sample first). The host
    writes it (UTF-8, no surrounding space): decoded straight, not through json.loads, whose
    encoding detection and whitespace matching touch more of the zygote's objects in a fork."""
    return _decode(raw.decode())[0]


def main():
    lib = ctypes.PyDLL(os.environ.pop('HUTCH_ZYGOTE_LIB'))
    # Every function a fork calls, looked up here once: a lookup in a fork writes (copies) pages.
    for name in ('hutch_zygote_task', 'hutch_zygote_fork_end', 'hutch_zygote_reap', 'hutch_zygote_request',
                 'hutch_zygote_serve', 'hutch_zygote_ready', 'hutch_zygote_close', 'hutch_zygote_fork_begin'):
        getattr(lib, name).restype = ctypes.c_int
    lib.hutch_zygote_serve.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.hutch_zygote_request_data.restype = ctypes.c_void_p
    lib.hutch_zygote_request_data.argtypes = []
    lib.hutch_zygote_ready.argtypes = []
    lib.hutch_zygote_close.argtypes = []
    lib.hutch_zygote_close.restype = None
    lib.hutch_zygote_task.argtypes = [ctypes.c_int] * 5
    lib.hutch_zygote_fork_end.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.hutch_zygote_reap.argtypes = [ctypes.c_int]
    lib.hutch_zygote_request.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.hutch_zygote_fail.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.hutch_zygote_environ.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.hutch_zygote_enter.argtypes = [ctypes.c_int] * 5
    lib.hutch_zygote_enter.restype = ctypes.c_int
    # HUTCH_ZYGOTE_ENTER=1: serve with protocol 1's fork-then-enter (tests keep it working).
    legacy = os.environ.pop('HUTCH_ZYGOTE_ENTER', '') == '1'
    if legacy:
        import signal
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the intermediate children reap themselves
    import select
    _preload(sys.argv[1:])
    _warm(lib)  # first-use state made here, shared by every fork (see _warm)
    _warm_script()
    import gc
    gc.collect()
    _fill_pools()
    gc.freeze()  # the preload's objects stay out of every later collection: no COW copies of them
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.set_inheritable(theirs.fileno(), True)
    sys.stdout.write('hutch-zygote 1 %d\n' % theirs.fileno())
    sys.stdout.flush()
    hello = ours.recv(4096)
    if not hello:
        return
    theirs.close()  # the host holds its copy now: its end closing ends us
    if not legacy:
        _serve(lib, ours.fileno())
        return
    # Protocol 1 as first published (HUTCH_ZYGOTE_ENTER=1), served in Python.
    fdsize = socket.CMSG_SPACE(5 * 4)
    sock = ours.fileno()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd != sock:
                if lib.hutch_zygote_reap(fd) != 1:
                    poller.unregister(fd)  # reported (or not ours)
                continue
            try:
                msg, anc, _flags, _addr = ours.recvmsg(1 << 20, fdsize)
            except InterruptedError:
                continue
            if not msg:
                return
            fds = []
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds += list(memoryview(data).cast('i'))
            req = json.loads(msg)
            if req.get('prepared'):
                fds += [-1, -1, -1, -1]  # the task's request comes later, to the prepared fork
            if len(fds) != 5:
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                continue
            # Protocol 1 as first published: fork, then hutch_zygote_enter (which forks the
            # task and an intermediate that reports it). Kept for zygotes written to it.
            pid = os.fork()
            if pid == 0:
                ours.close()
                if lib.hutch_zygote_enter(*fds) != 0:
                    os._exit(125)
                if req.get('prepared'):
                    buf = ctypes.create_string_buffer(1 << 16)
                    k = lib.hutch_zygote_request(buf, 1 << 16)
                    req = json.loads(buf.raw[:k])
                _run_task(lib, req, 3)
            for fd in fds:
                if fd >= 0:
                    os.close(fd)


main()
