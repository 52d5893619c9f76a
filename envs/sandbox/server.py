"""The warm server: one event loop that serves many episodes, each in its own process.

Runs inside bubblewrap (or as a plain process when isolation is `process`). Talks to its Sandbox over
stdin/stdout with length-prefixed JSON, from one single-threaded event loop. Whatever an episode's
code does, the server survives: the code runs only in episode processes, under their own uid and
limits, and the server enforces the wall-clock limit by killing them. Episode processes are forked
from clean zygotes (zygote.py), never from the server, whose memory holds other episodes' requests;
every process is signalled through a pidfd, never by a pid number that may have been reused.

Run as `python -m envs.sandbox.server` by envs/sandbox/sandbox.py; not a user entry point.
"""
from __future__ import annotations

import collections
import gc
import importlib
import os
import selectors
import signal
import sys
import time
import traceback

from . import isolation
from .cgroups import EpisodeCgroup, set_server_weight
from .config import config_from_dict
from .outputs import OutputIntake
from .quota import over_quota
from .stopping import collect_unreaped, describe_exit, discard_tree, stop_processes
from .syscall_filter import build_seccomp_filter
from .wire import FrameBuffer, WireError, encode, read_message, write_message
from .zygote import ImageZygote, RootZygote, episode_from, receive

_REPLY_LIMIT = 8 << 20
_START_TIMEOUT_S = 30.0


