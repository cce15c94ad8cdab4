"""A minimal PNG encoder for 8-bit grayscale and RGB images (the demo's data, metrics.png),
so that neither needs OpenCV or Pillow. MXNet's ImageRecordIter decodes PNG."""
from __future__ import annotations

import struct
import zlib

import numpy as np

_COLOR_TYPE = {2: 0, 3: 2}  # array rank -> PNG colour type: grayscale, RGB


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode(image: np.ndarray, *, level: int = 6) -> bytes:
    """PNG bytes of an (H, W) or (H, W, 3) uint8 array.

    >>> encode(np.zeros((2, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    if image.dtype != np.uint8 or image.ndim not in _COLOR_TYPE or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError("expected an (H, W) or (H, W, 3) uint8 array")
    height, width = image.shape[:2]
    raw = b"".join(b"\x00" + row.tobytes() for row in image)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPE[image.ndim], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level))
            + _chunk(b"IEND", b""))
