"""Stopping an episode's processes, all of them, without ever signalling a process that is not its.

The main process is signalled through its pidfd, never by pid number. Its process group next: safe,
because its image zygote keeps it unreaped (its pid, which is the group's id, stays reserved) until
the server has it reaped here. Then every process in its cgroup (each checked through a pidfd) and,
with its own uid, every process of that uid (a helper of that uid does kill(-1)).
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import uuid

from . import isolation


def stop_processes(proc, zygote, cgroup, uid: int | None, unreaped: list) -> int | None:
    """Kill the episode process `proc` and everything of its episode; its wait status, or None when
    it has not exited within 0.1 s (then it goes on `unreaped`, collected later by the loop)."""
    proc.kill()
    isolation.kill_process_group(proc.pid)
    if cgroup is not None:
        cgroup.kill_all(spare=proc.pid)  # the rest of its processes, however detached
    if uid is not None:
        isolation.kill_uid(uid)
    return collect(zygote, proc, 0.1, unreaped)


def collect(zygote, proc, wait_s: float, unreaped: list) -> int | None:
    """The killed process's wait status once it has exited (its pidfd turns readable), reaped by its
    zygote; if it has not exited within wait_s (uninterruptible sleep), it is left on `unreaped`, so
    the server never blocks on it."""
    ready, _, _ = select.select([proc.pidfd], [], [], wait_s)
    if not ready:
        unreaped.append((zygote, proc))
        return None
    status = zygote.reap(proc.pid)
    proc.close()
    return status


def collect_unreaped(unreaped: list) -> None:
    for zygote, proc in list(unreaped):
        if zygote.pidfd < 0:  # its zygote is gone: the orphan came to the server and is reaped there
            proc.close()
            unreaped.remove((zygote, proc))
        elif select.select([proc.pidfd], [], [], 0)[0]:
            unreaped.remove((zygote, proc))
            collect(zygote, proc, 0, unreaped)


def remove_tree(folder: str) -> None:
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


def discard_tree(folder: str, janitors: list) -> None:
    """Remove a folder without waiting for it: renamed at once into a trash folder beside it (so a
    new one can take its place), then deleted by an `rm -rf` in the background (`janitors` holds the
    running ones). Deleting hundreds of MB takes the disk tens of milliseconds that the server's
    loop, and every other episode, would otherwise wait."""
    if not os.path.lexists(folder):
        return
    trash = os.path.join(os.path.dirname(folder.rstrip("/")), ".thyme-trash")
    try:
        os.makedirs(trash, mode=0o700, exist_ok=True)
        target = os.path.join(trash, uuid.uuid4().hex)
        os.rename(folder, target)
        janitors.append(subprocess.Popen(["rm", "-rf", "--one-file-system", "--", target], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True))
    except OSError:
        remove_tree(folder)


def describe_exit(status: int | None) -> str:
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
