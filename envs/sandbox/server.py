"""The warm server: cv2, numpy and PIL imported once; one forked process per episode.

Runs inside bubblewrap (or as a plain process when isolation is `process`). Talks to its Sandbox over
stdin/stdout with length-prefixed JSON and serves many episodes at once from one single-threaded
event loop (forking from a threaded process is unsafe). Whatever an episode's code does, the server
survives: the code runs only in episode processes, under their own uid and limits, and the server
enforces the wall-clock limit by killing them.

Run as `python -m envs.sandbox.server` by envs/sandbox/sandbox.py; not a user entry point.
"""
from __future__ import annotations

import collections
import gc
import importlib
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback

from . import isolation
from .config import config_from_dict
from .errors import InputImageError
from .images import DecodeCache, snapshot_output
from .wire import FrameBuffer, WireError, encode, read_message, write_message

_REPLY_LIMIT = 8 << 20


class Episode:
    def __init__(self, ep_id: str, spec: dict, decoded: dict):
        self.ep_id, self.spec, self.decoded = ep_id, spec, decoded
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.buffer: FrameBuffer | None = None
        self.request_id = None      # the run in flight
        self.starting = None        # the start request waiting for the process to report ready
        self.deadline = 0.0
        self.started = 0.0
        self.n_outputs = 0
        self.lost_state = ""        # why the next run starts with fresh variables
        self.note = ""


