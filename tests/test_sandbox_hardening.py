"""One hostile test per class of the adversarial review of the sandbox's own seams (issue 12). Each
attacks the real sandbox (bubblewrap mode unless it says otherwise) the way the review did, bypassing
the pattern scan where the attack needs it, and asserts the root fix holds.

The scan's own class (2: linear time, size cap) is tested in tests/test_scan.py.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
import tempfile
import threading
import time
import uuid
import zlib

import numpy as np
import psutil
import pytest
from PIL import Image

from envs.sandbox import Sandbox

# The episode's own channel is its only socket: code that finds it can forge the reply the server
# reads (what an attacker who gets past our child code can always do).
FORGE = """
import json, os, stat, struct
def forge(reply):
    body = json.dumps(reply).encode()
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, struct.pack('>I', len(body)) + body)
                return fd
        except OSError:
            pass
"""


def _raw(ep, code: str, timeout: float = 5.0) -> dict:
    """Straight to the server: no scan, no repair."""
    return ep.server.request({"op": "run", "ep": ep.id, "code": code, "timeout": timeout}, timeout=timeout + 20)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hardening") / "input.png")
    Image.fromarray((np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)).save(path)
    return path


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout_s=5.0) as sandbox:
        yield sandbox


# ------------------------------------------------------------------ 1. output parsing vs. the server
def test_hostile_output_parsing_cannot_stall_the_server(image):
    """Output images expensive to check (7 PNGs that inflate to 119 MB each, and one of 700k empty
    chunks) do not delay another episode's runs or its time limit; the checks stay in their budget
    (0.3 s here: on any machine, seven such inflates take longer)."""
    flood = (FORGE + "import zlib, struct\n"
             "def chunk(t, d):\n    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
             "w, h = 6000, 6600\n"
             "ihdr = chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))\n"
             "z = zlib.compressobj(1)\n"
             "row = b'\\x00' + bytes(3 * w)\n"
             "data = b''.join(z.compress(row) for _ in range(h)) + z.flush()\n"
             "png = b'\\x89PNG\\r\\n\\x1a\\n' + ihdr + chunk(b'IDAT', data) + chunk(b'IEND', b'')\n"
             "names = []\n"
             "for i in range(7):\n    open(f'big{i}.png', 'wb').write(png)\n    names.append(f'big{i}.png')\n"
             "empty = chunk(b'IDAT', b'')\n"
             "small = chunk(b'IDAT', zlib.compress(b'\\x00' * 31 * 10))\n"
             "open('chunks.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 10, 10, 8, 2, 0, 0, 0))"
             " + small + empty * 700000 + chunk(b'IEND', b''))\n"
             "print('written')\n"
             # Straight to the server, past the episode's own hand-over (which would re-encode them).
             "forge({'ok': True, 'stdout': 'written', 'error': None, 'images': ['chunks.png'] + names})\n"
             "import time\ntime.sleep(30)")
    with Sandbox(timeout_s=5.0, output_check_s=0.3) as sb, \
            sb.episode(images=[image]) as attacker, sb.episode(images=[image]) as honest:
        done = {}
        thread = threading.Thread(target=lambda: done.setdefault("r", _raw(attacker, flood, timeout=60)))
        thread.start()
        latencies, limits = [], []
        while thread.is_alive() and len(latencies) < 400:
            t = time.monotonic()
            assert honest.run("print(1 + 1)").stdout == "2\n"
            latencies.append(time.monotonic() - t)
            if len(latencies) % 40 == 0:
                t = time.monotonic()
                r = honest.run("while True:\n    pass", timeout_s=1.0)
                assert r.timed_out
                limits.append(time.monotonic() - t)
        thread.join(120)
        reply = done["r"]
    assert reply.get("ok") and reply["stdout"] == "written", reply
    assert len(reply["images"]) < 7, "the checks stopped at their budget (output_check_s)"
    assert not any(p.endswith("chunks.png") for p in reply["images"])
    assert latencies and max(latencies) < 1.0, f"a neighbour's run waited {max(latencies):.2f} s"
    assert all(lim < 2.0 for lim in limits), f"a 1 s time limit took {limits}"


# ------------------------------------------------------------------ 3. request data in episode memory
def test_hostile_episode_cannot_find_other_episodes_requests(tmp_path):
    """Another episode's code and the caller's path of its image are nowhere in an episode
    process's memory: not on its stack (frames), not in freed memory (a scan of /proc/self/mem).
    Landlock is off here so the episode can read its own /proc/self/mem; the property is the zygote's."""
    marker_path = f"hostpath-{uuid.uuid4().hex}"
    marker_code = f"codemark-{uuid.uuid4().hex}"
    other = str(tmp_path / f"{marker_path}.png")
    mine = str(tmp_path / "plain.png")
    for path, value in ((other, 10), (mine, 200)):
        Image.fromarray(np.full((30, 40, 3), value, np.uint8)).save(path)
    # The episode dumps its own heap, stack and anonymous memory, and the repr of every frame's
    # locals, into files; the test looks for the markers there (the dumping code holds none).
    dump = ("import ctypes, sys\nout, k, written = open('mem.0', 'wb'), 0, 0\n"
            "for line in open('/proc/self/maps'):\n"
            "    parts = line.split()\n"
            "    if (len(parts) > 5 and parts[5] not in ('[heap]', '[stack]')) or not parts[1].startswith('r'):\n"
            "        continue\n"
            "    lo, hi = (int(x, 16) for x in parts[0].split('-'))\n"
            "    for start in range(lo, hi, 1 << 20):\n"
            "        piece = ctypes.string_at(start, min(1 << 20, hi - start))\n"
            "        if written + len(piece) > 60 << 20:\n"
            "            out.close()\n            k += 1\n            out, written = open(f'mem.{k}', 'wb'), 0\n"
            "        out.write(piece)\n        written += len(piece)\n"
            "out.close()\nf, frames = sys._getframe(), []\n"
            "while f is not None:\n    frames.append(repr(f.f_locals))\n    f = f.f_back\n"
            "open('frames.txt', 'w').write('\\n'.join(frames))\nprint('dumped', k + 1)")

    def found(ep) -> set:
        reply = _raw(ep, dump, timeout=30)
        assert reply.get("ok"), reply
        hits = set()
        for name in os.listdir(ep.work_dir):
            if name.startswith("mem.") or name == "frames.txt":
                with open(os.path.join(ep.work_dir, name), "rb") as f:
                    data = f.read()
                hits.update(m for m in (marker_path, marker_code) if m.encode() in data)
        return hits

    with Sandbox(timeout_s=30.0, landlock=False, max_episode_disk_mb=2048) as sandbox:
        with sandbox.episode(images=[other]) as a:
            for _ in range(3):
                assert _raw(a, f"secret = {marker_code!r} * 3\nprint(len(secret))")["ok"]
            fresh = [sandbox.episode(images=[mine]) for _ in range(3)]  # started while a is alive
            try:
                for ep in fresh:
                    assert found(ep) == set()
            finally:
                for ep in fresh:
                    ep.close()
            # The dump can show what it looks for: an episode's own code is in its own memory.
            assert marker_code in found(a)


