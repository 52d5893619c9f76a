"""Per-episode cgroups: one limit for the memory of all an episode's processes together, its CPU
rate (a share of cores) and CPU total, and its number of processes, whatever its code forks.

rlimits are per process: with memory_mb=128 an episode of a few processes held 470 MB, and 32 GB
in the worst case at the defaults. A cgroup counts them together. The Sandbox (outside bubblewrap)
creates one folder per server, beside its own cgroup (v1: in each of the memory, cpu, cpuacct and
pids hierarchies; v2: under the hierarchy's root, with those controllers delegated); bubblewrap binds
it into the server's view, and the server makes one child folder per episode and moves each episode
process in before its code runs.

Where cgroups are not writable (no root, a read-only /sys/fs/cgroup, controllers missing), `probe`
says why and the sandbox falls back to per-process rlimits only, warning once (sandbox.cgroup=auto),
or refuses to start (sandbox.cgroup=require).
"""
from __future__ import annotations

import os
import signal
import time

_V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
_V2_CONTROLLERS = ("memory", "cpu", "pids")
_PERIOD_US = 100_000
# Pages of the warm libraries an episode process dirties (reference counts, its own heap) are
# charged to its cgroup; measured here at about 10-20 MB. Added to memory_mb so the code keeps it all.
HEADROOM_MB = 64
# CPU priority of a run falls as its CPU time grows past this (an OS's favour for short jobs): a
# snippet that crops and answers in ~0.1 s of CPU keeps full weight, a burner's weight is a tenth of
# it after one second, so short runs beside it still get the CPU they need. An episode that uses CPU
# between runs (threads left running) gets the least. Weights are written only when they change, so
# a short run costs no write at all.
_FULL_WEIGHT_CPU_S = 0.1
_WEIGHTS = {1: (2, 1024), 2: (1, 100)}   # (least, default) of cpu.shares (v1) and cpu.weight (v2)


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fs type, super options) of each cgroup mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], tail[0], tail[2]))
    return found


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def create_server_cgroup(name: str) -> tuple[dict | None, str | None]:
    """Create this server's cgroup folder(s): ({"version": 1|2, "dirs": {controller: dir}}, None),
    or (None, why cgroups cannot be used here)."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError as exc:
        return None, f"cannot read this process's cgroups ({exc})"
    v2 = next((m for m in mounts if m[2] == "cgroup2"), None)
    problems = []
    if v2 is not None:
        available = set(_read_or_empty(os.path.join(v2[1], "cgroup.controllers")).split())
        if set(_V2_CONTROLLERS) <= available:
            try:
                return _create_v2(v2[1], name), None
            except OSError as exc:
                problems.append(f"cgroup v2 at {v2[1]} is not writable ({exc.strerror or exc})")
        else:
            problems.append(f"cgroup v2 at {v2[1]} lacks controllers {sorted(set(_V2_CONTROLLERS) - available)}")
    dirs = {}
    for controller in _V1_CONTROLLERS:
        mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3].split(",")), None)
        if mount is None or controller not in own:
            problems.append(f"no cgroup v1 {controller} hierarchy")
            break
        root, point = mount[0], mount[1]
        relative = os.path.relpath(own[controller], root) if own[controller].startswith(root) else None
        if relative is None:
            problems.append(f"this process's {controller} cgroup is outside the mounted hierarchy")
            break
        dirs[controller] = os.path.normpath(os.path.join(point, relative, name))
    else:
        made = []
        try:
            for folder in dict.fromkeys(dirs.values()):
                os.mkdir(folder, 0o755)
                made.append(folder)
            return {"version": 1, "dirs": dirs}, None
        except OSError as exc:
            for folder in made:
                _rmdir(folder)
            problems.append(f"cgroup v1 is not writable ({exc.strerror or exc})")
    return None, "; ".join(problems)


def _read_or_empty(path: str) -> str:
    try:
        return _read(path)
    except OSError:
        return ""


def _create_v2(point: str, name: str) -> dict:
    # Beside our own cgroup would need our cgroup to hold no processes (v2's rule for delegating
    # controllers); the hierarchy's root is exempt, so the server's folder goes there.
    control = os.path.join(point, "cgroup.subtree_control")
    enabled = set(_read(control).split())
    missing = [c for c in _V2_CONTROLLERS if c not in enabled]
    if missing:
        _write(control, " ".join(f"+{c}" for c in missing))
    folder = os.path.join(point, name)
    os.mkdir(folder, 0o755)
    try:
        _write(os.path.join(folder, "cgroup.subtree_control"), " ".join(f"+{c}" for c in _V2_CONTROLLERS))
    except OSError:
        _rmdir(folder)
        raise
    return {"version": 2, "dirs": {"": folder}}


def remove_server_cgroup(info: dict | None) -> None:
    """Remove the server's folder(s) and any episode folder left in them (after the server is gone)."""
    if not info:
        return
    for folder in dict.fromkeys(info["dirs"].values()):
        try:
            children = [e.path for e in os.scandir(folder) if e.is_dir()]
        except OSError:
            children = []
        for child in children:
            _rmdir(child)
        _rmdir(folder)


def _rmdir(folder: str) -> None:
    for _ in range(50):  # a cgroup is busy for a moment after its last process died
        try:
            os.rmdir(folder)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def set_server_weight(info: dict, running: int) -> None:
    """The server folder's CPU weight: one process's weight per episode running code. Every episode
    then weighs what a single process weighs beside the machine's other work, as it did before it had
    a cgroup, however many threads and processes it runs: a neighbour's burner threads count once."""
    least, full = _WEIGHTS[info["version"]]
    weight = min(262144 if info["version"] == 1 else 10000, full * max(1, running))
    name = "cpu.weight" if info["version"] == 2 else "cpu.shares"
    _try_write(os.path.join(info["dirs"]["" if info["version"] == 2 else "cpu"], name), str(weight))


