"""Raw SMP serial frames on a real port, read and written with the ``smp`` package as the peer.

Why: the wire tests compare what dfuhil's host and the virtual farm put on a pty, byte for
byte, with ``smp.packet.encode``'s frames; these helpers keep dfuhil's own codec out of the
reading side.
"""

from __future__ import annotations

import time

import serial
from smp import packet as smppacket

LINE = 128  # smpclient's serial line_length: 124 base64 characters, 127-byte lines
MARKERS = (smppacket.START_DELIMITER, smppacket.CONTINUE_DELIMITER)


def smp_frames(packet: bytes, line_length: int = LINE) -> bytes:
    return b"".join(smppacket.encode(packet, line_length=line_length))


def read_frames(port: serial.Serial, timeout_s: float = 20.0) -> tuple[bytes, bytes]:
    """The raw frame lines of the next SMP packet on ``port`` and the packet smp decodes from
    them; console lines between are skipped (``timeout_s`` bounds a hang, asserts no speed)."""
    decoder = smppacket.decode()
    next(decoder)
    raw = bytearray()
    pending = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pending += port.read(port.in_waiting or 1)
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line += b"\n"
            if not line.startswith(MARKERS):
                continue
            raw += line
            try:
                decoder.send(line)
            except StopIteration as done:
                assert pending == b"", "one answer per request"
                return bytes(raw), bytes(done.value)
    raise AssertionError(f"no complete SMP packet within {timeout_s} s; got {bytes(raw)!r}")


def line_lengths(raw: bytes) -> list[int]:
    """Each frame line's length on the wire, marker and newline included."""
    return [len(line) + 1 for line in raw.split(b"\n")[:-1]]