# ------------------------------------------------------------------ 4. a reaped pid signalled again
def test_hostile_reaped_pid_is_never_signalled(tmp_path, image):
    """The episode's main process exits while a detached child keeps its channel open, so the run
    only ends at its deadline. Its pid stays reserved (a zombie of its zygote) until the server has
    killed everything, so no other process can take that pid and be killed for it. Process mode: the
    server shares the host's pid namespace, where the test can try to hand that pid to a victim."""
    code = ("import time\npid = os.getpid()\n"
            "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
            "open('pid.txt', 'w').write(str(pid))\ntime.sleep(0.2)\nos._exit(0)")
    with Sandbox(timeout_s=5.0, isolation="process") as sandbox, sandbox.episode(images=[image]) as ep:
        done = {}
        thread = threading.Thread(target=lambda: done.setdefault("r", _raw(ep, code, timeout=4.0)))
        thread.start()
        pid_file = os.path.join(ep.work_dir, "pid.txt")
        deadline = time.monotonic() + 10
        while not (os.path.exists(pid_file) and os.path.getsize(pid_file)) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(open(pid_file).read())
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.02)
        assert psutil.pid_exists(pid), "the exited main process was reaped before the server killed its episode"
        victims = []
        for _ in range(20):  # ask the kernel for that very pid; it cannot be given while reserved
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
            victims.append(psutil.Popen(["sleep", "30"]))
            if victims[-1].pid == pid:
                break
        try:
            assert all(v.pid != pid for v in victims), "a new process got the pid of a live episode's process"
            thread.join(30)
            assert done["r"].get("timed_out"), done
            assert all(v.poll() is None for v in victims), "the server's kill hit a process not of the episode"
        finally:
            for v in victims:
                v.kill()
                v.wait()


