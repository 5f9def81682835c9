"""Scalars in TensorBoard's event-file format, without depending on TensorBoard.

An event file is a TFRecord stream (length, masked CRC-32C of the length,
payload, masked CRC-32C of the payload) of ``Event`` protocol buffers; a
scalar is ``Event{wall_time, step, summary{value{tag, simple_value}}}``. Only
the few fields written here are encoded, by hand. ``tensorboard --logdir RUN``
reads the files; :func:`read_scalars` reads them back for tests.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, extra: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + extra


def _record(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


class ScalarWriter:
    """Append-only writer of one event file in ``log_dir``; flushes after every call."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.gs_dfd"
        self.path = log_dir / name
        self._f = open(self.path, "ab")
        self._f.write(_record(_event(time.time(), 0, _field_bytes(3, b"brain.Event:2"))))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", float(v)))
                           for tag, v in values.items())
        self._f.write(_record(_event(time.time(), step, _field_bytes(5, summary))))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return n, i
        shift += 7


def _fields(buf: bytes):
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, i = _read_varint(buf, i)
        elif wire == 1:
            val, i = buf[i: i + 8], i + 8
        elif wire == 5:
            val, i = buf[i: i + 4], i + 4
        elif wire == 2:
            ln, i = _read_varint(buf, i)
            val, i = buf[i: i + ln], i + ln
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, val


def read_scalars(path: Path) -> list[tuple[int, str, float]]:
    """``(step, tag, value)`` of every scalar in an event file; checks every CRC."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        header = data[i: i + 8]
        (length,) = struct.unpack("<Q", header)
        if struct.unpack("<I", data[i + 8: i + 12])[0] != _masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {i}")
        payload = data[i + 12: i + 12 + length]
        if struct.unpack("<I", data[i + 12 + length: i + 16 + length])[0] != _masked_crc(payload):
            raise ValueError(f"{path}: bad payload CRC at byte {i}")
        i += 16 + length
        step = 0
        for num, val in _fields(payload):
            if num == 2:
                step = val
            elif num == 5:
                for _, v in _fields(val):
                    kv = dict(_fields(v))
                    out.append((step, kv[1].decode(), struct.unpack("<f", kv[2])[0]))
    return out
