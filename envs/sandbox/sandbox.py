"""The caller's side of the sandbox: starts warm servers, stages input images, routes episodes.

    with Sandbox() as sb:
        with sb.episode(images=["in.jpg"]) as ep:
            r = ep.run(code)    # RunResult: ok, stdout, error, images, timed_out, fixes, duration_s

Thread-safe: many threads may run code in different episodes at once (each server multiplexes its
episodes); the rounds of one episode run one after the other.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path

from envs.protocol import extract_code

from . import isolation
from .cgroups import create_server_cgroup, remove_server_cgroup
from .config import SandboxConfig, load_sandbox_config
from .errors import EpisodeClosedError, InputImageError, SandboxError, SandboxStartError
from .result import RunResult
from .wire import WireError, encode, read_message

# How long past its own limit we wait for a server before declaring it hung and restarting it.
_SERVER_GRACE_S = 15.0
_warned_fallback = False


class _ServerHandle:
    """One warm server process and the thread reading its replies."""

    def __init__(self, sandbox: "Sandbox", index: int):
        self.sandbox, self.index = sandbox, index
        self.generation = 0
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()          # writes to the server's stdin
        self.restart_lock = threading.Lock()
        self.waiting: dict[int, list] = {}    # request id -> [event, reply]
        self.ids = itertools.count(1)
        self.live_episodes = 0
        self.pid = None
        self.cgroup: dict | None = None   # this server's cgroup folders (cgroups.py), made in start()
        # Per-episode uids must be unique on this host, across Sandboxes in other processes too
        # (RLIMIT_NPROC and file ownership are per uid): hold a uid block for this server's lifetime.
        self.uid_block, self._block_fd = _claim_uid_block(sandbox.config) if sandbox.uid_mode else (index, None)

    # -------------------------------------------------------------- life cycle
    def start(self) -> None:
        sb = self.sandbox
        argv = [sys.executable, "-s", "-m", "envs.sandbox.server"]
        log = open(os.path.join(sb.work_root, f"server-{self.index}.log"), "ab")
        self.cgroup = _server_cgroup(sb.config, f"thyme-sandbox-{os.getpid()}-{self.index}-{uuid.uuid4().hex[:8]}")
        cgroup_dirs = sorted(set(self.cgroup["dirs"].values())) if self.cgroup else []
        if sb.isolation == "bwrap":
            cmd, env = isolation.bwrap_command(argv, inputs_dir=sb.inputs_dir, episodes_dir=sb.episodes_dir,
                                               cgroup_dirs=cgroup_dirs), None
        else:
            cmd, env = argv, isolation.server_environment()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                     cwd="/", close_fds=True, start_new_session=True)
        log.close()
        init = {"config": asdict(sb.config), "index": self.uid_block, "uid_mode": sb.uid_mode, "cgroup": self.cgroup}
        self.proc.stdin.write(encode(init))
        self.proc.stdin.flush()
        ready: list = []
        reader = threading.Thread(target=lambda: ready.append(self._read_one()), daemon=True)
        reader.start()
        reader.join(sb.config.server_start_timeout_s)
        if not ready or not isinstance(ready[0], dict) or not ready[0].get("ready"):
            self.kill()
            raise SandboxStartError(f"sandbox server {self.index} did not start within "
                                    f"{sb.config.server_start_timeout_s} s ({sb.isolation} isolation); its log: "
                                    f"{self._log_tail()}")
        self.pid = ready[0].get("pid")
        self.cgroup_version = ready[0].get("cgroup")  # 1 or 2; None: per-process rlimits only
        self.seccomp = bool(ready[0].get("seccomp"))
        self.landlock_abi = int(ready[0].get("landlock_abi") or 0)
        self.generation += 1
        threading.Thread(target=self._reader, args=(self.proc, self.generation), daemon=True,
                         name=f"sandbox-server-{self.index}").start()

    def _read_one(self):
        try:
            return read_message(self.proc.stdout.fileno())
        except (WireError, OSError, ValueError) as exc:
            return exc

    def _log_tail(self) -> str:
        try:
            text = Path(self.sandbox.work_root, f"server-{self.index}.log").read_text(errors="replace")
            return text[-2000:].strip() or "(empty)"
        except OSError:
            return "(no log)"

    def _reader(self, proc: subprocess.Popen, generation: int) -> None:
        while True:
            try:
                reply = read_message(proc.stdout.fileno())
            except (WireError, OSError, ValueError):
                break
            slot = self.waiting.pop(reply.get("id"), None)
            if slot is not None:
                slot[1] = reply
                slot[0].set()
        # The server is gone: everyone waiting on it gets an answer instead of hanging.
        if generation == self.generation:
            for rid in list(self.waiting):
                slot = self.waiting.pop(rid, None)
                if slot is not None:
                    slot[1] = {"id": rid, "server_died": True}
                    slot[0].set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        remove_server_cgroup(getattr(self, "cgroup", None))
        self.cgroup = None

    def restart(self, seen_generation: int) -> None:
        """Replace a dead or hung server (once, however many threads noticed)."""
        with self.restart_lock:
            if self.generation != seen_generation and self.alive():
                return
            self.kill()
            self.live_episodes = 0
            self.start()

    def close(self) -> None:
        self._close_server()
        if self._block_fd is not None:
            os.close(self._block_fd)  # releases the flock: the uid block is free again
            self._block_fd = None

    def _close_server(self) -> None:
        if self.alive():
            try:
                self.request({"op": "shutdown"}, timeout=10)
            except SandboxError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    # -------------------------------------------------------------- requests
    def request(self, message: dict, timeout: float) -> dict:
        if not self.alive():
            raise _ServerGone(self.generation)
        rid = next(self.ids)
        slot = [threading.Event(), None]
        self.waiting[rid] = slot
        generation = self.generation
        try:
            with self.lock:
                self.proc.stdin.write(encode({**message, "id": rid}))
                self.proc.stdin.flush()
        except (OSError, ValueError):
            self.waiting.pop(rid, None)
            raise _ServerGone(generation) from None
        if not slot[0].wait(timeout):
            self.waiting.pop(rid, None)
            raise _ServerHung(generation)
        if slot[1].get("server_died"):
            raise _ServerGone(generation)
        return slot[1]


_warned_cgroup = False


def _server_cgroup(cfg: SandboxConfig, name: str) -> dict | None:
    """A cgroup folder for one server (per-episode memory, CPU and process limits), or None: then
    the limits are per process only, said once (sandbox.cgroup=auto), or refused (require)."""
    global _warned_cgroup
    if cfg.cgroup == "off":
        return None
    info, problem = create_server_cgroup(name)
    if info is not None:
        return info
    if cfg.cgroup == "require":
        raise SandboxStartError(f"sandbox.cgroup is 'require' but {problem}. Run as root with a writable "
                                "/sys/fs/cgroup, or set sandbox.cgroup=auto to fall back to per-process limits.")
    if not _warned_cgroup:
        _warned_cgroup = True
        warnings.warn(f"sandbox: per-episode cgroups are unavailable ({problem}); memory_mb, CPU and process "
                      "limits apply to each process (rlimits), not to each episode as a whole", RuntimeWarning,
                      stacklevel=4)
    return None


_UID_BLOCK_DIR = "/run/thyme-sandbox-uids" if os.path.isdir("/run") else "/tmp/thyme-sandbox-uids"


def _claim_uid_block(cfg: SandboxConfig) -> tuple[int, int]:
    """The first free block of uids (cfg.uids_per_server each, from cfg.uid_base), held by an flock."""
    os.makedirs(_UID_BLOCK_DIR, mode=0o700, exist_ok=True)
    n_blocks = min(1024, (2**31 - 2 - cfg.uid_base) // cfg.uids_per_server)
    for block in range(n_blocks):
        fd = os.open(os.path.join(_UID_BLOCK_DIR, f"{cfg.uid_base}-{cfg.uids_per_server}-{block}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return block, fd
        except BlockingIOError:
            os.close(fd)
    raise SandboxStartError(f"all {n_blocks} uid blocks from sandbox.uid_base={cfg.uid_base} are in use by other "
                            "sandbox servers on this host; close some or lower sandbox.uids_per_server")


class _ServerGone(SandboxError):
    def __init__(self, generation: int):
        super().__init__("the sandbox server died")
        self.generation = generation


class _ServerHung(_ServerGone):
    pass


class Sandbox:
    """Warm sandbox servers plus the bookkeeping of episodes, work dirs and staged inputs."""

    def __init__(self, config: SandboxConfig | dict | None = None, **overrides):
        if isinstance(config, SandboxConfig):
            self.config = load_sandbox_config({**asdict(config), **overrides})
        else:
            self.config = load_sandbox_config({**(config or {}), **overrides})
        self.isolation = self._choose_isolation()
        self.uid_mode = os.geteuid() == 0
        self._own_root = self.config.work_root is None
        self.work_root = tempfile.mkdtemp(prefix="thyme-sandbox-") if self._own_root else os.path.abspath(self.config.work_root)
        self.inputs_dir = os.path.join(self.work_root, "inputs")
        self.episodes_dir = os.path.join(self.work_root, "episodes")
        for folder in (self.work_root, self.inputs_dir, self.episodes_dir):
            os.makedirs(folder, exist_ok=True)
            os.chmod(folder, 0o711)  # episode uids may pass through, never list
        self.servers = [_ServerHandle(self, i) for i in range(self.config.n_servers)]
        self._lock = threading.Lock()
        self._stage_lock = threading.Lock()
        self._staged_refs: dict[str, int] = {}   # staged input copy -> live episodes using it
        self._closed = False
        self._started = False
        if not self.uid_mode:
            apart = ("Landlock still keeps their files and signals apart" if self.config.landlock and isolation.landlock_abi() >= 6
                     else "and without Landlock ABI >= 6 one episode's code could reach another's files or processes")
            warnings.warn("the sandbox is not running as root: all episodes share one uid, so RLIMIT_NPROC is not "
                          f"applied ({apart}); run as root for per-episode uids", RuntimeWarning, stacklevel=2)

    def _choose_isolation(self) -> str:
        global _warned_fallback
        mode = self.config.isolation
        if mode == "process":
            return "process"
        problem = isolation.bwrap_problem()
        if problem is None:
            return "bwrap"
        if mode == "bwrap":
            raise SandboxStartError(f"sandbox.isolation is 'bwrap' but {problem}. Fix that, or set "
                                    "sandbox.isolation=auto to fall back to process-level isolation.")
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"sandbox: {problem}; falling back to process-level isolation only "
                          "(own uid, resource limits, syscall filter; no mount or network namespace)",
                          RuntimeWarning, stacklevel=3)
        return "process"

    # -------------------------------------------------------------- life cycle
    def start(self) -> "Sandbox":
        with self._lock:
            if self._closed:
                raise SandboxError("this Sandbox was closed; create a new one")
            if not self._started:
                try:
                    for server in self.servers:
                        server.start()
                except SandboxStartError as exc:
                    if not (self.config.isolation == "auto" and self.isolation == "bwrap"):
                        raise
                    # bwrap runs here but the server could not start inside it: auto falls back, loudly.
                    warnings.warn(f"sandbox: the server failed to start inside bubblewrap ({exc}); falling back "
                                  "to process-level isolation only", RuntimeWarning, stacklevel=2)
                    for server in self.servers:
                        server.kill()
                    self.isolation = "process"
                    for server in self.servers:
                        server.start()
                self._started = True
        return self

    def close(self) -> None:
        with self._lock:
            for server in self.servers:
                server.close()
            self._started = False
            self._closed = True
            if self._own_root:
                shutil.rmtree(self.work_root, ignore_errors=True)

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if self._started:
                self.close()
        except Exception:  # noqa: BLE001
            pass

    # -------------------------------------------------------------- episodes
    def episode(self, images: list[str] | tuple[str, ...] | str | None = None) -> "Episode":
        """Start an episode on the least busy server. Raises InputImageError for a missing, corrupt or
        oversized input image."""
        self.start()
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        originals = [os.fspath(p) for p in (images or [])]
        staged: list[str] = []
        try:
            for path in originals:
                staged.append(self._stage(path))
        except BaseException:
            self._release(staged)
            raise
        with self._lock:
            server = min(self.servers, key=lambda s: s.live_episodes)
            server.live_episodes += 1
        episode = Episode(self, server, staged)
        # cv2.imread / Image.open of the path the caller gave (what the prompt shows) read the staged copy.
        episode.aliases = {**{o: st for o, st in zip(originals, staged)},
                           **{os.path.abspath(o): st for o, st in zip(originals, staged)}}
        try:
            episode._open()
        except BaseException:
            server.live_episodes -= 1
            self._release(staged)
            raise
        return episode

    def _stage(self, path: str) -> str:
        """Copy an input image into the read-only inputs folder, once per distinct file: the G rollouts
        of one prompt get the same staged path, so the server decodes it once."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InputImageError(f"input image {path!r} does not exist") from None
        except OSError as exc:
            raise InputImageError(f"input image {path!r} cannot be read: {exc.strerror}") from None
        if not os.path.isfile(path):
            raise InputImageError(f"input image {path!r} is not a regular file")
        if st.st_size > self.config.max_image_bytes:
            raise InputImageError(f"input image {path!r} is {st.st_size} bytes; the limit is "
                                  f"{self.config.max_image_bytes} (sandbox.max_image_bytes)")
        real = os.path.realpath(path)
        key = hashlib.sha1(f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()[:20]
        folder = os.path.join(self.inputs_dir, key)
        target = os.path.join(folder, os.path.basename(real) or "image")
        with self._stage_lock:
            if not os.path.exists(target):
                os.makedirs(folder, mode=0o755, exist_ok=True)
                os.chmod(folder, 0o755)
                tmp = f"{target}.{uuid.uuid4().hex}.part"
                try:
                    shutil.copyfile(real, tmp)
                except OSError as exc:
                    raise InputImageError(f"input image {path!r} cannot be read: {exc}") from None
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            self._staged_refs[target] = self._staged_refs.get(target, 0) + 1
        return target

    def _release(self, staged: list[str]) -> None:
        """An episode is done with its staged inputs: remove the copies no live episode uses (the
        servers keep their decodes in the LRU cache, keyed by the same path if the image comes back)."""
        with self._stage_lock:
            for target in staged:
                count = self._staged_refs.get(target, 0) - 1
                if count > 0:
                    self._staged_refs[target] = count
                    continue
                self._staged_refs.pop(target, None)
                for remove, item in ((os.unlink, target), (os.rmdir, os.path.dirname(target))):
                    try:
                        remove(item)
                    except OSError:
                        pass

    def stats(self) -> list[dict]:
        return [s.request({"op": "stats"}, timeout=30) for s in self.servers]

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Wait until ended episodes are fully swept (their uid's processes killed, folders removed)."""
        deadline = time.monotonic() + timeout_s
        while any(s["pending_cleanup"] for s in self.stats()):
            if time.monotonic() > deadline:
                raise SandboxError(f"sandbox servers still cleaning up after {timeout_s} s")
            time.sleep(0.01)


class Episode:
    """One trajectory: its own process, folder and variables, kept across rounds until it ends."""

    def __init__(self, sandbox: Sandbox, server: _ServerHandle, images: list[str]):
        self.sandbox, self.server, self.images = sandbox, server, images
        self.id = uuid.uuid4().hex[:16]
        ep_dir = os.path.join(sandbox.episodes_dir, self.id)
        self.work_dir = os.path.join(ep_dir, "work")     # the code's cwd and output folder
        self.out_dir = os.path.join(ep_dir, "outputs")   # copies of accepted images, out of the code's reach
        self.image_size: tuple[int, int] | None = None
        self.uid: int | None = None
        self.aliases: dict[str, str] = {}
        self._generation = 0
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> None:
        reply = self.server.request({"op": "start", "ep": self.id, "images": self.images, "work_dir": self.work_dir,
                                     "out_dir": self.out_dir, "aliases": self.aliases},
                                    timeout=self.sandbox.config.server_start_timeout_s)
        if reply.get("error"):
            cls = InputImageError if reply.get("error_type") == "input" else SandboxError
            raise cls(reply["error"])
        self.image_size = tuple(reply["size"]) if reply.get("size") else None
        self.uid = reply.get("uid")  # the episode's own uid (None when not running as root)
        self._generation = self.server.generation

    # -------------------------------------------------------------- running code
    def run(self, code: str, timeout_s: float | None = None) -> RunResult:
        started = time.perf_counter()
        with self._lock:
            if self._closed:
                raise EpisodeClosedError(f"episode {self.id} has ended; start a new one with sandbox.episode()")
            result = self._run(code, timeout_s)
        result.duration_s = time.perf_counter() - started
        return result

    def _run(self, code: str, timeout_s: float | None) -> RunResult:
        cfg = self.sandbox.config
        if not isinstance(code, str):
            return RunResult(ok=False, error=f"code must be text, got {type(code).__name__}")
        size = len(code.encode("utf-8", errors="replace"))
        if size > cfg.max_code_bytes:
            return RunResult(ok=False, error=f"code is {size} bytes; the limit is {cfg.max_code_bytes} bytes "
                                             "(sandbox.max_code_bytes): write shorter code")
        if not code.strip():
            return RunResult(ok=False, error="empty code: write Python inside <code>```python ... ```</code>")
        refusal = _scan(code, output_dir=self.work_dir)
        if refusal:
            return RunResult(ok=False, error=refusal)
        # os.path.lexists: whether the episode wrote a file there (an image_path literal under
        # /mnt/data/temp_processed_images/ naming no such file is the input); symlinks not followed.
        repaired = _repair(code, image_size=self.image_size, image_path=self.images[0] if self.images else None,
                           output_dir=self.work_dir, image_paths=self.images, output_exists=os.path.lexists)
        fixes = list(repaired.fixes)
        if repaired.error:
            return RunResult(ok=False, error=repaired.error, fixes=fixes)
        if not repaired.code.strip():
            return RunResult(ok=False, error="empty code: write Python inside <code>```python ... ```</code>", fixes=fixes)
        timeout = float(timeout_s or cfg.timeout_s)
        note = ""
        try:
            if self._generation != self.server.generation:
                self._open()  # the server was restarted since the last run: this episode starts again, fresh
                note = "note: the sandbox server was restarted; variables from earlier runs were lost\n"
            reply = self.server.request({"op": "run", "ep": self.id, "code": repaired.code, "timeout": timeout},
                                        timeout=timeout + _SERVER_GRACE_S)
        except _ServerGone as exc:
            # Dead or hung server: replace it; this run fails (its code may be what killed it).
            self.server.restart(exc.generation)
            what = "stopped responding" if isinstance(exc, _ServerHung) else "died"
            return RunResult(ok=False, fixes=fixes, timed_out=isinstance(exc, _ServerHung),
                             error=f"the sandbox server {what} during this run and was restarted; variables "
                                   "from earlier runs are lost. Run the code again.")
        except SandboxError as exc:  # e.g. the input image vanished before the episode could start again
            return RunResult(ok=False, fixes=fixes, error=str(exc))
        if "ok" not in reply:
            return RunResult(ok=False, fixes=fixes, error=str(reply.get("error", "unknown sandbox error")))
        error = reply.get("error")
        if note:
            error = note + (error or "")
        return RunResult(ok=bool(reply["ok"]), stdout=reply.get("stdout", ""), error=error,
                         images=list(reply.get("images", [])), timed_out=bool(reply.get("timed_out")), fixes=fixes)

    # -------------------------------------------------------------- ending
    def close(self, remove_files: bool = True) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._generation == self.server.generation and self.server.alive():
            try:
                self.server.request({"op": "end", "ep": self.id, "remove_files": remove_files},
                                    timeout=self.sandbox.config.server_start_timeout_s)
            except _ServerGone:
                pass
        with self.sandbox._lock:
            self.server.live_episodes = max(0, self.server.live_episodes - 1)
        self.sandbox._release(self.images)

    end = close

    def __enter__(self) -> "Episode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scan(code: str, output_dir: str) -> str | None:
    """The paper's pattern scan: the first, friendliest wall (envs/sandbox/scan.py). It sees the code
    as it will run (out of its <code> tags and fence, dedented), before any repair."""
    from .scan import scan_code

    extracted = extract_code(code)
    return scan_code(textwrap.dedent(extracted if extracted is not None else code), output_dir=output_dir)


def _repair(code: str, **kwargs):
    from .repair import repair_code
    return repair_code(code, **kwargs)