# ------------------------------------------------------------------ 5. exec through a memfd
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_hostile_memfd_exec_and_every_exec_path_are_denied(isolation, image):
    code = ("import ctypes, shutil\nlibc = ctypes.CDLL(None, use_errno=True)\nres = []\n"
            "try:\n    fd = os.memfd_create('x')\n    res.append('memfd ok')\nexcept OSError as e:\n    res.append(f'memfd {e.errno}')\n"
            "shutil.copy('/usr/bin/true', 'true')\n"
            "try:\n    os.execv('./true', ['true'])\nexcept OSError as e:\n    res.append(f'execv {e.errno}')\n"
            "rc = libc.syscall(322, -100, b'/usr/bin/true', None, None, 0)\nres.append(f'execveat {rc} {ctypes.get_errno()}')\n"
            "fd = os.open('/usr/bin/true', os.O_RDONLY)\n"
            "try:\n    os.execve(fd, ['true'], {})\nexcept OSError as e:\n    res.append(f'fexecve {e.errno}')\n"
            "print(res)")
    with Sandbox(timeout_s=5.0, isolation=isolation) as sandbox, sandbox.episode(images=[image]) as ep:
        reply = _raw(ep, code)
        assert reply.get("ok"), reply
        assert reply["stdout"].strip() == "['memfd 1', 'execv 1', 'execveat -1 1', 'fexecve 1']", reply["stdout"]


