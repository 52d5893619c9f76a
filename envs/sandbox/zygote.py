"""Clean zygotes: the only processes an episode process is forked from.

A fork copies its parent's whole memory, freed parts included. The server's memory holds every
request it has read (other episodes' code, the caller's paths of their images), so an episode
process forked from it could find them (a traceback's frames reached the read loop's buffer). So:

    server --fork at startup, before it reads any request--> root zygote
    root zygote --fork on a "spawn" message, which carries no data--> image zygote
    image zygote: decodes one input set (the same for every episode it serves), then
        --fork on a "fork" message, which carries no data--> episode process

An episode process therefore holds the warm libraries, its own inputs' decodes and nothing else; its
folder, uid and code reach it over its own channel after the fork. Each new process's pid comes with
a pidfd its parent opened before the pid could be reaped, passed to the server with SCM_RIGHTS: the
server signals processes only through pidfds, so a pid that was reaped and reused is never hit. An
image zygote reaps an episode process only when the server says so (after it is done killing), so
the episode's process-group id stays reserved while the server may still signal the group.

Control channels are SOCK_SEQPACKET (one JSON message per packet, file descriptors attached).
"""
from __future__ import annotations

import collections
import json
import os
import select
import signal
import socket
import time

from . import isolation
from .errors import InputImageError
from .images import decode_input

_MAX_PACKET = 1 << 20


def send(sock: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def episode_from(reply: dict, fds: list[int]) -> tuple[RemoteProcess, socket.socket]:
    """The episode process a fork answer names: its pidfd and its channel."""
    channel, pidfd = fds
    return RemoteProcess(int(reply["pid"]), pidfd), socket.socket(fileno=channel)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) when the other side is gone."""
    data, fds, _, _ = socket.recv_fds(sock, _MAX_PACKET, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds


def _fork_with_channel(kind: int, child_main) -> tuple[int, int, int]:
    """Fork a child that runs child_main(its end of a new channel); returns (pid, pidfd, our end)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            child_main(theirs)
        finally:
            os._exit(70)
    theirs.close()
    pidfd = os.pidfd_open(pid)  # before anyone can reap it: this fd names this process for good
    channel = ours.detach()
    return pid, pidfd, channel


