"""One hostile test per class of the adversarial review of the sandbox's own seams (issue 12). Each
attacks the real sandbox (bubblewrap mode unless it says otherwise) the way the review did, bypassing
the pattern scan where the attack needs it, and asserts the root fix holds.

The scan's own class (2: linear time, size cap) is tested in tests/test_scan.py.
"""
from __future__ import annotations

import os
import socket
import struct
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


# ------------------------------------------------------------------ 8. SysV IPC and uid reuse
IPC = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
       "shm = libc.shmget(0, 1 << 20, 0o1600)\nsem = libc.semget(0, 1, 0o1600)\nmsg = libc.msgget(0, 0o1600)\n"
       "print(shm, sem, msg, ctypes.get_errno())\n")


def test_hostile_sysv_ipc_is_denied(sb, image):
    with sb.episode(images=[image]) as ep:
        reply = _raw(ep, IPC)
        assert reply["stdout"].strip() == "-1 -1 -1 1", reply  # EPERM from the syscall filter


def _sysv_owned_by(uid: int) -> list[str]:
    owned = []
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            header, *rows = [line.split() for line in f]
        column = header.index("uid")
        owned += [f"{kind} {row[1]}" for row in rows if int(row[column]) == uid]
    return owned


def test_hostile_ipc_objects_are_removed_at_episode_end(image):
    """Without the syscall filter (and Landlock), an episode can make SysV objects and POSIX shared
    memory. Process mode: they would live in the host's IPC namespace. All go when the episode ends."""
    with Sandbox(timeout_s=5.0, isolation="process", seccomp=False, landlock=False) as sandbox:
        ep = sandbox.episode(images=[image])
        name = f"/dev/shm/thyme-{uuid.uuid4().hex[:8]}"
        reply = _raw(ep, IPC + f"open({name!r}, 'w').write('left behind')")
        shm, sem, msg = (int(x) for x in reply["stdout"].split()[:3])
        assert min(shm, sem, msg) >= 0, reply
        uid = ep.uid
        assert len(_sysv_owned_by(uid)) == 3 and os.path.exists(name)
        ep.close()
        sandbox.wait_idle()
        assert _sysv_owned_by(uid) == [] and not os.path.exists(name)


def test_hostile_uids_are_not_handed_out_last_freed_first(sb, image):
    used = []
    for _ in range(6):
        with sb.episode(images=[image]) as ep:
            used.append(ep.uid)
        sb.wait_idle()
    assert len(set(used)) == len(used), used  # a freed uid goes to the back of the queue


# ------------------------------------------------------------------ 9. accounting: memory, CPU, disk
def _cgroups_here() -> bool:
    with Sandbox(cgroup="auto") as sandbox:
        sandbox.start()
        return sandbox.servers[0].cgroup_version is not None


CGROUPS = _cgroups_here()
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason="cgroups are not writable here: the fallback is tested")

MEMORY_SPLIT = ("import time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
                "        x = bytearray(100 * 2**20)\n        time.sleep(2)\n        os._exit(0)\n    kids.append(pid)\n"
                "killed = sum(os.WIFSIGNALED(os.waitpid(p, 0)[1]) for p in kids)\nprint('killed', killed)")


@needs_cgroups
def test_hostile_memory_is_limited_per_episode(image):
    """memory_mb bounds the episode's processes together: four forks of 100 MB each at memory_mb=128."""
    with Sandbox(timeout_s=10.0, memory_mb=128) as sandbox, sandbox.episode(images=[image]) as ep:
        reply = _raw(ep, MEMORY_SPLIT, timeout=10)
        assert reply.get("ok"), reply
        assert int(reply["stdout"].split()[1]) >= 2, reply  # at most 192 MB (+ headroom) in all
        assert ep.run("print('alive')").stdout == "alive\n"


def test_memory_falls_back_to_per_process_limits_without_cgroups(image):
    """sandbox.cgroup=off (as where cgroups are not writable): each process has memory_mb of its own."""
    with Sandbox(timeout_s=10.0, memory_mb=128, cgroup="off") as sandbox, sandbox.episode(images=[image]) as ep:
        assert sandbox.servers[0].cgroup_version is None
        reply = _raw(ep, MEMORY_SPLIT, timeout=10)
        assert reply["stdout"].strip() == "killed 0", reply
        assert "MemoryError" in _raw(ep, "x = bytearray(300 * 2**20)")["error"]


