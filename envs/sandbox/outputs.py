"""Output images across the episode/server border.

The episode process hands over only PNG and baseline-JPEG files: an image the code saved in another
format (or a PNG/JPEG with chunks or markers the server does not take) is decoded and re-encoded as
PNG there, inside the episode, under its time, memory and CPU limits. The server then accepts a file
only after checking every byte of it with the checks below: a strict structure (a few chunk or marker
types, a cap on their number, checksums) and a full decode within a budget (the PNG's pixel data
inflated to exactly the size its header gives, with valid row filters; the JPEG decoded to the end).
Each check is a generator that does a bounded slice of work per step, so the server interleaves it
with other episodes' requests: no file can stall the server, and what reaches the caller decodes.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# The critical chunks and small fixed-size ancillary ones. Compressed or free-form chunks (iCCP, zTXt,
# iTXt, tEXt, eXIf, ...) would be decoded by the caller's PNG reader: the episode re-encodes instead.
_PNG_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"sRGB", b"cHRM",
                         b"sBIT", b"bKGD"})
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Baseline and extended sequential Huffman frames, tables, restart interval, JFIF and comments. Not:
# progressive or arithmetic-coded frames (many scans: slow to decode), EXIF/ICC/MPF application data.
_JPEG_SEGMENTS = frozenset({0xC0, 0xC1, 0xC4, 0xDB, 0xDD, 0xE0, 0xFE})
_JPEG_MAX_SEGMENTS = 64
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy-coded data: anything but stuffing/restarts
SLICE_BYTES = 1 << 20          # bytes read, checked and inflated per step
# Formats the episode decodes to re-encode (never EPS, PDF or other formats that run programs).
REENCODE_FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "TGA"]


class Reader:
    """Sequential reads from a file descriptor with a byte cap; optionally every byte handed out is
    also written to `copy` (the server keeps exactly the bytes it checked)."""

    def __init__(self, fd: int, limit: int, copy=None):
        self.fd, self.limit, self.copy = fd, limit, copy
        self.total = 0
        self._pending = b""

    def read(self, n: int) -> bytes:
        parts, want = [], n
        if self._pending:
            parts.append(self._pending[:want])
            self._pending = self._pending[want:]
            want -= len(parts[0])
        while want > 0:
            chunk = os.read(self.fd, min(want, SLICE_BYTES))
            if not chunk:
                break
            self.total += len(chunk)
            if self.total > self.limit:
                raise ValueError(f"over the {self.limit}-byte limit")
            if self.copy is not None:
                self.copy.write(chunk)
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def peek(self, n: int) -> bytes:
        data = self.read(n)
        self._pending = data + self._pending
        return data


def step(check) -> tuple[bool, str] | None:
    """One slice of a check generator: None while it has more to do, else (accepted, why not).
    Never raises: a read error or anything unexpected in a hostile file is a refusal."""
    try:
        next(check)
        return None
    except StopIteration as done:
        return done.value
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def finish(check) -> tuple[bool, str]:
    """Run a check generator to its end: (accepted, why not)."""
    while True:
        verdict = step(check)
        if verdict is not None:
            return verdict


def check_image(reader: Reader, *, max_pixels: int, decode: bool = True):
    """Generator: yields between slices of work, returns (accepted, reason). PNG or JPEG only."""
    head = reader.peek(8)
    if head == PNG_SIGNATURE:
        return (yield from check_png(reader, max_pixels=max_pixels, decode=decode))
    if head[:2] == JPEG_SOI:
        return (yield from check_jpeg(reader, max_pixels=max_pixels, decode=decode))
    return False, "not a PNG or JPEG file"


def check_png(reader: Reader, *, max_pixels: int, decode: bool = True):
    """The PNG's structure (allowed chunks, at most one per 4 KB of file plus 64, checksums, IHDR
    first, IDAT consecutive, IEND last) and, with decode, its pixel data: inflated in slices, never
    past the size the header gives, every row's filter type valid, and exactly that size in the end."""
    if reader.read(8) != PNG_SIGNATURE:
        return False, "not a PNG file"
    max_chunks = 64 + reader.limit // 4096
    inflater = zlib.decompressobj()
    expected = row = produced = 0
    seen: list[bytes] = []
    work = 0
    while True:
        head = reader.read(8)
        if len(head) < 8:
            return False, "truncated PNG (no IEND chunk)"
        length, kind = struct.unpack(">I4s", head)
        if kind not in _PNG_CHUNKS:
            return False, f"PNG chunk {kind!r} is not accepted"
        if len(seen) >= max_chunks:
            return False, f"more than {max_chunks} PNG chunks"
        if (not seen) != (kind == b"IHDR") or (kind == b"IDAT" and b"IDAT" in seen and seen[-1] != b"IDAT"):
            return False, "PNG chunks out of order"
        crc = zlib.crc32(kind)
        if kind == b"IHDR":
            body = reader.read(length)
            crc = zlib.crc32(body, crc)
            if length != 13 or len(body) != 13:
                return False, "bad PNG header"
            width, height, depth, color, method, filtering, interlace = struct.unpack(">IIBBBBB", body)
            if color not in _PNG_DEPTHS or depth not in _PNG_DEPTHS[color] or method or filtering or interlace:
                return False, "PNG colour type, depth or interlacing not accepted"
            if not 0 < width * height <= max_pixels:
                return False, f"PNG of {width}x{height} pixels is over the {max_pixels}-pixel limit"
            row = 1 + (width * _PNG_CHANNELS[color] * depth + 7) // 8
            expected = row * height
        else:
            remaining = length
            while remaining:  # large chunks in slices: checksum and inflate as the bytes come
                piece = reader.read(min(remaining, SLICE_BYTES))
                if not piece:
                    return False, "truncated PNG chunk"
                remaining -= len(piece)
                crc = zlib.crc32(piece, crc)
                work += len(piece)
                data = piece if kind == b"IDAT" and decode else b""
                while data:  # inflated a slice at a time: 1 KB of zeros can stand for 1 MB of pixels
                    try:
                        pixels = inflater.decompress(data, min(expected - produced + 1, 4 * SLICE_BYTES))
                    except zlib.error:
                        return False, "PNG pixel data is not a valid zlib stream"
                    if produced + len(pixels) > expected:
                        return False, "PNG pixel data is larger than its header says"
                    first = (-produced) % row  # offsets of the filter-type bytes that start each row
                    if max(pixels[first::row], default=0) > 4:
                        return False, "PNG row with an invalid filter type"
                    produced += len(pixels)
                    data = inflater.unconsumed_tail
                    work += len(pixels)
                    if work >= 4 * SLICE_BYTES:
                        work = 0
                        yield
                if work >= SLICE_BYTES:
                    work = 0
                    yield
        work += 4096  # each chunk costs a loop step: empty chunks still bring the next yield closer
        if work >= SLICE_BYTES:
            work = 0
            yield
        stored = reader.read(4)
        if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
            return False, f"bad checksum in PNG chunk {kind!r}"
        seen.append(kind)
        if kind == b"IEND":
            break
    if reader.read(1):
        return False, "data after the PNG's end"
    if b"IDAT" not in seen or (color == 3 and b"PLTE" not in seen):
        return False, "PNG without pixel data or palette"
    if decode and (not inflater.eof or inflater.unused_data or produced != expected):
        return False, "PNG pixel data is incomplete or corrupt"
    return True, ""


