"""The episode process: forked from the warm server, locked down, then it runs one episode's code,
round after round, in one globals dict (names from earlier rounds stay visible), until it is killed.

Everything here runs in the forked process only; nothing it does reaches the server except the JSON
replies it writes to its socket.
"""
from __future__ import annotations

import builtins
import functools
import io
import linecache
import os
import re
import sys
import tempfile
import time
import traceback

from . import isolation
from .config import SandboxConfig
from .images import IMAGE_SUFFIXES
from .outputs import hand_over
from .wire import read_message, write_message

_PRINTED_PATH = re.compile(r"[^\s'\"<>|,;:()\[\]{}]+\.(?:png|jpe?g|bmp|webp|tiff?|gif)\b", re.IGNORECASE)
_CODE_FILENAME = "<code>"
_MAX_SCANNED_ENTRIES = 5000   # files looked at per scan of the work dir
_MAX_SCAN_DEPTH = 16
_MAX_CANDIDATES = 64          # possible output images checked per run
_EPISODE_PID = [0]
# Where re-encoded outputs wait for the server (which copies, checks and then removes them).
STAGING_DIR = ".thyme-staging"


class CappedOutput(io.TextIOBase):
    """stdout/stderr of the code: keeps the first `limit` characters, counts the rest, never grows."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        room = self.limit - self.kept
        if room > 0:
            piece = text[:room]
            self.parts.append(piece)
            self.kept += len(piece)
            self.dropped += len(text) - len(piece)
        else:
            self.dropped += len(text)
        return len(text)

    def text(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n...[output truncated: {self.dropped} more characters; the limit is {self.limit}]"
        return out


def _lock_down(sock_fd: int, spec: dict, cfg: SandboxConfig, seccomp_filter) -> None:
    os.setsid()  # own process group: the server kills the whole group on timeout
    # Only the episode's own channel stays open (not the server's pipes or other episodes' sockets).
    os.closerange(3, sock_fd)
    os.closerange(sock_fd + 1, max(65536, os.sysconf("SC_OPEN_MAX")))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # C-level writes to fd 1/2 go nowhere; Python-level output is captured
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    os.chdir(spec["work_dir"])
    ruleset = isolation.prepare_landlock(writable=spec["work_dir"], readable=spec["readable"]) if cfg.landlock else None
    isolation.apply_rlimits(cfg, per_uid=spec["uid"] is not None)
    isolation.drop_privileges(spec["uid"])
    isolation.set_parent_death_signal()  # after the uid change, which clears it
    if ruleset is not None:
        isolation.enforce_landlock(ruleset)
    if seccomp_filter is not None:
        seccomp_filter.load()
    os.environ.clear()
    os.umask(0o077)


def _presets(spec: dict, cache: dict) -> dict:
    """The names every episode starts with (the released Thyme prompt relies on them)."""
    import math

    import cv2
    import numpy as np
    from PIL import Image

    output_dir = spec["work_dir"]
    original_imread, original_imwrite, original_open = cv2.imread, cv2.imwrite, Image.open
    # Stored (no deflate), no row filters, large IDAT chunks: a 1200x1000 crop writes in ~1/4 of the
    # time of OpenCV's default, and the server's check of it is a copy. (Older OpenCV: level 0 only.)
    stored_png_params = [cv2.IMWRITE_PNG_COMPRESSION, 0]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        stored_png_params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    if hasattr(cv2, "IMWRITE_PNG_ZLIBBUFFER_SIZE"):
        stored_png_params += [cv2.IMWRITE_PNG_ZLIBBUFFER_SIZE, 1 << 20]
    # The prompt shows the caller's path of each input; here the input lives at its staged path.
    aliases = {k: v for k, v in (spec.get("aliases") or {}).items() if isinstance(k, str) and isinstance(v, str)}
    use_cache = spec.get("use_cache", True)

    def resolve(filename):
        if isinstance(filename, os.PathLike):
            filename = os.fspath(filename)
        return aliases.get(filename, filename) if isinstance(filename, str) else filename

    def imread(filename, flags=cv2.IMREAD_COLOR, *args, **kwargs):
        filename = resolve(filename)
        # Inputs were decoded once in the server: hand out a copy instead of decoding again.
        if use_cache and not args and not kwargs and flags == cv2.IMREAD_COLOR and isinstance(filename, str):
            item = cache.get(os.path.realpath(filename))
            if item is not None:
                return item.bgr.copy()
        return original_imread(filename, flags, *args, **kwargs)

    def imwrite(filename, img, *args, **kwargs):
        if not args and not kwargs and _stored_png(filename, getattr(img, "nbytes", None)):
            args = (stored_png_params,)
        # cv2.imwrite returns False (no exception) when it cannot write: make that an error the model sees.
        ok = original_imwrite(filename, img, *args, **kwargs)
        if not ok and _make_parent(filename, output_dir):
            ok = original_imwrite(filename, img, *args, **kwargs)
        if not ok:
            raise OSError(f"cv2.imwrite could not write {filename!r}: the folder must exist and be inside the "
                          f"output folder {output_dir!r}, and the image must not exceed the file-size limit")
        return ok

    def open_image(fp, mode="r", *args, **kwargs):
        fp = resolve(fp)
        if use_cache and mode == "r" and not args and not kwargs and isinstance(fp, str):
            item = cache.get(os.path.realpath(fp))
            if item is not None:
                image = item.pil.copy()
                image.format, image.filename = item.pil.format, fp
                return image
        return original_open(fp, mode, *args, **kwargs)

    original_save = Image.Image.save

    def save(self, fp, format=None, **params):
        if (format is None or str(format).upper() == "PNG") and "compress_level" not in params \
                and "optimize" not in params and _stored_png(fp, self.width * self.height * len(self.getbands())):
            params["compress_level"] = 0
        try:
            return original_save(self, fp, format, **params)
        except FileNotFoundError:
            if not _make_parent(fp, output_dir):
                raise
            return original_save(self, fp, format, **params)

    images = spec["images"]
    first = cache.get(os.path.realpath(images[0])) if images else None
    cv2.imread, cv2.imwrite, Image.open, Image.Image.save = imread, imwrite, open_image, save
    tempfile.tempdir = output_dir  # the private /tmp is not writable for the episode; its folder is
    # Files cannot be deleted here (syscall filter): temporary files stay, as named files in the
    # work dir (counted in the disk quota, removed with the episode), instead of failing on close.
    tempfile.TemporaryFile = functools.partial(tempfile.NamedTemporaryFile, delete=False)
    tempfile.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, delete=False)
    g = {"__name__": "__main__", "__builtins__": builtins, "cv2": cv2, "np": np, "numpy": np, "Image": Image,
         "math": math, "os": os, "output_dir": output_dir, "image_paths": list(images),
         "image_path": images[0] if images else None}
    if first is not None:
        g.update(image_width=first.width, image_height=first.height, image_size=(first.width, first.height))
    return g


# Output PNGs up to this raw size are written without compression when the code asks for nothing
# else: they are temporary (read back once, for the model), and a stored PNG is written and checked
# in a fraction of the time (the server inflates every output it accepts). Larger ones compress,
# to stay within max_image_bytes. Pixels are the same either way.
_STORED_PNG_BYTES = 16 * 2**20


def _stored_png(target, raw_bytes) -> bool:
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    return (isinstance(target, str) and target.lower().endswith(".png") and isinstance(raw_bytes, int)
            and raw_bytes <= _STORED_PNG_BYTES)


def _make_parent(target, work_dir: str) -> bool:
    """Create the missing folder of an image the code saves inside the work dir (a relative path in a
    folder that does not exist yet): True when it made one, so the save can be tried again."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str):
        return False
    parent = os.path.dirname(os.path.normpath(os.path.join(work_dir, target)))
    if not parent.startswith(work_dir.rstrip("/") + "/") or os.path.isdir(parent):
        return False
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:
        return False
    return True