class Server:
    def __init__(self, proto_in: int, proto_out: int, init: dict):
        self.cfg = config_from_dict(init["config"])
        self.proto_in, self.proto_out = proto_in, proto_out
        self.uid_mode = bool(init["uid_mode"])
        index = int(init["index"])
        first = self.cfg.uid_base + index * self.cfg.uids_per_server
        # First in, first out: a freed uid goes to the back of the queue, so the next episode never
        # gets the uid the last one just left (whatever that one left behind is gone long before).
        self.free_uids = collections.deque(range(first, first + self.cfg.uids_per_server))
        self.episodes: dict[str, Episode] = {}
        self.by_fd: dict[int, Episode] = {}
        self.cleanup: list[tuple[Episode, bool]] = []   # ended episodes whose uid sweep and folder removal are pending
        self.exit_status: dict[int, int] = {}
        self.cache = DecodeCache(self.cfg.decode_cache_mb * 1024 * 1024)
        self.selector = selectors.DefaultSelector()
        self.inbox = FrameBuffer(max_bytes=self.cfg.max_code_bytes * 8 + (1 << 20))
        self.seccomp = isolation.build_seccomp_filter() if self.cfg.seccomp else None
        self.landlock_abi = isolation.landlock_abi() if self.cfg.landlock else 0
        self.read_roots = isolation.read_roots()  # computed here: the episode uid may not read sysconfig

    # ------------------------------------------------------------ replies and the loop
    def reply(self, message: dict) -> None:
        write_message(self.proto_out, message)

    def serve(self) -> None:
        os.set_blocking(self.proto_in, False)
        self.selector.register(self.proto_in, selectors.EVENT_READ, None)
        self.reply({"ready": True, "pid": os.getpid(), "uid_mode": self.uid_mode, "seccomp": self.seccomp is not None,
                    "landlock_abi": self.landlock_abi})
        while True:
            pending = [e.deadline for e in self.episodes.values() if e.request_id is not None or e.starting is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else 1.0
            if self.cleanup:
                timeout = 0.0
            for key, _ in self.selector.select(timeout=min(timeout, 1.0)):
                if key.fd == self.proto_in:
                    if not self.read_requests():
                        return
                else:
                    episode = self.by_fd.get(key.fd)
                    if episode is not None:
                        self.guarded(self.read_child, episode)
            self.guarded(self.enforce_deadlines)
            if self.cleanup:
                self.guarded(self.clean_one)
            self.guarded(self.reap)

    def guarded(self, step, episode: Episode | None = None) -> None:
        """Run one step of the loop; a bug or an odd state there fails one request, never the server."""
        try:
            step(episode) if episode is not None else step()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            if episode is not None and episode.request_id is not None:
                self.kill(episode)
                episode.lost_state = "note: the previous run hit an internal sandbox error; variables were reset"
                self.answer(episode, {"ok": False, "stdout": "", "images": [], "timed_out": False,
                                      "error": f"internal sandbox error: {type(exc).__name__}: {exc}"})

    def read_requests(self) -> bool:
        try:
            chunk = os.read(self.proto_in, 1 << 20)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # the Sandbox closed our stdin: shut down
        for request in self.inbox.feed(chunk):
            try:
                if not self.handle(request):
                    return False
            except Exception as exc:  # noqa: BLE001 - a bug here must not take the server down
                traceback.print_exc(file=sys.stderr)
                self.reply({"id": request.get("id"), "error": f"internal sandbox error: {type(exc).__name__}: {exc}"})
        return True

    def handle(self, request: dict) -> bool:
        op, rid = request.get("op"), request.get("id")
        if op == "start":
            self.start_episode(rid, request)
        elif op == "run":
            self.run(rid, request)
        elif op == "end":
            episode = self.episodes.pop(str(request.get("ep")), None)
            if episode is not None:
                self.finish(episode, remove_files=bool(request.get("remove_files", True)))
            self.reply({"id": rid, "ok": True})
        elif op == "stats":
            self.reply({"id": rid, "episodes": len(self.episodes), "cache_hits": self.cache.hits,
                        "cache_misses": self.cache.misses, "cached_images": len(self.cache.items),
                        "pending_cleanup": len(self.cleanup)})
        elif op == "shutdown":
            for episode in list(self.episodes.values()):
                self.finish(episode, remove_files=True, now=True)
            while self.cleanup:
                self.clean_one()
            self.reply({"id": rid, "ok": True})
            return False
        else:
            self.reply({"id": rid, "error": f"unknown operation {op!r}"})
        return True

    # ------------------------------------------------------------ episodes
    def start_episode(self, rid, request: dict) -> None:
        ep_id = str(request["ep"])
        if len(self.episodes) >= self.cfg.max_live_episodes or (self.uid_mode and not self.free_uids):
            self.reply({"id": rid, "error": f"too many live episodes ({len(self.episodes)}); end some first "
                                            "or raise sandbox.max_live_episodes"})
            return
        try:
            decoded = {os.path.realpath(p): self.cache.get(os.path.realpath(p), max_pixels=self.cfg.max_image_pixels,
                                                           max_bytes=self.cfg.max_image_bytes)
                       for p in request["images"]}
        except InputImageError as exc:
            self.reply({"id": rid, "error": str(exc), "error_type": "input"})
            return
        uid = self.free_uids.popleft() if self.uid_mode else None
        work_dir, out_dir = request["work_dir"], request["out_dir"]
        ep_dir = os.path.dirname(work_dir.rstrip("/"))
        os.makedirs(ep_dir, exist_ok=True)
        os.chmod(ep_dir, 0o711)  # the episode's uid passes through to its work dir; others see nothing
        for folder, owner, mode in ((work_dir, uid, 0o700), (out_dir, None, 0o700)):
            os.makedirs(folder, exist_ok=True)
            if owner is not None:
                os.chown(folder, owner, owner)
            os.chmod(folder, mode)
        spec = {"work_dir": work_dir, "out_dir": out_dir, "images": list(request["images"]), "uid": uid,
                "use_cache": self.cache.max_bytes > 0, "aliases": request.get("aliases") or {},
                "readable": self.read_roots + sorted({os.path.dirname(p) for p in request["images"]})}
        episode = Episode(ep_id, spec, decoded)
        self.episodes[ep_id] = episode
        # Answered when the new process reports ready: meanwhile the server serves other episodes.
        self.fork_child(episode)
        episode.starting, episode.started = rid, time.monotonic()
        episode.deadline = episode.started + 30

    def started(self, episode: Episode, hello: dict) -> None:
        rid, episode.starting = episode.starting, None
        if not hello.get("ready"):
            self.start_failed(episode, rid, str(hello.get("error")))
            return
        first = next(iter(episode.decoded.values()), None)
        self.reply({"id": rid, "ok": True, "uid": episode.spec["uid"],
                    "size": [first.width, first.height] if first else None,
                    "sizes": [[d.width, d.height] for d in episode.decoded.values()]})

    def start_failed(self, episode: Episode, rid, problem: str) -> None:
        episode.starting = None
        self.episodes.pop(episode.ep_id, None)
        self.finish(episode, remove_files=True, now=True)
        self.reply({"id": rid, "error": f"could not start the episode process: {problem}"})

    def fork_child(self, episode: Episode) -> None:
        parent_sock, child_sock = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # ---- the episode process
            try:
                parent_sock.close()
                self._forget_other_episodes(episode)
                from .child import episode_main
                episode_main(child_sock.fileno(), episode.spec, self.cfg, self.seccomp, episode.decoded)
            finally:
                os._exit(70)
        child_sock.close()
        episode.pid, episode.sock = pid, parent_sock
        parent_sock.setblocking(False)
        episode.buffer = FrameBuffer(max_bytes=_REPLY_LIMIT)
        self.by_fd[parent_sock.fileno()] = episode
        self.selector.register(parent_sock.fileno(), selectors.EVENT_READ, None)

    def spawn(self, episode: Episode) -> str | None:
        """A fresh process for an episode that lost its own (timeout, crash), waited for here."""
        self.fork_child(episode)
        deadline = time.monotonic() + 30
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WireError("no answer in 30 s")
                ready, _, _ = select.select([episode.sock], [], [], remaining)
                if ready:
                    chunk = episode.sock.recv(1 << 16)
                    if not chunk:
                        raise WireError("channel closed")
                    messages = episode.buffer.feed(chunk)
                    if messages:
                        hello = messages[0]
                        break
        except (WireError, OSError) as exc:
            self.kill(episode)
            return f"the episode process did not report ready ({exc})"
        if not hello.get("ready"):
            self.kill(episode)
            return str(hello.get("error"))
        return None

    def _forget_other_episodes(self, episode: Episode) -> None:
        """In a fresh episode process: drop the server's references to other episodes' data."""
        self.episodes.clear()
        self.by_fd.clear()
        self.cleanup.clear()
        self.cache.items.clear()
        self.inbox.data.clear()

    def run(self, rid, request: dict) -> None:
        episode = self.episodes.get(str(request.get("ep")))
        if episode is None:
            self.reply({"id": rid, "error": f"unknown episode {request.get('ep')!r}"})
            return
        if episode.request_id is not None or episode.starting is not None:
            self.reply({"id": rid, "error": "this episode is busy (starting or running code); wait for it"})
            return
        note = ""
        if episode.pid is None:  # killed by a timeout or crash earlier: a fresh process, same folder
            note = episode.lost_state
            problem = self.spawn(episode)
            if problem:
                self.reply({"id": rid, "error": f"could not restart the episode process: {problem}"})
                return
        episode.request_id, episode.lost_state = rid, ""
        episode.started = time.monotonic()
        episode.deadline = episode.started + float(request.get("timeout") or self.cfg.timeout_s)
        episode.note = note
        try:
            episode.sock.setblocking(True)
            episode.sock.settimeout(5)
            episode.sock.sendall(encode({"code": request.get("code", "")}))
            episode.sock.setblocking(False)
        except OSError:
            self.child_failed(episode)

    def read_child(self, episode: Episode) -> None:
        try:
            chunk = episode.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.child_failed(episode)
            return
        try:
            messages = episode.buffer.feed(chunk)
        except WireError:
            self.child_failed(episode, reason="sent a malformed or oversized reply")
            return
        if not messages:
            return
        if episode.starting is not None:
            self.started(episode, messages[0])
            return
        if episode.request_id is None:
            # Nothing was asked: a thread the code left running is writing to the channel. Stop it.
            self.child_failed(episode, reason="it wrote to the sandbox's channel while no code was running")
            return
        self.complete(episode, messages[0])

    def complete(self, episode: Episode, raw: dict) -> None:
        """Turn the episode process's reply into a result. Its content is untrusted: coerce the types
        and accept only image files that pass the server's own checks (copied out of reach)."""
        cap = self.cfg.max_output_bytes + 512
        stdout = raw.get("stdout") if isinstance(raw.get("stdout"), str) else ""
        error = raw.get("error") if isinstance(raw.get("error"), str) else None
        ok = raw.get("ok") is True and error is None
        images = []
        paths = raw.get("images") if isinstance(raw.get("images"), list) else []
        for path in paths[: self.cfg.max_images_per_run]:
            if not isinstance(path, str):
                continue
            episode.n_outputs += 1
            name = f"{episode.n_outputs:03d}_{os.path.basename(path)[:80]}"
            kept = snapshot_output(path, episode.spec["work_dir"], os.path.join(episode.spec["out_dir"], name),
                                   max_pixels=self.cfg.max_image_pixels, max_bytes=self.cfg.max_image_bytes)
            if kept:
                images.append(kept)
        if episode.note:
            error = episode.note + ("\n" + error if error else "")
        self.answer(episode, {"ok": ok, "stdout": _clean_text(stdout[:cap]),
                              "error": _clean_text(error[:cap]) if error else None, "images": images, "timed_out": False})

    def answer(self, episode: Episode, result: dict) -> None:
        over = self.over_quota(episode)
        if over:
            # Stop everything of the episode before emptying its folder, or a background writer goes on.
            self.kill(episode)
            work_dir, uid = episode.spec["work_dir"], episode.spec["uid"]
            _remove_tree(work_dir)
            os.makedirs(work_dir, exist_ok=True)
            if uid is not None:
                os.chown(work_dir, uid, uid)
            os.chmod(work_dir, 0o700)
            episode.lost_state = "note: the previous run went over the episode's disk quota; its files and variables were removed"
            result.update(ok=False, images=[], error=(result.get("error") or "") + (
                f"\nDiskQuotaError: the episode's folder holds {over}; its files were deleted and its variables reset. "
                "Write fewer or smaller files.").lstrip("\n"))
        result["duration_s"] = time.monotonic() - episode.started
        result["id"] = episode.request_id
        episode.request_id = None
        self.reply(result)

    def over_quota(self, episode: Episode) -> str | None:
        """What exceeds the episode's disk quota (bytes or number of files), or None."""
        limit_bytes = self.cfg.max_episode_disk_mb * 1024 * 1024
        used = entries = 0
        stack = [episode.spec["work_dir"]]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        entries += 1
                        if entries > self.cfg.max_episode_files:
                            return f"more than {self.cfg.max_episode_files} files (sandbox.max_episode_files)"
                        st = entry.stat(follow_symlinks=False)
                        used += st.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
            except OSError:
                continue
        if used > limit_bytes:
            return f"{used / 2**20:.0f} MB, over the {self.cfg.max_episode_disk_mb} MB limit (sandbox.max_episode_disk_mb)"
        return None

    def child_failed(self, episode: Episode, reason: str | None = None) -> None:
        if episode.starting is not None:
            self.start_failed(episode, episode.starting, reason or "it ended before it was ready")
            return
        pid = episode.pid
        self.kill(episode)
        status = self.exit_status.pop(pid, None) if pid else None
        if reason is None:
            reason = _describe_exit(status)
        episode.lost_state = ("note: the previous run ended the episode's process; variables from earlier "
                              "runs were lost (files in the output folder are kept)")
        if episode.request_id is not None:
            self.answer(episode, {"ok": False, "stdout": "", "timed_out": False, "images": [],
                                  "error": f"the code ended its own process ({reason}); variables from earlier "
                                           "runs are lost, files in the output folder are kept"})

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for episode in list(self.episodes.values()):
            if episode.starting is not None and now >= episode.deadline:
                self.start_failed(episode, episode.starting, "it did not report ready within 30 s")
            elif episode.request_id is not None and now >= episode.deadline:
                limit = episode.deadline - episode.started
                self.kill(episode)
                episode.lost_state = ("note: the previous run timed out; variables from earlier runs were lost "
                                      "(files in the output folder are kept)")
                self.answer(episode, {"ok": False, "stdout": "", "timed_out": True, "images": [],
                                      "error": f"TimeoutError: the code ran longer than {limit:g} s and was stopped; "
                                               "variables from earlier runs are lost, files in the output folder are kept"})

    def kill(self, episode: Episode, sweep_uid: bool = True) -> None:
        """Kill every process of the episode (its group, and when it has its own uid, all of that uid)."""
        if episode.sock is not None:
            fd = episode.sock.fileno()
            if fd in self.by_fd:
                self.selector.unregister(fd)
                del self.by_fd[fd]
            episode.sock.close()
            episode.sock = None
        if episode.pid is not None:
            isolation.kill_process_group(episode.pid)
            try:
                os.kill(episode.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if sweep_uid and episode.spec["uid"] is not None:
                isolation.kill_uid(episode.spec["uid"])
            try:
                _, status = os.waitpid(episode.pid, 0)
                self.exit_status[episode.pid] = status
            except ChildProcessError:
                pass
            episode.pid = None

    def finish(self, episode: Episode, remove_files: bool, now: bool = False) -> None:
        """End an episode: its process group dies at once; the sweep of its uid, the removal of its
        folder and the release of its uid happen right after the reply (or now), off the caller's path."""
        self.kill(episode, sweep_uid=False)
        self.cleanup.append((episode, remove_files))
        while now and self.cleanup:
            self.clean_one()

    def clean_one(self) -> None:
        episode, remove_files = self.cleanup.pop(0)
        if episode.spec["uid"] is not None:
            isolation.kill_uid(episode.spec["uid"])
        if remove_files:
            _remove_tree(os.path.dirname(episode.spec["work_dir"].rstrip("/")))
        if episode.spec["uid"] is not None:
            self.free_uids.append(episode.spec["uid"])

    def reap(self) -> None:
        """Collect exited processes (episode processes and orphans re-parented to us as subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exit_status[pid] = status
            if len(self.exit_status) > 4096:
                self.exit_status.clear()


def _clean_text(text: str) -> str:
    """Valid UTF-8 only (lone surrogates from the code become '?'), so every consumer can encode it."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _remove_tree(folder: str) -> None:
    """Remove an episode's folder, however deep or odd the code made it (shutil.rmtree recurses in
    Python and gives up on very deep trees; rm -rf does not)."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except (OSError, RecursionError):
        try:
            subprocess.run(["rm", "-rf", "--one-file-system", "--", folder], check=False, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"[sandbox server] could not remove {folder}: {exc}", file=sys.stderr)


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "it closed its channel"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


def main() -> None:
    # Our stdin/stdout carry the protocol; anything else printing to fd 1 would corrupt it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    init = read_message(proto_in)
    cfg = config_from_dict(init["config"])
    for name in cfg.preload_modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"[sandbox server] could not preload {name}: {exc}", file=sys.stderr)
    import cv2
    cv2.setNumThreads(1)  # OpenCV's thread pool would trip the per-episode process limit
    isolation.become_subreaper()
    server = Server(proto_in, proto_out, init)
    gc.freeze()  # keep the warm heap out of the collector so forked episodes share its pages
    server.serve()


if __name__ == "__main__":
    main()
