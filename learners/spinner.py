"""A message and a spinner for slow, silent start-up work (Ray starting, DeepSpeed compiling its op).

On a terminal the spinner turns on stderr with the elapsed seconds and is cleared when the work ends;
in a log file (a `ray job`'s log, Hydra's train.log) there is no animation, only the logged message
when the work starts and one line with its duration when it ends, so the log says what took the time.
"""
from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from contextlib import contextmanager

log = logging.getLogger("thyme")
_FRAMES = "|/-\\"


@contextmanager
def spinner(message: str, done: str = "done", stream=None):
    """`with spinner("starting Ray"):` logs the message, spins while the block runs, logs how long it took."""
    stream = stream or sys.stderr
    log.info("%s ...", message)
    started = time.perf_counter()
    stop = threading.Event()
    thread = None
    if _is_tty(stream):
        def spin() -> None:
            for frame in itertools.cycle(_FRAMES):
                if stop.wait(0.2):
                    break
                stream.write(f"\r{frame} {message} ({time.perf_counter() - started:.0f} s)\033[K")
                stream.flush()
            stream.write("\r\033[K")
            stream.flush()
        thread = threading.Thread(target=spin, name="spinner", daemon=True)
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=1)
    log.info("%s: %s in %.1f s", message, done, time.perf_counter() - started)


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams (pytest capture, Ray's log redirect)
        return False
