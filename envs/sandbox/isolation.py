"""The isolation layers: bubblewrap around the warm server, and, per episode process, its own uid,
resource limits and a syscall filter. Each function is one layer so the server reads as a recipe.
"""
from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

from .config import SandboxConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------- bubblewrap (around the server)
@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bubblewrap works here, else why not (missing binary, user namespaces off, ...)."""
    binary = shutil.which("bwrap")
    if binary is None:
        return "bubblewrap (bwrap) is not installed; install it with `apt-get install -y bubblewrap`"
    probe = [binary, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--unshare-ipc",
             "--dev", "/dev", "--proc", "/proc", "/bin/true"]
    if os.geteuid() != 0:
        probe[1:1] = ["--unshare-user"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap failed to run: {exc}"
    if done.returncode != 0:
        return ("bubblewrap cannot create namespaces here (user namespaces off or a restricted "
                f"container): {done.stderr.decode(errors='replace').strip()}")
    return None


def _python_roots() -> list[str]:
    """Folders the interpreter and its installed packages live in (read-only binds). Only these: not
    arbitrary sys.path entries, which may be the caller's current folder or a Ray session folder."""
    paths = sysconfig.get_paths()
    roots = {sys.base_prefix, sys.prefix, paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"],
             os.path.dirname(os.path.realpath(sys.executable))}
    try:
        import site
        roots.update(site.getsitepackages())
    except (AttributeError, ImportError):
        pass
    roots = {os.path.realpath(r) for r in roots if r and os.path.isdir(r)} | {r for r in roots if r and os.path.isdir(r)}
    roots -= {"/", str(REPO_ROOT)}
    kept = []
    for root in sorted(roots, key=len):  # drop folders already covered by a parent bind
        if not any(root == k or root.startswith(k + os.sep) for k in kept):
            kept.append(root)
    return kept


