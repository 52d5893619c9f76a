"""Stop every process of a local Ray session once the driver that started it is gone, however it died.

    python -m launch.ray_reaper TOKEN DRIVER_PID     (started by launch.ray_session, not by hand)

Ray's own clean-up needs the driver alive: after a SIGKILL (or an OOM kill) its raylet, GCS, workers
and agents stay behind, holding memory and ports. The driver starts this small process first, in its
own session so a Ctrl-C or a kill of the driver's process group does not reach it, and sets
THYME_RAY_SESSION=TOKEN in the environment every Ray process inherits. The reaper waits on a pipe
from the driver (it closes when the driver exits, even on SIGKILL) and then ends exactly the
processes that carry the token, and their children: never any other Ray on the machine.
"""
from __future__ import annotations

import os
import select
import sys
import time

TOKEN_VAR = "THYME_RAY_SESSION"
GRACE_S = 2.0  # after a clean ray.shutdown() Ray's processes are exiting on their own: let them


def session_processes(token: str) -> list:
    """This user's processes whose environment carries TOKEN, with their descendants."""
    import psutil

    me, found = os.getpid(), {}
    for proc in psutil.process_iter(["pid", "uids"]):
        if proc.pid == me or (proc.info["uids"] and proc.info["uids"].real != os.getuid()):
            continue
        try:
            if proc.environ().get(TOKEN_VAR) != token:
                continue
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    found.pop(me, None)
    return list(found.values())


def reap(token: str, timeout_s: float = 5.0) -> int:
    """SIGTERM the session's processes, SIGKILL what is left after `timeout_s`; returns how many there were."""
    import psutil

    procs = session_processes(token)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout_s)
    return len(procs)


def wait_for_driver(driver_pid: int) -> None:
    """Return when the driver's end of our stdin pipe closes or the driver is no longer our parent."""
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return
        if os.getppid() != driver_pid:
            return


def main(argv: list[str]) -> int:
    token, driver_pid = argv[0], int(argv[1])
    wait_for_driver(driver_pid)
    time.sleep(GRACE_S)
    count = reap(token)
    if count:
        print(f"[ray_reaper] the driver (pid {driver_pid}) is gone: stopped {count} leftover process(es) of its "
              "local Ray", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
