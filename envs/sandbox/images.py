"""Input images: size-checked before decoding (decompression bombs), then decoded once, in an image
zygote (zygote.py), whose episode processes inherit the decode. Output images: outputs.py."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import InputImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@dataclass
class DecodedInput:
    path: str
    width: int
    height: int
    bgr: np.ndarray          # what cv2.imread(path) returns
    pil: Image.Image         # what Image.open(path).load() gives (mode kept: L, RGB, RGBA, P...)

    @property
    def nbytes(self) -> int:
        return self.bgr.nbytes + self.width * self.height * len(self.pil.getbands())


def decode_input(path: str, *, max_pixels: int, max_bytes: int) -> DecodedInput:
    """Open, size-check (before decoding: decompression bombs) and fully decode one input image."""
    import cv2

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputImageError(f"input image {path!r} does not exist") from None
    except OSError as exc:
        raise InputImageError(f"input image {path!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputImageError(f"input image {path!r} is not a regular file")
    if st.st_size > max_bytes:
        raise InputImageError(f"input image {path!r} is {st.st_size} bytes; the limit is {max_bytes} (sandbox.max_image_bytes)")
    try:
        with Image.open(path) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise InputImageError(
                    f"input image {path!r} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(sandbox.max_image_pixels): refusing to decode a possible decompression bomb")
            probe.load()
            pil = probe.copy()
            pil.format = probe.format
    except InputImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise InputImageError(f"input image {path!r} is not a readable image: {type(exc).__name__}: {exc}") from None
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        if pil.mode not in ("RGB", "L"):
            raise InputImageError(f"input image {path!r} could not be decoded by OpenCV")
        bgr = cv2.cvtColor(np.asarray(pil.convert("RGB")), cv2.COLOR_RGB2BGR)
    return DecodedInput(path=path, width=width, height=height, bgr=bgr, pil=pil)