def bwrap_command(server_argv: list[str], *, inputs_dir: str, episodes_dir: str,
                  cgroup_dirs: list[str] = ()) -> list[str]:
    """bwrap argv that runs the warm server with: no network, a read-only system, a private /tmp,
    no host secrets or home, an empty environment, the inputs read-only and the episodes' folder the
    only writable place. The server keeps root inside (no user namespace when we are root) so it can
    give every episode its own uid; the episode processes drop it before any code runs.
    cgroup_dirs: the server's own cgroup folders, bound writable so it can make episodes' cgroups."""
    cmd = ["bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if os.geteuid() != 0:
        cmd.append("--unshare-user")
    for system_dir in ("/usr", "/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(system_dir):
            cmd += ["--symlink", os.readlink(system_dir), system_dir]
        elif os.path.isdir(system_dir):
            cmd += ["--ro-bind", system_dir, system_dir]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/dev/shm"]
    # The dynamic loader needs ld.so.cache (seccomp's libseccomp, cv2's libraries); nothing else of /etc.
    etc_files = [f for f in ("/etc/ld.so.cache", "/etc/localtime") if os.path.exists(f)]
    binds = [r for r in _python_roots() if not r.startswith("/usr/")] + [str(REPO_ROOT / "envs")]
    # Parent folders bwrap would otherwise create as 0700 (unreachable for the episode uids).
    parents = sorted({str(p) for b in binds + etc_files + [inputs_dir, episodes_dir] for p in Path(b).parents},
                     key=len)
    for parent in parents:
        if parent not in ("/", "/tmp") and not parent.startswith("/usr/"):
            cmd += ["--perms", "0755", "--dir", parent]
    for bind in binds + etc_files:
        cmd += ["--ro-bind", bind, bind]
    cmd += [
            "--ro-bind", inputs_dir, inputs_dir, "--bind", episodes_dir, episodes_dir,
            *[arg for d in cgroup_dirs for arg in ("--bind", d, d)],
            "--remount-ro", "/",  # the root tmpfs bwrap builds: nothing new can be created at the top
            "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
            "--setenv", "PYTHONPATH", str(REPO_ROOT), "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--chdir", "/"]
    return cmd + server_argv


def server_environment() -> dict[str, str]:
    """Environment of the server when it runs without bubblewrap (process isolation)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


# ---------------------------------------------------------------- per-episode process layers
def set_parent_death_signal() -> None:
    """The episode process dies with the server, whatever happens to the server."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# What the server needs as root, and nothing else: CHOWN (an episode's work dir to its uid),
# DAC_OVERRIDE and FOWNER (read, check, chmod and remove files of other uids), KILL (signal episode
# processes of other uids), SETGID and SETUID (episode processes and the sweep helper become a uid).
# Not SYS_ADMIN, SYS_PTRACE, NET_*, SYS_MODULE, ... while it reads and decodes attacker-made files.
SERVER_CAPABILITIES = (0, 1, 3, 5, 6, 7)
_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_CAPABILITY_VERSION_3 = 0x20080522


def drop_server_capabilities(keep: tuple[int, ...] = SERVER_CAPABILITIES) -> None:
    """Reduce this process (as root) to `keep`: bounding set, permitted, effective; nothing
    inheritable or ambient, so no program it runs (rm) and no process it forks gets more."""
    if os.geteuid() != 0:
        return  # an unprivileged server has no capabilities to drop
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep and _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"could not drop capability {cap} from the bounding set")
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    mask = sum(1 << c for c in keep)
    header = struct.pack("=Ii", _CAPABILITY_VERSION_3, 0)
    data = struct.pack("=6I", mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0, mask >> 32, mask >> 32, 0)
    if _libc.syscall(126, ctypes.c_char_p(header), ctypes.c_char_p(data)) != 0:  # capset
        raise OSError(ctypes.get_errno(), "capset failed")


def become_subreaper() -> None:
    """Orphans of episode processes (double forks) are re-parented to the server, which kills and reaps them."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def apply_rlimits(cfg: SandboxConfig, *, per_uid: bool) -> None:
    """CPU, memory, processes, file size and open-file limits for this process and what it starts."""
    def limit(kind: int, soft: int, hard: int | None = None) -> None:
        resource.setrlimit(kind, (soft, soft if hard is None else hard))

    used_cpu = int(resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime)
    limit(resource.RLIMIT_CPU, used_cpu + cfg.cpu_time_s, used_cpu + cfg.episode_cpu_time_s)
    limit(resource.RLIMIT_AS, _address_space_now() + cfg.memory_mb * 1024 * 1024)
    limit(resource.RLIMIT_FSIZE, cfg.max_file_mb * 1024 * 1024)
    limit(resource.RLIMIT_NOFILE, cfg.max_open_files)
    limit(resource.RLIMIT_CORE, 0)
    if per_uid:  # RLIMIT_NPROC counts every process of the uid: meaningful only with a uid per episode
        limit(resource.RLIMIT_NPROC, cfg.max_processes)


def rearm_cpu_limit(cfg: SandboxConfig) -> None:
    """Give the next run its own CPU budget (the soft limit is cumulative over the process's life)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + cfg.cpu_time_s
    resource.setrlimit(resource.RLIMIT_CPU, (min(soft, hard) if hard != resource.RLIM_INFINITY else soft, hard))


def _address_space_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def drop_privileges(uid: int | None) -> None:
    """Become the episode's own unprivileged uid (no supplementary groups, no capabilities)."""
    if uid is None:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        raise RuntimeError("could not drop privileges")


# ---------------------------------------------------------------- Landlock (kernel >= 5.13; any uid)
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_CHAR, _FS_MAKE_DIR, _FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
_FS_MAKE_SOCK, _FS_MAKE_FIFO, _FS_MAKE_BLOCK, _FS_MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15      # ABI 2, 3, 5
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1                         # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1              # ABI 6
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(version))


def read_roots() -> list[str]:
    """Folders an episode may read (besides its inputs and work dir): the system's libraries and the
    interpreter with its packages. Not /home, /root, /etc, /proc or other episodes."""
    roots = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime", str(REPO_ROOT / "envs")]
    return [r for r in dict.fromkeys(roots + _python_roots()) if os.path.exists(r)]


def prepare_landlock(*, writable: str, readable: list[str]) -> int | None:
    """Build (not yet enforce) a ruleset: write only beneath `writable`, read only beneath `readable`
    and `writable`, execute nothing, no TCP, and (ABI >= 6) no signals or abstract Unix sockets
    outside the episode. Done before dropping privileges (the rules' folders must be openable);
    returns the ruleset's fd, or None when the kernel has no Landlock."""
    abi = landlock_abi()
    if abi < 1:
        return None
    fs = (_FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_READ_DIR | _FS_REMOVE_DIR | _FS_REMOVE_FILE
          | _FS_MAKE_CHAR | _FS_MAKE_DIR | _FS_MAKE_REG | _FS_MAKE_SOCK | _FS_MAKE_FIFO | _FS_MAKE_BLOCK | _FS_MAKE_SYM)
    fs |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("=QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    read = _FS_READ_FILE | _FS_READ_DIR
    write = fs & ~_FS_EXECUTE & ~_FS_IOCTL_DEV
    for path, access in [(p, read) for p in readable] + [(writable, write), ("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE)]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not present here: nothing to allow
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= _FILE_RIGHTS
            rule = struct.pack("=Qi", access & fs, fd)
            if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                             ctypes.c_char_p(rule), ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        finally:
            os.close(fd)
    return ruleset


def enforce_landlock(ruleset: int) -> None:
    """Apply a prepared ruleset to this process and everything it starts from now on (irrevocable)."""
    try:
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


def kill_uid(uid: int, remove_ipc: bool = False) -> None:
    """SIGKILL every process running as `uid` (an episode's processes, however they detached), and
    with remove_ipc, remove the IPC objects it owns (at the episode's end).

    Done in a helper process that becomes `uid`: kill(-1) from it reaches exactly the processes that
    uid may signal (its own), and as their owner it may remove that uid's IPC objects and nothing else."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for _ in range(3):  # a fork bomb may be creating processes while we kill
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
            if remove_ipc:
                remove_ipc_objects(uid)
        except BaseException:  # noqa: BLE001
            pass
        os._exit(0)
    os.waitpid(pid, 0)


_IPC_RMID = 0


def remove_ipc_objects(uid: int) -> None:
    """Remove what outlives an episode's processes: SysV shared memory, semaphores and message queues
    owned by `uid`, and its files in /dev/shm and /dev/mqueue (POSIX shared memory and queues). The
    syscall filter denies creating any of them; this covers an episode that ran without it."""
    removers = {"shm": lambda i: _libc.shmctl(i, _IPC_RMID, None), "sem": lambda i: _libc.semctl(i, 0, _IPC_RMID),
                "msg": lambda i: _libc.msgctl(i, _IPC_RMID, None)}
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header, *rows = [line.split() for line in f]
        except OSError:
            continue
        id_column, uid_column = 1, header.index("uid")
        for row in rows:
            if len(row) > uid_column and int(row[uid_column]) == uid:
                remove(int(row[id_column]))
    for folder in ("/dev/shm", "/dev/mqueue"):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