def check_jpeg(reader: Reader, *, max_pixels: int, decode: bool = True):
    """A baseline JPEG: the allowed segments only (at most 64), one 8-bit frame of 1 or 3 components
    within the pixel limit, one scan of all of them, then entropy-coded data up to EOI at the file's
    end; with decode, the whole file decoded by PIL, fed in slices."""
    header = bytearray(reader.read(2))
    if bytes(header) != JPEG_SOI:
        return False, "not a JPEG file"
    components = 0
    for _ in range(_JPEG_MAX_SEGMENTS):
        head = reader.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return False, "truncated or malformed JPEG"
        marker, length = head[1], struct.unpack(">H", head[2:])[0]
        body = reader.read(length - 2) if length >= 2 else b""
        if len(body) != length - 2:
            return False, "truncated JPEG segment"
        header += head + body
        if marker == 0xDA:
            if not components or not body or body[0] != components:
                return False, "JPEG scan before its frame, or not one scan of every component"
            break
        if marker not in _JPEG_SEGMENTS:
            return False, f"JPEG marker 0x{marker:02X} is not accepted (progressive, arithmetic or EXIF/ICC data)"
        if marker in (0xC0, 0xC1):
            if components or len(body) < 6:
                return False, "more than one JPEG frame"
            precision, height, width, components = struct.unpack(">BHHB", body[:6])
            if precision != 8 or components not in (1, 3):
                return False, "JPEG precision or component count not accepted"
            if not 0 < width * height <= max_pixels:
                return False, f"JPEG of {width}x{height} pixels is over the {max_pixels}-pixel limit"
    else:
        return False, f"more than {_JPEG_MAX_SEGMENTS} JPEG segments"
    parser = _jpeg_parser(decode)
    if parser is not None:
        parser.feed(bytes(header))
    tail = b""
    while True:  # entropy-coded data, in slices, until the first real marker: it must be EOI, last
        piece = reader.read(SLICE_BYTES)
        data = tail + piece
        match = _JPEG_MARKER.search(data)
        if parser is not None:
            parser.feed(piece)
        if match:
            if data[match.start() + 1] != 0xD9 or len(data) != match.end() or reader.read(1):
                return False, "JPEG data after its scan is not just its end marker"
            break
        if not piece:
            return False, "truncated JPEG (no end marker)"
        tail = data[-1:]
        yield
    if parser is not None:
        try:
            image = parser.close()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
            return False, f"JPEG does not decode: {exc}"
        if image.size[0] * image.size[1] > max_pixels:
            return False, "JPEG over the pixel limit"
    return True, ""


