"""Hostile code against the sandbox: each snippet runs twice, through the full path (pattern scan,
repair, execution) and straight to the server (no scan: proves the isolation layers under it). For
each we assert containment (canaries outside the work dir, the input image, a neighbour episode and
the host's secrets are untouched; the server survives), a clear result, that the next episode still
works and that no process of the episode is left once it ends.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from envs.sandbox import Sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "thyme-host-secret-4f1c"
os.environ["THYME_TEST_SECRET"] = SECRET  # must never show up in an episode's environment
SHORT_TIMEOUT = 2.0


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _make_world(tmp_path_factory, isolation):
    root = tmp_path_factory.mktemp("hostile")
    image = str(root / "input.png")
    Image.fromarray((np.arange(120 * 160 * 3) % 251).astype(np.uint8).reshape(120, 160, 3)).save(image)
    secret_file = root / "secret.txt"
    secret_file.write_text(SECRET)
    os.chmod(secret_file, 0o600)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    connections = []

    def accept():
        while listener.fileno() >= 0:
            try:
                connections.append(listener.accept())
            except (socket.timeout, OSError):
                if listener.fileno() < 0:
                    return
    threading.Thread(target=accept, daemon=True).start()

    with Sandbox(timeout_s=5.0, isolation=isolation) as sb:
        canary = os.path.join(sb.episodes_dir, "canary.txt")   # reachable from inside, not writable
        with open(canary, "w") as f:
            f.write("canary")
        os.chmod(canary, 0o644)
        host_canary = str(root / "host_canary.txt")           # outside everything the sandbox sees
        with open(host_canary, "w") as f:
            f.write("host canary")
        neighbour = sb.episode(images=[image])
        assert neighbour.run("mine = 41\nopen('mine.txt', 'w').write('neighbour')").ok
        staged = neighbour.images[0]
        state = {"sb": sb, "image": image, "staged": staged, "canary": canary, "host_canary": host_canary,
                 "secret_file": str(secret_file), "neighbour": neighbour, "port": listener.getsockname()[1],
                 "connections": connections, "server_pid": sb.servers[0].proc.pid,
                 "digests": {p: _digest(p) for p in (canary, host_canary, image, staged)},
                 "neighbour_file": os.path.join(neighbour.work_dir, "mine.txt")}
        yield state
        neighbour.close()
    listener.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The default isolation: bubblewrap here (process layers alone where it is unavailable)."""
    yield from _make_world(tmp_path_factory, "auto")


@pytest.fixture(scope="module")
def world_process(tmp_path_factory):
    """The fallback: process layers alone (own uid, rlimits, seccomp, wall-clock kill), no namespaces."""
    yield from _make_world(tmp_path_factory, "process")


def _raw(ep, code: str, timeout: float = SHORT_TIMEOUT) -> dict:
    """Run code on the server directly: no pattern scan, no repair (tests the layers underneath)."""
    reply = ep.server.request({"op": "run", "ep": ep.id, "code": code, "timeout": timeout}, timeout=timeout + 15)
    return reply


