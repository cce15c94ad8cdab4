"""A minimal PNG encoder for 8-bit grayscale images (the demo's data), so that packing
the demo needs neither OpenCV nor Pillow. MXNet's ImageRecordIter decodes PNG."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_gray(image: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError("expected a 2-D uint8 array")
    height, width = image.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in image)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