def _jpeg_parser(decode: bool):
    if not decode:
        return None
    from PIL import ImageFile

    return ImageFile.Parser()


# ------------------------------------------------------------------ in the episode process
def hand_over(path: str, work_dir: str, staging: str, *, max_pixels: int, max_bytes: int) -> str | None:
    """The file to hand over for a candidate output: itself when it is a PNG or JPEG whose structure
    the server accepts, else a PNG re-encoded from it under `staging`; None when it is no image.
    Runs in the episode process, under its limits: decoding hostile files is safe there."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_size > max_bytes:
            return None
        real = os.path.realpath(path)
        if not real.startswith(os.path.realpath(work_dir).rstrip("/") + "/"):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            accepted, _ = finish(check_image(Reader(fd, st.st_size), max_pixels=max_pixels, decode=False))
        finally:
            os.close(fd)
        if accepted and _decodes(path):
            return path
        return _reencode(path, staging, max_pixels=max_pixels)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an output image
        return None


def _decodes(path: str) -> bool:
    """A cheap decode of a JPEG in the episode (at 1/8 scale): catches honest truncation here, where
    re-encoding is still possible (a PNG's structure check already read its checksums); the server
    decodes in full anyway."""
    from PIL import Image

    with Image.open(path, formats=["PNG", "JPEG"]) as im:
        if im.format == "JPEG":
            im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    return True


def _reencode(path: str, staging: str, *, max_pixels: int) -> str | None:
    from PIL import Image

    with Image.open(path, formats=REENCODE_FORMATS) as im:
        width, height = im.size
        if not 0 < width * height <= max_pixels:
            return None
        im.load()
        if im.mode not in ("L", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
        os.makedirs(staging, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0][:80] or "image"
        dest = os.path.join(staging, f"{stem}.png")
        n = 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(staging, f"{stem}-{n}.png")
        im.save(dest, "PNG", compress_level=1)
    return dest


# ------------------------------------------------------------------ in the server
def open_beneath(work_dir: str, path: str) -> int | None:
    """Open a reported output for reading, only if it lies inside `work_dir`: checked on the text of
    the path before anything is opened, then opened one component at a time without following any
    symlink, so nothing outside the work dir (a device, a FIFO, a host file) is ever opened."""
    if not isinstance(path, str) or "\0" in path:
        return None
    root = os.path.normpath(work_dir)
    full = os.path.normpath(os.path.join(root, path))
    if not full.startswith(root + "/"):
        return None
    parts = full[len(root) + 1:].split("/")
    if len(parts) > 64:
        return None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                       dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)


class OutputIntake:
    """The server's intake of one run's output images: each reported path opened inside the work dir,
    copied to the episode's outputs folder while it is checked, kept only if accepted. step() does one
    slice of work; `budget_s` bounds the time all of this run's checks may take together."""

    def __init__(self, paths: list, work_dir: str, out_dir: str, first_index: int, *, max_pixels: int,
                 max_bytes: int, budget_s: float):
        self.todo = [p for p in paths if isinstance(p, str)]
        self.work_dir, self.out_dir, self.index = work_dir, out_dir, first_index
        self.max_pixels, self.max_bytes, self.budget_s = max_pixels, max_bytes, budget_s
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.spent = 0.0
        self._current = None   # (check generator, source fd, copy file, destination path, shown name)

    def step(self) -> bool:
        """One slice of work; True when every image has been decided."""
        import time

        started = time.perf_counter()
        try:
            if self._current is None:
                if not self.todo:
                    return True
                self._open(self.todo.pop(0))
                return not self.todo and self._current is None
            check, fd, copy, dest, name = self._current
            verdict = step(check) if self.spent <= self.budget_s else (False, f"not checked within {self.budget_s:g} s")
            if verdict is not None:
                os.close(fd)
                copy.close()
                self._current = None
                if verdict[0]:
                    self.accepted.append(dest)
                else:
                    self.refused.append(f"{name}: {verdict[1]}")
                    os.unlink(dest)
            return not self.todo and self._current is None
        finally:
            self.spent += time.perf_counter() - started

    def _open(self, path: str) -> None:
        name = os.path.basename(path)[:80]
        fd = open_beneath(self.work_dir, path)
        if fd is None:
            self.refused.append(f"{name}: not a file inside the work dir")
            return
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= self.max_bytes:
            os.close(fd)
            self.refused.append(f"{name}: not a regular file within {self.max_bytes} bytes")
            return
        self.index += 1
        dest = os.path.join(self.out_dir, f"{self.index:03d}_{name}")
        copy = open(dest, "xb")
        reader = Reader(fd, st.st_size, copy=copy)
        self._current = (check_image(reader, max_pixels=self.max_pixels), fd, copy, dest, name)

    def abandon(self) -> None:
        """The episode was killed meanwhile: drop what is half done."""
        if self._current is not None:
            _, fd, copy, dest, _ = self._current
            os.close(fd)
            copy.close()
            os.unlink(dest)
            self._current = None
        self.todo = []