# ------------------------------------------------------------------ in the zygotes
def root_zygote_main(chan: socket.socket, cfg, seccomp_filter) -> None:
    """Serve "spawn" (a new image zygote) until the server goes away; reap image zygotes."""
    isolation.set_parent_death_signal()
    # Only our channel and stdio: not the server's protocol pipes, whose write end held here would
    # hide the server's death from the Sandbox.
    os.closerange(3, chan.fileno())
    os.closerange(chan.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
    send(chan, {"ready": True})
    while True:
        ready, _, _ = select.select([chan], [], [], 1.0)
        while True:  # image zygotes the server killed; it never signals them by pid
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not ready:
            continue
        message, _ = receive(chan)
        if message is None:
            os._exit(0)
        if message.get("op") == "spawn":
            pid, pidfd, channel = _fork_with_channel(
                socket.SOCK_SEQPACKET, lambda c: _image_zygote_main(c, chan, cfg, seccomp_filter))
            send(chan, {"pid": pid}, (channel, pidfd))
            os.close(channel)
            os.close(pidfd)


def _image_zygote_main(chan: socket.socket, parent_chan: socket.socket, cfg, seccomp_filter) -> None:
    parent_chan.close()
    isolation.set_parent_death_signal()
    message, _ = receive(chan)
    if message is None:
        os._exit(0)
    try:
        decoded = {os.path.realpath(p): decode_input(os.path.realpath(p), max_pixels=cfg.max_image_pixels,
                                                     max_bytes=cfg.max_image_bytes)
                   for p in message["images"]}
    except InputImageError as exc:
        send(chan, {"error": str(exc), "error_type": "input"})
        os._exit(0)
    send(chan, {"ok": True, "sizes": [[d.width, d.height] for d in decoded.values()],
                "nbytes": sum(d.nbytes for d in decoded.values())})
    del message
    while True:
        message, _ = receive(chan)
        if message is None:
            os._exit(0)
        op = message.get("op")
        if op == "fork":
            def episode(c: socket.socket) -> None:
                chan.close()
                from .child import episode_main
                episode_main(c.detach(), cfg, seccomp_filter, decoded)
            pid, pidfd, channel = _fork_with_channel(socket.SOCK_STREAM, episode)
            send(chan, {"op": "fork", "pid": pid}, (channel, pidfd))
            os.close(channel)
            os.close(pidfd)
        elif op == "reap":
            send(chan, {"op": "reap", "status": _reap(int(message["pid"]))})


def _reap(pid: int, wait_s: float = 1.0) -> int | None:
    """Reap an episode process the server has seen exit (its pidfd readable): at once, normally."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.0005)


# ------------------------------------------------------------------ the server's side
class RemoteProcess:
    """A process the server did not fork itself, known by a pidfd."""

    def __init__(self, pid: int, pidfd: int):
        self.pid, self.pidfd = pid, pidfd

    def kill(self) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass  # already gone (a zombie or reaped): nothing of it to signal

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ImageZygote(RemoteProcess):
    """The server's handle on one image zygote: its channel and the episodes forked from it."""

    def __init__(self, key: tuple[str, ...], pid: int, pidfd: int, channel: int):
        super().__init__(pid, pidfd)
        self.key = key
        self.sock = socket.socket(fileno=channel)
        # Non-blocking: a reap (call) may take the answer the selector announced, and the loop must
        # then find nothing rather than wait.
        self.sock.setblocking(False)
        self.sizes: list[list[int]] | None = None
        self.nbytes = 0
        self.error: str | None = None
        self.waiting: list = []      # start requests waiting for the decode
        self.users = 0               # live episodes forked from it
        self.last_used = time.monotonic()
        # Forks are asked for and answered in order, without waiting (the server goes on meanwhile):
        # who asked, and answers that arrived while we waited for a reap.
        self.fork_waiters: collections.deque = collections.deque()
        self.early: list[tuple[dict, list[int]]] = []

    def request_fork(self, waiter) -> None:
        send(self.sock, {"op": "fork"})
        self.fork_waiters.append(waiter)

    def call(self, message: dict, timeout: float = 10.0) -> dict:
        """A request answered at once (reap: the process has exited already); fork answers that come
        first are kept in `early` for the server."""
        send(self.sock, message)
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise OSError(f"the image zygote did not answer {message.get('op')!r} in {timeout} s")
            reply, fds = receive(self.sock)
            if reply is None:
                raise OSError("the image zygote is gone")
            if reply.get("op") == message["op"]:
                return reply
            self.early.append((reply, fds))

    def reap(self, pid: int) -> int | None:
        try:
            return self.call({"op": "reap", "pid": pid}).get("status")
        except OSError:
            return None

    def stop(self) -> None:
        self.kill()
        self.sock.close()
        self.close()


class RootZygote(RemoteProcess):
    """Forked by the server before it reads any request; spawns image zygotes."""

    def __init__(self, cfg, seccomp_filter):
        pid, pidfd, channel = _fork_with_channel(
            socket.SOCK_SEQPACKET, lambda c: root_zygote_main(c, cfg, seccomp_filter))
        super().__init__(pid, pidfd)
        self.sock = socket.socket(fileno=channel)
        hello, _ = receive(self.sock)
        if not hello or not hello.get("ready"):
            raise RuntimeError("the root zygote did not start")

    def spawn(self, images: list[str]) -> ImageZygote:
        send(self.sock, {"op": "spawn"})
        reply, fds = receive(self.sock)
        if reply is None:
            raise OSError("the root zygote is gone")
        channel, pidfd = fds
        zygote = ImageZygote(tuple(images), int(reply["pid"]), pidfd, channel)
        send(zygote.sock, {"images": list(images)})  # answered later: the server goes on meanwhile
        return zygote