# ------------------------------------------------------------------ 6. socket families
def test_hostile_sockets_only_by_allow_list(tmp_path, image):
    """No family may be created with socket() (VSOCK, Unix, IP, netlink, packet); socketpair() only
    AF_UNIX. In process mode a world-writable Unix socket on the host (like Ray's) stays unreachable."""
    host_sock = str(tmp_path / "ray-like.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(host_sock)
    os.chmod(host_sock, 0o777)
    os.chmod(tmp_path, 0o755)
    listener.listen(4)
    listener.settimeout(0.1)
    code = ("import socket\nres = []\n"
            "for fam in (40, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET, 38):\n"
            "    try:\n        socket.socket(fam, socket.SOCK_STREAM if fam != socket.AF_NETLINK else socket.SOCK_RAW)\n"
            "        res.append('made')\n    except OSError as e:\n        res.append(e.errno)\n"
            "a, b = socket.socketpair()\na.send(b'x')\nres.append(b.recv(1))\n"
            "try:\n    socket.socketpair(socket.AF_INET)\nexcept OSError as e:\n    res.append('pair-inet')\n"
            f"try:\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({host_sock!r})\n    res.append('connected')\n"
            "except OSError as e:\n    res.append('unreachable')\nprint(res)")
    for isolation in ("auto", "process"):
        with Sandbox(timeout_s=5.0, isolation=isolation) as sandbox, sandbox.episode(images=[image]) as ep:
            reply = _raw(ep, code)
            assert reply.get("ok"), reply
            assert reply["stdout"].strip() == "[97, 97, 97, 97, 97, 97, 97, b'x', 'pair-inet', 'unreachable']", reply
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


# ------------------------------------------------------------------ 7. weakly verified outputs
def test_hostile_outputs_are_only_checked_png_or_jpeg(sb, image):
    """Through the episode's own hand-over, other formats come back re-encoded as PNG and EPS is
    never decoded; a forged reply bypassing it gets only files that pass the server's full check."""
    make = ("import struct, zlib\n"
            "def chunk(t, d):\n    return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
            "img = cv2.imread(image_path)\n"
            "cv2.imwrite('plain.bmp', img)\n"
            "Image.fromarray(img).save('prog.jpg', progressive=True)\n"
            "open('doc.eps', 'w').write('%!PS-Adobe-3.0 EPSF-3.0\\n%%BoundingBox: 0 0 10 10\\nshowpage\\n')\n"
            "ihdr = chunk(b'IHDR', struct.pack('>IIBBBBB', 80, 60, 8, 2, 0, 0, 0))\n"
            "open('garbage.png', 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + ihdr + chunk(b'IDAT', os.urandom(3000)) + chunk(b'IEND', b''))\n"
            "cv2.imwrite('good.png', img)\n")
    with sb.episode(images=[image]) as ep:
        reply = _raw(ep, make + "processed_path = ['plain.bmp', 'prog.jpg', 'doc.eps', 'garbage.png', 'good.png']")
        assert reply.get("ok"), reply
        names = [os.path.basename(p).split("_", 1)[1] for p in reply["images"]]
        assert names == ["plain.png", "prog.png", "good.png"], names
        for path in reply["images"]:
            with Image.open(path) as im:
                assert im.format == "PNG"
                im.load()
                assert im.size == (80, 60)
        forged = _raw(ep, FORGE + "forge({'ok': True, 'stdout': 'forged', 'error': None, "
                                  "'images': ['doc.eps', 'garbage.png', 'plain.bmp', 'good.png']})\n"
                                  "import time\ntime.sleep(1)")
        assert forged["stdout"] == "forged"
        assert [os.path.basename(p).split("_", 1)[1] for p in forged["images"]] == ["good.png"], forged


# ------------------------------------------------------------------ 10. the output path checked first
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_hostile_output_path_is_checked_before_it_is_opened(isolation, image):
    """A forged reply names a FIFO outside the work dir, directly and through a symlink inside it. The
    server must not open it: a writer blocked on the FIFO would be released if it did."""
    with Sandbox(timeout_s=5.0, isolation=isolation) as sandbox, sandbox.episode(images=[image]) as ep:
        fifo = os.path.join(sandbox.episodes_dir, f"probe-{uuid.uuid4().hex[:6]}.png")
        os.mkfifo(fifo, 0o644)
        opened = threading.Event()

        def writer():
            fd = os.open(fifo, os.O_WRONLY)  # blocks until a reader opens the FIFO
            opened.set()
            os.close(fd)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        code = (FORGE + f"os.symlink({fifo!r}, 'link.png')\n"
                f"forge({{'ok': True, 'stdout': 'forged', 'error': None, 'images': [{fifo!r}, 'link.png', "
                f"'../../' + {os.path.basename(fifo)!r}]}})\nimport time\ntime.sleep(1)")
        reply = _raw(ep, code)
        assert reply["stdout"] == "forged" and reply["images"] == [], reply
        time.sleep(0.3)
        assert not opened.is_set(), "the server opened a path outside the work dir"
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # release the writer ourselves
        thread.join(5)
        os.close(fd)
        assert opened.is_set()
        os.unlink(fifo)