def test_unwritable_cgroups_fall_back_with_a_warning(tmp_path, image):
    """A real machine where cgroups cannot be used: /sys/fs/cgroup hidden by an empty tmpfs in a
    private mount namespace. cgroup=auto warns once and runs; cgroup=require refuses to start."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import warnings, sys\nfrom envs.sandbox import Sandbox, SandboxStartError\n"
        "with warnings.catch_warnings(record=True) as seen:\n    warnings.simplefilter('always')\n"
        "    with Sandbox(timeout_s=5.0) as sb, sb.episode(images=[sys.argv[1]]) as ep:\n"
        "        print('ran', ep.run('print(6 * 7)').stdout.strip(), sb.servers[0].cgroup_version)\n"
        "print('warned', any('cgroups are unavailable' in str(w.message) for w in seen))\n"
        "try:\n    Sandbox(cgroup='require').start()\nexcept SandboxStartError as exc:\n    print('refused', 'require' in str(exc))\n")
    import subprocess
    import sys as _sys
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs none /sys/fs/cgroup && exec {_sys.executable} {script} {image}"],
                          capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.stdout.split("\n")[:3] == ["ran 42 None", "warned True", "refused True"], done.stdout + done.stderr


@needs_cgroups
def test_hostile_cpu_rate_is_limited_per_episode(image):
    """Eight threads burning for 2 s get episode_cpus of CPU, not every core."""
    code = ("import threading, time\nstop = time.monotonic() + 2\n"
            "def burn():\n    while time.monotonic() < stop:\n        pass\n"
            "ts = [threading.Thread(target=burn) for _ in range(8)]\nc = time.process_time()\n"
            "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(round(time.process_time() - c, 2))")
    with Sandbox(timeout_s=10.0, episode_cpus=0.25) as sandbox, sandbox.episode(images=[image]) as ep:
        reply = _raw(ep, code, timeout=10)
        assert float(reply["stdout"]) < 0.25 * 2 * 1.5, reply


@needs_cgroups
def test_hostile_cpu_total_counts_every_process(image):
    """Two forks burning 1.5 s each: per process under cpu_time_s, together over episode_cpu_time_s."""
    code = ("import time\nkids = []\nfor _ in range(2):\n    pid = os.fork()\n    if pid == 0:\n"
            "        c = time.process_time()\n        while time.process_time() - c < 1.5:\n            pass\n"
            "        os._exit(0)\n    kids.append(pid)\n[os.waitpid(p, 0) for p in kids]\nprint('burnt')")
    with Sandbox(timeout_s=20.0, cpu_time_s=2, episode_cpu_time_s=2) as sandbox, \
            sandbox.episode(images=[image]) as ep:
        reply = _raw(ep, code, timeout=20)
        assert "CPUTimeError" in (reply.get("error") or ""), reply
        assert "variables from earlier runs were lost" in ep.run("print(1)").error


@needs_cgroups
def test_hostile_detached_process_cannot_burn_cpu_between_runs(sb, image):
    code = ("if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        while True:\n            pass\n"
            "    os._exit(0)\nimport time\ntime.sleep(0.2)\nprint('detached')")
    with sb.episode(images=[image]) as ep:
        assert _raw(ep, code)["stdout"] == "detached\n"
        time.sleep(0.3)
        mine = [p for p in psutil.process_iter(["uids", "status"]) if p.info["uids"]
                and p.info["uids"].real == ep.uid and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert len(mine) == 1, [p.pid for p in mine]  # only the episode's main process is left (the
        # first child's exit status is still its to collect)


def test_hostile_disk_quota_counts_outputs_unlinked_and_deep_files(image):
    with Sandbox(timeout_s=10.0, max_episode_disk_mb=5, max_episode_depth=20) as sandbox:
        with sandbox.episode(images=[image]) as ep:
            # A file unlinked while open would hold disk space that no walk sees: it cannot lose its name.
            reply = _raw(ep, "f = open('hidden.bin', 'wb')\nf.write(os.urandom(6 * 2**20))\nf.flush()\n"
                             "try:\n    os.unlink('hidden.bin')\nexcept OSError as e:\n    print('unlink', e.errno)\n"
                             "try:\n    os.open('.', os.O_TMPFILE | os.O_WRONLY)\nexcept OSError as e:\n    print('tmpfile', e.errno)\n"
                             "keep_open = f")
            assert reply["stdout"] == "unlink 1\ntmpfile 1\n" and "DiskQuotaError" in reply["error"], reply
        with sandbox.episode(images=[image]) as ep:
            reply = _raw(ep, "for _ in range(30):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')")
            assert "DiskQuotaError" in reply["error"] and "nested more than 20" in reply["error"], reply
        with sandbox.episode(images=[image]) as ep:
            # The same 1.5 MB file each run: the work dir stays at 1.5 MB, the accepted copies pile up.
            save = "Image.fromarray(np.random.randint(0, 255, (700, 720, 3), np.uint8)).save('noise.png')"
            results = [ep.run(save) for _ in range(3)]
            assert results[0].ok and results[1].ok and len(results[1].images) == 1
            assert "DiskQuotaError" in results[2].error and "accepted output images count" in results[2].error


# ------------------------------------------------------------------ 10. the server's capabilities
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_hostile_server_runs_with_only_the_capabilities_it_needs(isolation, image):
    from envs.sandbox.isolation import SERVER_CAPABILITIES

    expected = sum(1 << c for c in SERVER_CAPABILITIES)
    with Sandbox(timeout_s=5.0, isolation=isolation) as sandbox, sandbox.episode(images=[image]) as ep:
        assert ep.run("print(1)").ok
        top = psutil.Process(sandbox.servers[0].proc.pid)
        # bwrap's own two processes only set up and wait; every process that reads requests or files is Python.
        pythons = [p for p in [top] + top.children(recursive=True)
                   if p.name() != "bwrap" and "envs.sandbox.server" in " ".join(p.cmdline())]
        assert len(pythons) >= 4  # the server, the root zygote, an image zygote, the episode
        for proc in pythons:
            caps = {line.split(":")[0]: int(line.split()[1], 16)
                    for line in open(f"/proc/{proc.pid}/status") if line.startswith("Cap")}
            assert caps["CapBnd"] == expected, (proc.pid, hex(caps["CapBnd"]))
            assert caps["CapEff"] == (0 if proc.uids().real == ep.uid else expected), (proc.pid, hex(caps["CapEff"]))
            assert caps["CapInh"] == 0 and caps.get("CapAmb", 0) == 0
