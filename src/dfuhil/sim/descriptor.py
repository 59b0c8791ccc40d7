"""The behaviour descriptor: how a virtual board knows what a sample image does.

A virtual board cannot execute ARM code, and must never pretend to. The virtual farm's own sample
images therefore carry, right after a Cortex-M vector table, a small record that names the
behaviour plug-in to run and its parameters. An image without one is real ARM code: the virtual
board reports it as "cannot run on a virtual board".

Layout at ``image start + DESCRIPTOR_OFFSET`` (little-endian)::

    0   8  magic b"DFUHILVB"
    8   2  format version (1)
    10  2  payload length N
    12  4  CRC-32 of the payload
    16  N  payload: UTF-8 JSON object, keys sorted: {"kind": ..., "name": ..., "version": ...,
           "banner": ..., "params": {...}}

**Link address.** A sample image records where it was linked the way a real one does: in its
vector table. Word 1 (the reset vector) is the absolute address of its reset handler, which
every sample image has at ``link address + RESET_OFFSET`` (Thumb bit set). Like a
non-relocatable Cortex-M image, it runs only where it was linked: started anywhere else, the
CPU jumps to a reset handler in another image's flash (see :func:`link_address`; the virtual
CPU faults there, dfuhil.sim.runtime).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

DESCRIPTOR_OFFSET = 0x200  # past the largest nRF5 vector table (nRF52840: 0x200 bytes)
# Reset handler offset inside every sample image: past the largest descriptor, Thumb bit set.
RESET_OFFSET = 0xA80
MAGIC = b"DFUHILVB"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHI")
MAX_PAYLOAD = 2048


@dataclass(frozen=True)
class Behaviour:
    """What a sample image does on a virtual board."""

    kind: str  # plug-in name in the firmware runtime registry, e.g. "blinky"
    name: str  # human name, shown in logs
    version: str = "1.0.0"
    banner: str = ""  # first console line after boot ("" = silent)
    params: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        payload = json.dumps(
            {
                "kind": self.kind,
                "name": self.name,
                "version": self.version,
                "banner": self.banner,
                "params": self.params,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(
                f"behaviour descriptor payload is {len(payload)} bytes, max {MAX_PAYLOAD}"
            )
        return HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), zlib.crc32(payload)) + payload


class DescriptorError(ValueError):
    """The magic is there but the record is damaged: say so instead of guessing."""


def decode(raw: bytes) -> Behaviour | None:
    """Parse a descriptor from the bytes at ``start + DESCRIPTOR_OFFSET``; None if there is none."""
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        return None
    _magic, version, length, crc = HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise DescriptorError(f"behaviour descriptor format {version} is not supported")
    payload = raw[HEADER.size : HEADER.size + length]
    if len(payload) != length or zlib.crc32(payload) != crc:
        raise DescriptorError("behaviour descriptor CRC mismatch (image damaged in flash?)")
    data = json.loads(payload)
    return Behaviour(
        kind=str(data["kind"]),
        name=str(data["name"]),
        version=str(data.get("version", "")),
        banner=str(data.get("banner", "")),
        params=dict(data.get("params", {})),
    )


def read_length() -> int:
    """How many bytes a reader must fetch at the descriptor offset to decode any descriptor."""
    return HEADER.size + MAX_PAYLOAD


def reset_vector_for(link_address: int) -> int:
    """The reset vector of a sample image linked at ``link_address`` (Thumb bit set)."""
    return link_address + RESET_OFFSET + 1


def link_address(reset_vector: int) -> int:
    """Where the sample image whose vector table holds ``reset_vector`` was linked."""
    return (reset_vector & ~1) - RESET_OFFSET