# (id, code, expected: regex the raw run's error+stdout must match). {canary}, {host_canary},
# {secret_file}, {neighbour_dir}, {port}, {staged} are filled in per test.
SNIPPETS = [
    ("exit", "exit()", r"SystemExit"),
    ("sys_exit", "import sys\nsys.exit(3)", r"SystemExit\(3\)"),
    ("raise_systemexit", "raise SystemExit('bye')", r"SystemExit"),
    ("os_exit", "os._exit(1)", r"ended its own process \(exit status 1\)"),
    ("keyboard_interrupt", "raise KeyboardInterrupt", r"KeyboardInterrupt"),
    ("kill_self", "os.kill(os.getpid(), 9)", r"killed by signal SIGKILL"),
    ("kill_server", "os.kill(os.getppid(), 9)\nprint('still here')", r"PermissionError|Operation not permitted"),
    ("kill_init", "os.kill(1, 9)\nprint('still here')", r"PermissionError|Operation not permitted"),
    ("kill_everything", "os.kill(-1, 9)\nprint('survived')", r"survived"),  # kill(-1) spares the caller; other uids are out of reach
    ("raise_sigsegv", "import signal\nsignal.raise_signal(signal.SIGSEGV)", r"killed by signal SIGSEGV"),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)", r"killed by signal SIGSEGV"),
    ("stack_overflow", "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)",
     r"killed by signal SIGSEGV|RecursionError|MemoryError|TimeoutError"),  # contained, whichever comes first
    ("fork_bomb", "while True:\n    os.fork()", r"BlockingIOError|Resource temporarily unavailable"),
    ("thread_bomb", "import threading, time\nfor _ in range(10000):\n    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()",
     r"can't start new thread|RuntimeError"),
    ("memory_bomb", "x = bytearray(8 * 1024**3)", r"MemoryError"),
    ("memory_creep", "chunks = []\nwhile True:\n    chunks.append(np.empty(200 * 1024**2, np.uint8))", r"MemoryError|Unable to allocate"),
    ("numpy_bomb", "a = np.ones((100000, 100000))", r"MemoryError|Unable to allocate"),
    ("output_bomb", "for _ in range(200000):\n    print('spam' * 25)", r"output truncated"),
    ("infinite_loop", "while True:\n    pass", r"TimeoutError: the code ran longer than"),
    ("regex_c_loop", "import re\nre.match(r'(a+)+$', 'a' * 64 + 'b')", r"TimeoutError: the code ran longer than"),
    ("sleep_forever", "import time\ntime.sleep(1000)", r"TimeoutError"),
    ("big_file", "open('big.bin', 'wb').write(b'x' * (100 * 1024**2))", r"File too large|MemoryError"),
    ("many_files", "fs = [open('f%d.txt' % i, 'w') for i in range(100000)]", r"Too many open files"),
    ("remove_canary", "os.remove('{canary}')", r"PermissionError|Permission denied|Operation not permitted"),
    ("shutil_rmtree", "import shutil\nshutil.rmtree('{episodes_dir}')", r"PermissionError|Permission denied|OSError"),
    ("pathlib_write", "import pathlib\npathlib.Path('{canary}').write_text('pwned')", r"Permission denied"),
    ("open_write", "open('{canary}', 'w').write('pwned')", r"Permission denied"),
    ("getattr_alias", "getattr(os, 'rem' + 'ove')('{canary}')", r"Permission denied|Operation not permitted"),
    ("import_alias", "import shutil as s\ns.move('{canary}', 'stolen.txt')", r"Permission denied|Operation not permitted"),
    ("unicode_lookalike", "\uff4f\uff53.remove('{canary}')", r"Permission denied|Operation not permitted"),
    ("ctypes_unlink", "import ctypes\nprint('rc', ctypes.CDLL(None).unlink(b'{canary}'))", r"rc -1"),
    ("overwrite_input", "open(image_path, 'wb').write(b'not an image')", r"Read-only file system|Permission denied"),
    ("delete_input", "os.remove(image_path)", r"Read-only file system|Permission denied|Operation not permitted"),
    ("write_system", "open('/usr/lib/pwned.txt', 'w').write('x')", r"Read-only file system|Permission denied"),
    ("host_file", "open('{host_canary}', 'w').write('pwned')", r"No such file or directory|Permission denied"),
    ("neighbour_write", "open('{neighbour_dir}/mine.txt', 'w').write('pwned')", r"Permission denied"),
    ("neighbour_read", "print(os.listdir('{neighbour_dir}'))", r"Permission denied"),
    ("read_secret", "print(open('{secret_file}').read())", r"No such file or directory|Permission denied"),
    ("read_home", "print(os.listdir(os.path.expanduser('~')))\nprint(os.listdir('/root'))", r"^(?!.*\.bashrc)"),
    ("read_shadow", "print(open('/etc/shadow').read())", r"No such file or directory"),
    ("environment", "print(dict(os.environ))", r"\{\}"),
    ("socket_connect", "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
     r"Address family not supported"),  # seccomp: socket() allows no family
    ("socket_dns", "import socket\nsocket.create_connection(('example.com', 80), timeout=1)",
     r"PermissionError|Operation not permitted|gaierror|Temporary failure|Network is unreachable|Name or service"),
    ("shell_rm", "print(os.system('rm -rf {episodes_dir} {canary} /usr/bin/python3 2>/dev/null; echo done'))", r"^-?\d+"),
    ("setuid_root", "os.setuid(0)", r"PermissionError|Operation not permitted"),
    ("unshare_ctypes", "import ctypes\nprint('rc', ctypes.CDLL(None).unshare(0x10000000))", r"rc -1"),
    ("ptrace_ctypes", "import ctypes\nprint('rc', ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0))", r"rc -1"),
    ("del_trick", "class A:\n    def __del__(self):\n        os.kill(os.getppid(), 9)\nA()\nprint('after')", r"after"),
    ("reduce_trick", "class E:\n    def __reduce__(self):\n        return (os.system, ('touch /tmp/pwned-reduce',))\nprocessed_path = E()\nprint('done')",
     r"done"),
    ("str_trick", "class X(Exception):\n    def __str__(self):\n        os._exit(5)\nraise X()", r"ended its own process|X"),
    ("symlink_output", "os.symlink('{staged}', 'out.png')\nprocessed_path = 'out.png'\nprint(processed_path)", r"out\.png"),
    ("outside_output", "processed_path = image_path\nprint(processed_path)", r"input"),
    ("bomb_header_output",
     "import struct, zlib\nihdr = struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0)\n"
     "chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
     "open('bomb.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', ihdr) + chunk(b'IEND', b''))\nprint('bomb.png')",
     r"bomb\.png"),
    ("forge_reply", "for fd in range(3, 64):\n    try:\n        os.write(fd, b'\\xff\\xff\\xff\\xffjunk')\n    except OSError:\n        pass",
     r"malformed or oversized reply|ended its own process|^$"),
    ("stdout_none", "import sys\nsys.stdout = None\nprint(1)", r"AttributeError|^$"),
    ("deep_dirs", "for _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')", r"deep|TimeoutError"),
    ("file_flood", "for i in range(400):\n    open('f%d.png' % i, 'wb').write(b'x' * 100)\nprint('flood')", r"flood"),
    ("stop_self", "import signal\nos.kill(os.getpid(), signal.SIGSTOP)", r"TimeoutError"),
    ("exec_binary", "os.execv('/usr/bin/true', ['true'])", r"Operation not permitted"),  # seccomp: no exec at all
    ("read_repo", "print(open('{repo}/setup.py').read()[:40])", r"No such file or directory|Permission denied"),
    ("list_host_processes", "print(os.listdir('/proc'))", r"Permission denied"),
    ("disk_quota", "for i in range(12):\n    open('blob%d.bin' % i, 'wb').write(os.urandom(60 * 1024**2))\nprint('filled')",
     r"DiskQuotaError|TimeoutError"),
    ("surrogates", "print('\\ud800 lone')\nraise ValueError('\\udfff')", r"\? lone"),
    ("fifo_output", "os.mkfifo('pipe.png')\nprocessed_path = 'pipe.png'\nprint('pipe.png')", r"pipe\.png"),
    ("background_chatter", "import threading, time, struct, json\n"
     "def chatter():\n    time.sleep(0.5)\n    for fd in range(3, 64):\n        try:\n"
     "            body = json.dumps(dict(ok=True, stdout='forged')).encode()\n"
     "            os.write(fd, struct.pack('>I', len(body)) + body)\n        except OSError:\n            pass\n"
     "threading.Thread(target=chatter, daemon=True).start()\nprint('started')", r"started"),
    ("compile_bomb", "eval('(' * 200000 + ')' * 200000)", r"too many nested|MemoryError|RecursionError|SyntaxError"),
]
# Outputs that must never be accepted as images.
NO_IMAGES = {"symlink_output", "outside_output", "bomb_header_output", "reduce_trick", "fifo_output"}