class EpisodeCgroup:
    """One episode's cgroup, made by the server inside its own folder."""

    def __init__(self, info: dict, name: str, *, memory_mb: int, cpus: float, max_processes: int):
        self.version, self.name = info["version"], name
        self.dirs = {c: os.path.join(d, name) for c, d in info["dirs"].items()}
        self.memory_bytes = (memory_mb + HEADROOM_MB) * 2**20
        for folder in dict.fromkeys(self.dirs.values()):
            os.makedirs(folder, exist_ok=True)
        quota = max(1000, int(cpus * _PERIOD_US))
        if self.version == 2:
            folder = self.dirs[""]
            _write(os.path.join(folder, "memory.max"), str(self.memory_bytes))
            _try_write(os.path.join(folder, "memory.swap.max"), "0")
            _write(os.path.join(folder, "cpu.max"), f"{quota} {_PERIOD_US}")
            _write(os.path.join(folder, "pids.max"), str(max_processes))
        else:
            _write(os.path.join(self.dirs["memory"], "memory.limit_in_bytes"), str(self.memory_bytes))
            _try_write(os.path.join(self.dirs["memory"], "memory.memsw.limit_in_bytes"), str(self.memory_bytes))
            _write(os.path.join(self.dirs["cpu"], "cpu.cfs_period_us"), str(_PERIOD_US))
            _write(os.path.join(self.dirs["cpu"], "cpu.cfs_quota_us"), str(quota))
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(max_processes))
        self.oom_seen = self.oom_kills()
        # Read after every run: kept open and re-read with pread (a cgroup file regenerates at offset 0).
        self._procs_fd = os.open(self._file("pids", "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        self._cpu_fd = os.open(self._file("cpu", "cpu.stat") if self.version == 2
                               else self._file("cpuacct", "cpuacct.usage"), os.O_RDONLY | os.O_CLOEXEC)
        self.run_started_cpu: float | None = None   # the episode's CPU seconds when its current run began
        self.idle_cpu = 0.0                          # ... when its last run ended
        self.weight = _WEIGHTS[self.version][1]      # a new cgroup has the default (full) weight

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.dirs["" if self.version == 2 else controller], name)

    def add(self, pid: int) -> None:
        """Move a process in (before it runs any code: what it allocates from then on counts here)."""
        for folder in dict.fromkeys(self.dirs.values()):
            _write(os.path.join(folder, "cgroup.procs"), str(pid))

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in os.pread(self._procs_fd, 1 << 16, 0).split()]
        except OSError:
            return []

    def cpu_seconds(self) -> float:
        """CPU time of every process the episode ever had, together."""
        try:
            text = os.pread(self._cpu_fd, 4096, 0).decode()
            if self.version == 2:
                stats = dict(line.split() for line in text.splitlines())
                return int(stats["usage_usec"]) / 1e6
            return int(text) / 1e9
        except (OSError, KeyError, ValueError):
            return 0.0

    def run_begins(self) -> None:
        self.run_started_cpu = self.cpu_seconds()
        self._write_weight(_WEIGHTS[self.version][1])

    def run_ends(self, cpu_now: float) -> None:
        self.run_started_cpu, self.idle_cpu = None, cpu_now

    def set_weight(self) -> None:
        """Called now and then: a running episode's weight from the CPU time its run has used so far;
        an idle one's to the least once it has used CPU since its run ended."""
        least, full = _WEIGHTS[self.version]
        used = self.cpu_seconds()
        if self.run_started_cpu is None:
            if used > self.idle_cpu + 0.01:
                self._write_weight(least)
            return
        run = used - self.run_started_cpu
        self._write_weight(max(least, int(full * min(1.0, _FULL_WEIGHT_CPU_S / max(run, 1e-9)))))

    def _write_weight(self, weight: int) -> None:
        if weight != self.weight:
            self.weight = weight
            name = "cpu.weight" if self.version == 2 else "cpu.shares"
            _try_write(self._file("cpu", name), str(weight))

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            stats = dict(line.split() for line in _read(self._file("memory", name)).splitlines())
            return int(stats.get("oom_kill", 0))
        except (OSError, ValueError):
            return 0

    def new_oom_kill(self) -> bool:
        """True once for each time the kernel killed a process here for going over the memory limit."""
        now = self.oom_kills()
        hit, self.oom_seen = now > self.oom_seen, now
        return hit

    def kill_all(self, spare: int | None = None) -> None:
        """SIGKILL every process in the cgroup (but `spare`, a pid the caller keeps reserved).

        A pid read from cgroup.procs may exit and be reused before it is signalled, so each one is
        opened as a pidfd and checked to still be in this cgroup; only then is the pidfd signalled."""
        if spare is None and self.version == 2 and os.path.exists(self._file("", "cgroup.kill")):
            _try_write(self._file("", "cgroup.kill"), "1")
            return
        for _ in range(20):  # a fork bomb may be creating processes while we kill
            targets = [p for p in self.procs() if p != spare]
            if not targets:
                return
            for pid in targets:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if self._holds(pid):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(pidfd)
            time.sleep(0.001)

    def _holds(self, pid: int) -> bool:
        """Whether the process the caller holds a pidfd for (opened before this read) is in here."""
        try:
            lines = _read(f"/proc/{pid}/cgroup").splitlines()
        except OSError:
            return False
        return any(line.endswith("/" + self.name) for line in lines)

    def remove(self) -> None:
        self.kill_all()
        for fd in (self._procs_fd, self._cpu_fd):
            os.close(fd)
        for folder in dict.fromkeys(self.dirs.values()):
            _rmdir(folder)


def _try_write(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass  # optional: swap accounting off, an older kernel
