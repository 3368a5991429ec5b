# Drives a command on a real pseudo-terminal (Python's pty module), as a person at a terminal
# would: test/cli/tty.test.ts. Usage: pty-drive.py SCENARIO -- ARGV...
# Prints one JSON object: what the scenario saw.
import fcntl, json, os, pty, select, signal, struct, sys, termios, time

scenario = sys.argv[1]
argv = sys.argv[sys.argv.index('--') + 1:]


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))


pid, fd = pty.fork()
if pid == 0:
    set_size(0, 30, 100)
    os.execvp(argv[0], argv)

out = b''


def read_until(needle, timeout=30.0):
    global out
    end = time.time() + timeout
    while needle.encode() not in out:
        left = end - time.time()
        if left <= 0:
            raise SystemExit(json.dumps({'error': 'timeout waiting for %r' % needle, 'out': out.decode('utf8', 'replace')}))
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                b = os.read(fd, 65536)
            except OSError:
                b = b''
            if not b:
                raise SystemExit(json.dumps({'error': 'EOF waiting for %r' % needle, 'out': out.decode('utf8', 'replace')}))
            out += b
    i = out.index(needle.encode()) + len(needle)
    seen, out = out[:i], out[i:]
    return seen.decode('utf8', 'replace')


def drain():
    global out
    while True:
        r, _, _ = select.select([fd], [], [], 5)
        if not r:
            return
        try:
            b = os.read(fd, 65536)
        except OSError:
            return
        if not b:
            return
        out += b


def raw(fd):
    a = termios.tcgetattr(fd)
    return not (a[3] & termios.ICANON) and not (a[3] & termios.ECHO)


def descendants(p):
    kids = []
    for t in os.listdir('/proc/%d/task' % p):
        try:
            with open('/proc/%d/task/%s/children' % (p, t)) as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def cgroups_of(p):
    paths = []
    with open('/proc/%d/cgroup' % p) as f:
        for line in f:
            _, ctl, path = line.rstrip('\n').split(':', 2)
            if 'hutch' not in path:
                continue
            # hutch's shared memory cgroup (a sandbox without a memory limit joins it) is not
            # the sandbox's own: it outlives every sandbox, like hutch's subtree root.
            if os.path.basename(path) == '.shared':
                continue
            if ctl == '':
                paths.append('/sys/fs/cgroup' + ('/unified' if os.path.isdir('/sys/fs/cgroup/unified') else '') + path)
            else:
                for c in ctl.split(','):
                    if c.startswith('name='):
                        continue
                    paths.append('/sys/fs/cgroup/' + ctl + path)
    return sorted(set(p for p in paths if os.path.isdir(p)))


def sandbox_cgroups():
    # hutch (node) -> the sandbox's init: its cgroups are the sandbox's.
    for k in descendants(pid):
        cg = cgroups_of(k)
        if cg:
            return cg
    return []


res = {}
if scenario == 'session':
    read_until('# ')
    res['rawDuring'] = raw(fd)

    def cmd(line, tag):
        # The typed line echoes as M""K; only the output has MK: what follows it is the output.
        os.write(fd, (line + '; echo M""' + tag + '\r').encode())
        read_until('M""' + tag)
        return read_until('M' + tag).rsplit('M' + tag, 1)[0].strip()

    res['size'] = cmd('stty size; tty; echo "T=$TERM"', 'A')
    set_size(fd, 40, 120)  # the kernel sends SIGWINCH to hutch
    time.sleep(0.5)
    res['resized'] = cmd('stty size', 'B')
    t0 = time.time()
    os.write(fd, b'sleep 100\r')
    time.sleep(0.5)
    os.write(fd, b'\x03')  # Ctrl-C from the host terminal: a byte, to the sandbox's pty
    time.sleep(0.3)
    res['ctrlc'] = cmd('echo "status $?"', 'C')
    res['ctrlcSeconds'] = time.time() - t0
    os.write(fd, b'exit 7\r')
    drain()
    _, status = os.waitpid(pid, 0)
    res['exit'] = os.waitstatus_to_exitcode(status)
    res['rawAfter'] = raw(fd)
elif scenario == 'hangup':
    read_until('# ')
    cg = sandbox_cgroups()
    res['cgroupsBefore'] = cg
    os.close(fd)  # the terminal closes: the kernel sends SIGHUP to hutch
    _, status = os.waitpid(pid, 0)
    res['exit'] = os.waitstatus_to_exitcode(status)
    res['cgroupsAfter'] = [p for p in cg if os.path.isdir(p)]
elif scenario == 'signal':
    # SIGHUP (or argv's signal) sent to a hutch run that does not use the terminal.
    sig = getattr(signal, os.environ.get('PTY_DRIVE_SIGNAL', 'SIGHUP'))
    cg = []
    for _ in range(300):
        cg = sandbox_cgroups()
        if cg:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    res['cgroupsBefore'] = cg
    os.kill(pid, sig)
    drain()
    _, status = os.waitpid(pid, 0)
    res['exit'] = os.waitstatus_to_exitcode(status)
    res['cgroupsAfter'] = [p for p in cg if os.path.isdir(p)]
    res['out'] = out.decode('utf8', 'replace')
print(json.dumps(res))