def test_enough_snippets():
    assert len(SNIPPETS) >= 35
    assert len({s[0] for s in SNIPPETS}) == len(SNIPPETS)


def _describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"{pid} {p.status()} ppid={p.ppid()} {' '.join(p.cmdline())[:80]}"
    except psutil.Error as exc:
        return f"{pid} ({exc})"


def _uid_processes(uid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == uid:
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("name,code,expected", SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_hostile_snippet(world, name, code, expected):
    _check(world, name, code, expected)


# Without bubblewrap some answers differ (e.g. /etc/shadow exists but is unreadable); the walls hold.
PROCESS_SUBSET = ["exit", "os_exit", "kill_server", "kill_everything", "ctypes_segfault", "fork_bomb", "memory_bomb",
                  "infinite_loop", "output_bomb", "remove_canary", "pathlib_write", "ctypes_unlink", "overwrite_input",
                  "delete_input", "host_file", "neighbour_write", "neighbour_read", "read_secret", "environment",
                  "socket_connect", "shell_rm", "setuid_root", "unshare_ctypes", "ptrace_ctypes", "symlink_output",
                  "forge_reply", "big_file", "exec_binary", "read_repo", "list_host_processes"]


_PROCESS_SNIPPETS = [s for s in SNIPPETS if s[0] in PROCESS_SUBSET]


@pytest.mark.parametrize("name,code,expected", _PROCESS_SNIPPETS, ids=[s[0] for s in _PROCESS_SNIPPETS])
def test_hostile_snippet_process_isolation(world_process, name, code, expected):
    _check(world_process, name, code, expected)


def _check(world, name, code, expected):
    sb, neighbour = world["sb"], world["neighbour"]
    code = code.format(canary=world["canary"], host_canary=world["host_canary"], secret_file=world["secret_file"],
                       neighbour_dir=neighbour.work_dir, port=world["port"], staged=world["staged"],
                       episodes_dir=sb.episodes_dir, repo=REPO)
    ep = sb.episode(images=[world["image"]])
    try:
        full = ep.run(code, timeout_s=SHORT_TIMEOUT)
        # A clear result through the full path: either it ran, or an error/refusal that says why.
        assert full.ok or (full.error and len(full.error) > 10), full
        raw = _raw(ep, code)
        text = (raw.get("error") or "") + "\n" + (raw.get("stdout") or "")
        assert "ok" in raw, raw
        assert re.search(expected, text.strip(), re.DOTALL), f"{name}: {text[:800]!r}"
        assert SECRET not in text and SECRET not in (full.stdout + (full.error or ""))
        if name in NO_IMAGES:
            assert raw["images"] == [] and full.images == [], (raw, full)
        for path in raw["images"] + full.images:  # whatever came back is a regular image file we can read
            assert not os.path.islink(path) and path.startswith(ep.out_dir)
            Image.open(path).verify()
        # The episode goes on after whatever happened.
        after = ep.run("print('alive', 1 + 1)")
        assert "alive 2" in after.stdout, after
        uid = ep.uid
    finally:
        ep.close()
    # Containment: canaries, the input (original and staged copy), the neighbour episode, the host.
    for path, digest in world["digests"].items():
        assert _digest(path) == digest, f"{name} changed {path}"
    with open(world["neighbour_file"]) as f:
        assert f.read() == "neighbour"
    assert "42" in neighbour.run("print(mine + 1)").stdout
    assert not os.path.exists("/tmp/pwned-reduce")
    assert not world["connections"], "an episode reached a host socket"
    # The server survived (same process), the next episode works, nothing of this one is left running.
    assert sb.servers[0].proc.pid == world["server_pid"] and sb.servers[0].alive()
    with sb.episode(images=[world["image"]]) as nxt:
        assert nxt.run("print(1 + 1)").stdout == "2\n"
    if uid is not None:
        sb.wait_idle()  # ended episodes are swept right after their reply; then reaped
        deadline = time.monotonic() + 5
        while _uid_processes(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _uid_processes(uid)
        assert left == [], f"{name} left processes behind: {[_describe(p) for p in left]}"