class Episode:
    def __init__(self, ep_id: str, spec: dict, zygote: ImageZygote):
        self.ep_id, self.spec, self.zygote = ep_id, spec, zygote
        self.proc = None            # zygote.RemoteProcess of the episode process, None when it has none
        self.sock = None
        self.buffer: FrameBuffer | None = None
        self.request_id = None      # the run in flight
        self.starting = None        # the start request waiting for the process to report ready
        self.deadline = 0.0
        self.started = 0.0
        self.n_outputs = 0
        self.intake: OutputIntake | None = None   # output images of the finished run, being checked
        self.result: dict | None = None           # that run's result, sent when the intake is done
        self.lost_state = ""        # why the next run starts with fresh variables
        self.note = ""
        self.cgroup: EpisodeCgroup | None = None
        self.respawn = None         # (request id, run request, note) waiting for a fresh process
        self.forking = False        # its zygote has been asked for a process and has not answered yet


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
        self.by_fd: dict[int, object] = {}         # channel fd -> Episode or ImageZygote
        self.cleanup: list[tuple[Episode, bool]] = []   # ended episodes whose uid sweep and folder removal are pending
        self.zygotes: dict[tuple, ImageZygote] = {}    # input set -> its image zygote (the decode cache)
        self.live_zygotes: set[ImageZygote] = set()     # every image zygote not yet stopped
        self.cache_hits = self.cache_misses = 0
        self.next_weights = 0.0
        self.weighted_running = -1
        self.next_idle_check = 0.0
        self.janitors: list = []    # rm -rf of removed folders, running in the background
        self.unreaped: list = []    # (zygote, process) killed but not yet exited
        self.selector = selectors.DefaultSelector()
        self.inbox = FrameBuffer(max_bytes=self.cfg.max_code_bytes * 8 + (1 << 20))
        seccomp = build_seccomp_filter() if self.cfg.seccomp else None
        self.seccomp = seccomp is not None
        self.landlock_abi = isolation.landlock_abi() if self.cfg.landlock else 0
        self.read_roots = isolation.read_roots()  # computed here: the episode uid may not read sysconfig
        self.cgroup_info = init.get("cgroup")      # this server's cgroup folders, or None (rlimits only)
        # Forked now, before the first request is read: the zygote's memory holds no request data.
        self.root = RootZygote(self.cfg, seccomp)

    # ------------------------------------------------------------ replies and the loop
    def reply(self, message: dict) -> None:
        write_message(self.proto_out, message)

    def serve(self) -> None:
        os.set_blocking(self.proto_in, False)
        self.selector.register(self.proto_in, selectors.EVENT_READ, None)
        self.selector.register(self.root.sock.fileno(), selectors.EVENT_READ, None)
        self.reply({"ready": True, "pid": os.getpid(), "uid_mode": self.uid_mode, "seccomp": self.seccomp,
                    "landlock_abi": self.landlock_abi,
                    "cgroup": self.cgroup_info["version"] if self.cgroup_info else None})
        while True:
            pending = [e.deadline for e in self.episodes.values()
                       if e.request_id is not None or e.starting is not None or e.respawn is not None]
            timeout = max(0.0, min(pending) - time.monotonic()) if pending else 1.0
            if pending and self.cgroup_info:
                timeout = min(timeout, 0.05)  # CPU weights of running episodes follow their CPU time
            checking = [e for e in self.episodes.values() if e.intake is not None]
            if self.cleanup or checking:
                timeout = 0.0
            for key, _ in self.selector.select(timeout=min(timeout, 1.0)):
                if key.fd == self.proto_in:
                    if not self.read_requests():
                        return
                elif key.fd == self.root.sock.fileno():
                    print("[sandbox server] the root zygote is gone; stopping", file=sys.stderr)
                    return
                else:
                    owner = self.by_fd.get(key.fd)
                    if isinstance(owner, ImageZygote):
                        self.guarded(self.zygote_message, owner)
                    elif owner is not None:
                        self.guarded(self.read_child, owner)
            for zygote in [z for z in self.live_zygotes if z.early]:
                while zygote.early:
                    self.guarded(self.forked, (zygote, *zygote.early.pop(0)))
            if checking:  # one slice of output checks: the run whose checks have taken least time so far
                self.guarded(self.check_outputs, min(checking, key=lambda e: e.intake.spent))
            self.guarded(self.enforce_deadlines)
            if time.monotonic() >= self.next_weights:
                self.next_weights = time.monotonic() + 0.05
                self.guarded(self.update_weights)
            if self.cleanup:
                self.guarded(self.clean_one)
            self.guarded(self.reap)

    def guarded(self, step, target=None) -> None:
        """Run one step of the loop; a bug or an odd state there fails one request, never the server."""
        try:
            step(target) if target is not None else step()
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            if isinstance(target, Episode) and target.request_id is not None:
                self.kill(target)
                target.lost_state = "note: the previous run hit an internal sandbox error; variables were reset"
                self.answer(target, {"ok": False, "stdout": "", "images": [], "timed_out": False,
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
            self.reply({"id": rid, "episodes": len(self.episodes), "cache_hits": self.cache_hits,
                        "cache_misses": self.cache_misses,
                        "cached_images": sum(len(z.key) for z in self.zygotes.values() if z.sizes is not None),
                        "zygotes": len(self.live_zygotes),
                        "pending_cleanup": len(self.cleanup) + len(self.janitors)})
        elif op == "shutdown":
            for episode in list(self.episodes.values()):
                self.finish(episode, remove_files=True, now=True)
            while self.cleanup:
                self.clean_one()
            for janitor in self.janitors:
                janitor.wait(60)
            for zygote in list(self.live_zygotes):
                self.drop_zygote(zygote)
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
        images = [os.path.realpath(p) for p in request["images"]]
        # With the cache off (decode_cache_mb=0) every episode gets its own image zygote and decode.
        zygote = self.zygotes.get(tuple(images)) if self.cfg.decode_cache_mb > 0 else None
        if zygote is None or zygote.error is not None:
            self.cache_misses += 1
            zygote = self.root.spawn(images)  # decodes in the background; the start waits for it
            self.zygotes[zygote.key] = zygote
            self.live_zygotes.add(zygote)
            self.by_fd[zygote.sock.fileno()] = zygote
            self.selector.register(zygote.sock.fileno(), selectors.EVENT_READ, None)
        else:
            self.cache_hits += 1
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
                "use_cache": self.cfg.decode_cache_mb > 0, "aliases": request.get("aliases") or {},
                "readable": self.read_roots + sorted({os.path.dirname(p) for p in request["images"]})}
        episode = Episode(ep_id, spec, zygote)
        if self.cgroup_info:
            try:
                episode.cgroup = EpisodeCgroup(self.cgroup_info, f"ep-{ep_id}", memory_mb=self.cfg.memory_mb,
                                               cpus=self.cfg.episode_cpus, max_processes=self.cfg.max_processes)
            except OSError as exc:
                if uid is not None:
                    self.free_uids.append(uid)
                self.reply({"id": rid, "error": f"could not make the episode's cgroup: {exc}"})
                return
        zygote.users += 1
        zygote.last_used = time.monotonic()
        self.episodes[ep_id] = episode
        # Answered when the new process reports ready: meanwhile the server serves other episodes.
        episode.starting, episode.started = rid, time.monotonic()
        episode.deadline = episode.started + _START_TIMEOUT_S
        if zygote.sizes is None:
            zygote.waiting.append(episode)   # the decode is still running
        else:
            self.begin(episode)

    def zygote_message(self, zygote: ImageZygote) -> None:
        """An image zygote answered: its decode, or a fork (or it is gone)."""
        try:
            reply, fds = receive(zygote.sock)
        except BlockingIOError:  # a reap meanwhile took what was there (kept in zygote.early)
            return
        if zygote.sizes is None:
            self.zygote_ready(zygote, reply)
        elif reply is None:
            self.zygote_gone(zygote)
        elif reply.get("op") == "fork":
            self.forked((zygote, reply, fds))

    def zygote_gone(self, zygote: ImageZygote) -> None:
        """An image zygote died: the episodes waiting for a process from it fail; later starts of its
        input set get a new one."""
        zygote.error = "the image zygote died"
        if self.zygotes.get(zygote.key) is zygote:
            self.zygotes.pop(zygote.key)
        waiters, zygote.fork_waiters = list(zygote.fork_waiters), collections.deque()
        fd = zygote.sock.fileno()
        if fd in self.by_fd:
            self.selector.unregister(fd)
            del self.by_fd[fd]
        for episode in waiters:
            if episode.forking:
                episode.forking = False
                self.process_failed(episode, "its image zygote died")

    def process_failed(self, episode: Episode, problem: str) -> None:
        """An episode waiting for a new process will not get one."""
        if episode.starting is not None:
            self.start_failed(episode, episode.starting, problem)
        elif episode.respawn is not None:
            self.respawned(episode, {"ready": False, "error": problem})

    def forked(self, answer: tuple) -> None:
        """A fork answer: the new process joins its episode (cgroup, spec, channel), or is killed if
        the episode no longer waits for it."""
        zygote, reply, fds = answer
        episode = zygote.fork_waiters.popleft() if zygote.fork_waiters else None
        proc, sock = episode_from(reply, fds)
        if episode is None or not episode.forking:
            sock.close()
            proc.kill()
            self.unreaped.append((zygote, proc))  # reaped when its pidfd says it has exited
            return
        episode.forking = False
        episode.proc, episode.sock = proc, sock
        try:
            if episode.cgroup is not None:  # before its code runs: what it allocates from now on counts there
                episode.cgroup.add(proc.pid)
            sock.settimeout(5)
            sock.sendall(encode({"spec": episode.spec}))
            sock.setblocking(False)
        except OSError as exc:
            self.kill(episode)
            self.process_failed(episode, f"{type(exc).__name__}: {exc}")
            return
        episode.buffer = FrameBuffer(max_bytes=_REPLY_LIMIT)
        self.by_fd[sock.fileno()] = episode
        self.selector.register(sock.fileno(), selectors.EVENT_READ, None)

    def zygote_ready(self, zygote: ImageZygote, reply: dict | None) -> None:
        """An image zygote answered its decode: start the episodes waiting for it (or fail them)."""
        if reply is None or reply.get("error"):
            zygote.error = (reply or {}).get("error") or "the image zygote died while decoding"
            if self.zygotes.get(zygote.key) is zygote:
                self.zygotes.pop(zygote.key)
        else:
            zygote.sizes, zygote.nbytes = reply["sizes"], int(reply.get("nbytes") or 0)
        waiting, zygote.waiting = zygote.waiting, []
        for episode in waiting:
            if episode.starting is not None:
                self.begin(episode)
        if zygote.error is not None:
            self.drop_zygote(zygote)

    def begin(self, episode: Episode) -> None:
        if episode.zygote.error is not None:
            rid, episode.starting = episode.starting, None
            self.episodes.pop(episode.ep_id, None)
            self.finish(episode, remove_files=True, now=True)
            self.reply({"id": rid, "error": episode.zygote.error, "error_type": "input"})
            return
        try:
            self.fork_child(episode)
        except (OSError, ValueError) as exc:
            self.start_failed(episode, episode.starting, f"{type(exc).__name__}: {exc}")

    def started(self, episode: Episode, hello: dict) -> None:
        rid, episode.starting = episode.starting, None
        if not hello.get("ready"):
            self.start_failed(episode, rid, str(hello.get("error")))
            return
        sizes = episode.zygote.sizes or []
        self.reply({"id": rid, "ok": True, "uid": episode.spec["uid"], "size": sizes[0] if sizes else None,
                    "sizes": sizes})

    def start_failed(self, episode: Episode, rid, problem: str) -> None:
        episode.starting = None
        self.episodes.pop(episode.ep_id, None)
        self.finish(episode, remove_files=True, now=True)
        self.reply({"id": rid, "error": f"could not start the episode process: {problem}"})

    def fork_child(self, episode: Episode) -> None:
        """Ask the episode's image zygote for a new process, without waiting: forked() takes it."""
        try:
            episode.zygote.request_fork(episode)
        except OSError as exc:  # the zygote died: later starts of this input set get a new one
            episode.zygote.error = f"the image zygote failed: {exc}"
            if self.zygotes.get(episode.zygote.key) is episode.zygote:
                self.zygotes.pop(episode.zygote.key)
            raise
        episode.forking = True

    def run(self, rid, request: dict) -> None:
        episode = self.episodes.get(str(request.get("ep")))
        if episode is None:
            self.reply({"id": rid, "error": f"unknown episode {request.get('ep')!r}"})
            return
        if episode.request_id is not None or episode.starting is not None or episode.respawn is not None:
            self.reply({"id": rid, "error": "this episode is busy (starting or running code); wait for it"})
            return
        if episode.proc is None:  # killed by a timeout or crash earlier: a fresh process, same folder;
            try:                  # the run is sent when it reports ready, and the server goes on meanwhile
                self.fork_child(episode)
            except (OSError, ValueError) as exc:
                self.reply({"id": rid, "error": f"could not restart the episode process: {exc}"})
                return
            episode.respawn = (rid, request, episode.lost_state)
            episode.deadline = time.monotonic() + _START_TIMEOUT_S
            return
        self.send_run(episode, rid, request, note="")

    def respawned(self, episode: Episode, hello: dict | None) -> None:
        """The fresh process of an episode reported (hello) or died (None): run the waiting code."""
        (rid, request, note), episode.respawn = episode.respawn, None
        if not hello or not hello.get("ready"):
            self.kill(episode)
            problem = (hello or {}).get("error") or "it did not report ready"
            self.reply({"id": rid, "error": f"could not restart the episode process: {problem}"})
            return
        self.send_run(episode, rid, request, note)

    def send_run(self, episode: Episode, rid, request: dict, note: str) -> None:
        episode.request_id, episode.lost_state = rid, ""
        if episode.cgroup is not None:
            episode.cgroup.run_begins()
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
            if episode.respawn is not None:
                self.respawned(episode, None)
                return
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
        if episode.respawn is not None:
            self.respawned(episode, messages[0])
            return
        if episode.request_id is None or episode.intake is not None:
            # Nothing was asked: a thread the code left running is writing to the channel. Stop it.
            self.child_failed(episode, reason="it wrote to the sandbox's channel while no code was running")
            return
        self.complete(episode, messages[0])

    def complete(self, episode: Episode, raw: dict) -> None:
        """Turn the episode process's reply into a result. Its content is untrusted: coerce the types,
        then take its output images through the intake (checked in slices, answered when done)."""
        cap = self.cfg.max_output_bytes + 512
        stdout = raw.get("stdout") if isinstance(raw.get("stdout"), str) else ""
        error = raw.get("error") if isinstance(raw.get("error"), str) else None
        ok = raw.get("ok") is True and error is None
        if episode.note:
            error = episode.note + ("\n" + error if error else "")
        episode.result = {"ok": ok, "stdout": _clean_text(stdout[:cap]),
                          "error": _clean_text(error[:cap]) if error else None, "images": [], "timed_out": False}
        paths = raw.get("images") if isinstance(raw.get("images"), list) else []
        episode.intake = OutputIntake(paths[: self.cfg.max_images_per_run], episode.spec["work_dir"],
                                      episode.spec["out_dir"], episode.n_outputs,
                                      max_pixels=self.cfg.max_image_pixels, max_bytes=self.cfg.max_image_bytes,
                                      budget_s=self.cfg.output_check_s)
        self.check_outputs(episode)

    def check_outputs(self, episode: Episode) -> None:
        intake = episode.intake
        if intake is None or not intake.step():
            return
        episode.intake, episode.n_outputs = None, intake.index
        result, episode.result = episode.result, None
        result["images"] = intake.accepted
        if intake.refused:
            print(f"[sandbox server] refused output images: {intake.refused}", file=sys.stderr)
        discard_tree(os.path.join(episode.spec["work_dir"], ".thyme-staging"), self.janitors)
        self.answer(episode, result)

    def answer(self, episode: Episode, result: dict) -> None:
        if episode.intake is not None:  # killed while its outputs were being checked
            episode.intake.abandon()
            episode.n_outputs = episode.intake.index  # the images it kept keep their names
            episode.intake, episode.result = None, None
        self.account(episode, result)
        over = over_quota([episode.spec["work_dir"], episode.spec["out_dir"]],
                          max_bytes=self.cfg.max_episode_disk_mb * 2**20, max_entries=self.cfg.max_episode_files,
                          max_depth=self.cfg.max_episode_depth)
        if over:
            # Stop everything of the episode before emptying its folder, or a background writer goes on.
            self.kill(episode)
            work_dir, uid = episode.spec["work_dir"], episode.spec["uid"]
            for folder, owner in ((work_dir, uid), (episode.spec["out_dir"], None)):
                discard_tree(folder, self.janitors)
                os.makedirs(folder, exist_ok=True)
                if owner is not None:
                    os.chown(folder, owner, owner)
                os.chmod(folder, 0o700)
            episode.lost_state = "note: the previous run went over the episode's disk quota; its files and variables were removed"
            result.update(ok=False, images=[], error=(result.get("error") or "") + (
                f"\nDiskQuotaError: the episode's folder holds {over}; its files were deleted and its variables reset. "
                "Write fewer or smaller files.").lstrip("\n"))
        result["duration_s"] = time.monotonic() - episode.started
        result["id"] = episode.request_id
        episode.request_id = None
        self.reply(result)

    def account(self, episode: Episode, result: dict) -> None:
        """At the end of each run, with a cgroup: processes the run started end with it (no detached
        process burns CPU between runs), and the CPU of all the episode's processes together counts
        against episode_cpu_time_s."""
        cg = episode.cgroup
        if cg is None:
            return
        if episode.proc is not None and len(cg.procs()) > 1:
            cg.kill_all(spare=episode.proc.pid)  # its pid is reserved while the zygote has not reaped it
        used = cg.cpu_seconds()
        cg.run_ends(used)
        if used > self.cfg.episode_cpu_time_s:
            self.kill(episode)
            episode.lost_state = "note: the episode used up its CPU time; variables from earlier runs were lost"
            result.update(ok=False, images=[], error=(result.get("error") or "") + (
                f"\nCPUTimeError: the episode's processes together used {used:.0f} s of CPU, over its "
                f"{self.cfg.episode_cpu_time_s} s (sandbox.episode_cpu_time_s)").lstrip("\n"))

    def child_failed(self, episode: Episode, reason: str | None = None) -> None:
        if episode.starting is not None:
            self.start_failed(episode, episode.starting, reason or "it ended before it was ready")
            return
        status = self.kill(episode)
        if reason is None:
            reason = describe_exit(status)
            if episode.cgroup is not None and episode.cgroup.new_oom_kill():
                reason = (f"its processes together went over the episode's memory limit of "
                          f"{self.cfg.memory_mb} MB (sandbox.memory_mb) and the kernel stopped them")
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
                self.start_failed(episode, episode.starting, f"it did not report ready within {_START_TIMEOUT_S:g} s")
            elif episode.respawn is not None and now >= episode.deadline:
                self.respawned(episode, None)
            elif episode.request_id is not None and episode.intake is None and now >= episode.deadline:
                limit = episode.deadline - episode.started
                self.kill(episode)
                episode.lost_state = ("note: the previous run timed out; variables from earlier runs were lost "
                                      "(files in the output folder are kept)")
                self.answer(episode, {"ok": False, "stdout": "", "timed_out": True, "images": [],
                                      "error": f"TimeoutError: the code ran longer than {limit:g} s and was stopped; "
                                               "variables from earlier runs are lost, files in the output folder are kept"})

    def update_weights(self) -> None:
        """Every 50 ms: the CPU weight of each running episode falls with its run's CPU time, and the
        server's folder weighs one process per running episode; every second, idle episodes that
        used CPU since their last run get the least weight."""
        running = [e for e in self.episodes.values() if e.cgroup is not None and e.request_id is not None]
        for episode in running:
            episode.cgroup.set_weight()
        if time.monotonic() >= self.next_idle_check:
            self.next_idle_check = time.monotonic() + 1.0
            for episode in self.episodes.values():
                if episode.cgroup is not None and episode.request_id is None:
                    episode.cgroup.set_weight()
        if len(running) != self.weighted_running:
            self.weighted_running = len(running)
            set_server_weight(self.cgroup_info, len(running))

    def kill(self, episode: Episode, sweep_uid: bool = True) -> int | None:
        """Kill every process of the episode (stopping.py); returns its main process's wait status."""
        episode.forking = False  # a process still to come from the zygote is killed when it does
        if episode.sock is not None:
            fd = episode.sock.fileno()
            if fd in self.by_fd:
                self.selector.unregister(fd)
                del self.by_fd[fd]
            episode.sock.close()
            episode.sock = None
        proc, episode.proc = episode.proc, None
        if proc is None:
            return None
        return stop_processes(proc, episode.zygote, episode.cgroup, episode.spec["uid"] if sweep_uid else None,
                              self.unreaped)

    def finish(self, episode: Episode, remove_files: bool, now: bool = False) -> None:
        """End an episode: its process group dies at once; the sweep of its uid, the removal of its
        folder and the release of its uid happen right after the reply (or now), off the caller's path."""
        if episode.intake is not None:
            episode.intake.abandon()
            episode.intake = None
        self.kill(episode, sweep_uid=False)
        self.cleanup.append((episode, remove_files))
        while now and self.cleanup:
            self.clean_one()

    def clean_one(self) -> None:
        episode, remove_files = self.cleanup.pop(0)
        if episode.spec["uid"] is not None:
            isolation.kill_uid(episode.spec["uid"], remove_ipc=True)
        if episode.cgroup is not None:
            episode.cgroup.remove()
        if remove_files:
            discard_tree(os.path.dirname(episode.spec["work_dir"].rstrip("/")), self.janitors)
        if episode.spec["uid"] is not None:
            self.free_uids.append(episode.spec["uid"])
        episode.zygote.users -= 1
        self.evict_zygotes()

    def evict_zygotes(self) -> None:
        """Keep the decodes of idle image zygotes within decode_cache_mb (least recently used go first)."""
        budget = self.cfg.decode_cache_mb * 2**20
        idle = sorted((z for z in self.live_zygotes if z.users <= 0 and (z.sizes is not None or z.error)),
                      key=lambda z: z.last_used)
        total = sum(z.nbytes for z in self.live_zygotes)
        for zygote in idle:
            if total <= budget and budget > 0:
                break
            total -= zygote.nbytes
            self.drop_zygote(zygote)

    def drop_zygote(self, zygote: ImageZygote) -> None:
        if self.zygotes.get(zygote.key) is zygote:
            self.zygotes.pop(zygote.key)
        self.live_zygotes.discard(zygote)
        fd = zygote.sock.fileno()
        if fd in self.by_fd:
            self.selector.unregister(fd)
            del self.by_fd[fd]
        zygote.stop()

    def reap(self) -> None:
        """Collect exited processes: killed episode processes that took their time, and orphans of
        episode processes, re-parented to us as subreaper."""
        collect_unreaped(self.unreaped)
        self.janitors = [j for j in self.janitors if j.poll() is None]
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def _clean_text(text: str) -> str:
    """Valid UTF-8 only (lone surrogates from the code become '?'), so every consumer can encode it."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def main() -> None:
    # Our stdin/stdout carry the protocol; anything else printing to fd 1 would corrupt it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Writing to an episode process that has just died must be an error we handle (EPIPE), not a
    # signal that ends the server; when the Sandbox goes away we see our stdin close instead.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
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
    isolation.drop_server_capabilities()  # before the zygotes fork: they and episodes inherit the rest
    gc.freeze()  # keep the warm heap out of the collector so forked zygotes and episodes share its pages
    Server(proto_in, proto_out, init).serve()


if __name__ == "__main__":
    main()