def _files_in(folder: str) -> dict[str, tuple]:
    """Image files under `folder` with their identity, to see which ones a run created or changed.
    Iterative and bounded (depth and count): the code may have built a very deep or very wide tree."""
    found: dict[str, tuple] = {}
    stack = [(folder, 0)]
    visited = 0
    while stack and visited < _MAX_SCANNED_ENTRIES:
        current, depth = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            visited += 1
            if depth == 0 and entry.name == STAGING_DIR:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < _MAX_SCAN_DEPTH:
                        stack.append((entry.path, depth + 1))
                elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                    st = entry.stat(follow_symlinks=False)
                    found[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                continue
    return found


def _processed_paths(g: dict) -> list:
    values = []
    for name, value in list(g.items()):
        if "processed_path" in name:
            if isinstance(value, (str, os.PathLike)):
                values.append(os.fspath(value))
            elif isinstance(value, (list, tuple)):
                values.extend(os.fspath(v) for v in value if isinstance(v, (str, os.PathLike)))
    return values


def _format_error(exc: BaseException) -> str:
    """The exception with only the frames of the model's own code (line numbers it can act on)."""
    if isinstance(exc, SyntaxError) and exc.filename == _CODE_FILENAME:
        line = (exc.text or "").rstrip("\n")
        return f"SyntaxError: {exc.msg} (line {exc.lineno})" + (f"\n    {line.strip()}" if line.strip() else "")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == _CODE_FILENAME]
    lines = ["Traceback (most recent call last):"] if frames else []
    for f in frames:
        lines.append(f'  File "{_CODE_FILENAME}", line {f.lineno}, in {f.name}')
        if f.line:
            lines.append(f"    {f.line}")
    detail = str(exc)
    lines.append(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    if isinstance(exc, SystemExit):
        lines[-1] = f"SystemExit({exc.code!r}): the code called exit(); the episode goes on"
    return "\n".join(lines)


def _run_code(code: str, g: dict, cfg: SandboxConfig, work_dir: str) -> dict:
    out = CappedOutput(cfg.max_output_bytes)
    before_files = _files_in(work_dir)
    before_paths = _processed_paths(g)
    error = None
    started = time.perf_counter()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = out
    try:
        isolation.rearm_cpu_limit(cfg)
        compiled = compile(code, _CODE_FILENAME, "exec")
        linecache.cache[_CODE_FILENAME] = (len(code), None, code.splitlines(True), _CODE_FILENAME)
        exec(compiled, g)  # noqa: S102 - this is the sandbox
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... are results too
        try:
            error = _format_error(exc)
        except BaseException:  # noqa: BLE001 - a hostile exception whose __str__ fails
            error = f"{type(exc).__name__} (its message could not be shown)"
    finally:
        if os.getpid() != _EPISODE_PID[0]:
            os._exit(0)  # a process the code forked: it must not answer or read requests for the episode
        sys.stdout, sys.stderr = saved
    duration = time.perf_counter() - started
    stdout = out.text()

    candidates: list[str] = []
    after_paths = _processed_paths(g)
    if after_paths != before_paths:
        candidates += after_paths
    candidates += [m.group(0) for m in _PRINTED_PATH.finditer(stdout)]
    after_files = _files_in(work_dir)
    candidates += sorted((p for p, ident in after_files.items() if before_files.get(p) != ident),
                         key=lambda p: after_files[p][0])
    images, seen = [], set()
    staging = os.path.join(work_dir, STAGING_DIR)
    for path in candidates[:_MAX_CANDIDATES]:
        full = os.path.normpath(os.path.join(work_dir, path))
        if full in seen:
            continue
        seen.add(full)
        # PNG/JPEG the server takes as they are; anything else re-encoded here, under our limits.
        handed = hand_over(full, work_dir, staging, max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
        if handed:
            images.append(handed)
        if len(images) >= cfg.max_images_per_run:
            break
    return {"ok": error is None, "stdout": stdout, "error": error, "images": images, "duration_s": duration}


def episode_main(sock_fd: int, cfg: SandboxConfig, seccomp_filter, cache: dict) -> None:
    """Entry point in the process forked from an image zygote; never returns. Its folder, uid and
    the rest of its spec come first over its own channel (nothing of them was in the zygote)."""
    try:
        spec = read_message(sock_fd, max_bytes=1 << 20)["spec"]
        _lock_down(sock_fd, spec, cfg, seccomp_filter)
        _EPISODE_PID[0] = os.getpid()
        g = _presets(spec, cache)
        write_message(sock_fd, {"ready": True})
    except BaseException as exc:  # noqa: BLE001
        try:
            write_message(sock_fd, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            os._exit(70)
    while True:
        try:
            request = read_message(sock_fd, max_bytes=cfg.max_code_bytes * 8 + 4096)
        except BaseException:  # noqa: BLE001 - the server went away or closed the channel
            os._exit(0)
        try:
            reply = _run_code(str(request.get("code", "")), g, cfg, spec["work_dir"])
        except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError while collecting the result
            reply = {"ok": False, "stdout": "", "error": f"{type(exc).__name__}: {exc}", "images": [], "duration_s": 0.0}
        if os.getpid() != _EPISODE_PID[0]:
            os._exit(0)
        try:
            write_message(sock_fd, reply)
        except BaseException:  # noqa: BLE001
            os._exit(71)
