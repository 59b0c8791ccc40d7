"""Every file dfuhil reads, fuzzed: each input is handled or refused with the file named.

A bounded, deterministic budget (derandomized hypothesis, no example database) so CI is stable;
``make fuzz`` runs the same targets for long. Each target mutates a valid file (fuzz_files.py),
so the inputs reach the checks behind the magic numbers. The explicit examples are the inputs
that crashed or hung dfuhil before its fix, kept so the bugs stay fixed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fuzz_files import (
    BOOTLOADER_CONFIG,
    TARGETS,
    _record,
    _zip,
    boards_yaml,
    mesh_package_members,
    pm_static_yaml,
)
from fuzz_harness import fuzz_test
from fuzz_strategies import DEEP, HUGE_INT, YAML_SNIPPETS, json_text

from dfuhil.errors import InputError
from dfuhil.formats.mcuboot import IMAGE_MAGIC, ImageFormatError
from dfuhil.formats.meshpkg import MANIFEST_NAME

ALIAS_BOMB = next(s for s in YAML_SNIPPETS if s.startswith("a0: &a0"))
SELF_ALIAS = "a: &a [1, *a]\n"
REUSED_ANCHOR = "x:\n  a: &id001 [1]\n  b: &id001 [2]\n"


def _fuzz(name: str, max_examples: int, *examples: Any) -> Callable[[], None]:
    return fuzz_test(TARGETS[name], max_examples, *examples)


def _manifest_zip(text: str) -> bytes:
    members = dict(mesh_package_members(False))
    members[MANIFEST_NAME] = text.encode()
    return _zip(members)


def _zip_with_central_directory_offset_off_by(extra: int) -> bytes:
    """The end record says the central directory starts later than it does: member offsets
    computed from it go negative (zipfile's seek raised OSError EINVAL)."""
    data = bytearray(_zip(dict(mesh_package_members(False))))
    end = data.rindex(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", data, end + 16)
    struct.pack_into("<I", data, end + 16, offset + extra)
    return bytes(data)


def _slot_with_protected_tlvs_past_the_end() -> bytes:
    header = struct.pack("<IIHHII", IMAGE_MAGIC, 0, 0x200, 0xFFFE, 0x200, 0)
    return header + bytes(12)


# A public key PEM whose algorithm OID lost a byte (cryptography: UnsupportedAlgorithm).
DAMAGED_OID_PEM = (
    b"-----BEGIN PUBLIC KEY-----\n"
    b"MFkwEwYHAIZIzj0CAQYIKo5Izj0DAQcDQgAEIKFesGSOx9Dq4uOWo4ISectDTFi4ZA2bDXcNObdi\n"
    b"fWVdRO+IzpFHgMJOzYICMLSQ08siYSSF1j2+orC01hZM3g==\n"
    b"-----END PUBLIC KEY-----\n"
)
# Data at 0x1000 and at 0x0FFF0000 (extended linear address 0x0FFF): a 256 MiB .bin.
FAR_APART_HEX = (
    _record(0, 0x1000, bytes(range(16)), True)
    + _record(4, 0, b"\x0f\xff", True)
    + _record(0, 0, b"\x01", True)
    + ":00000001FF\n"
).encode()

test_boards_yaml = _fuzz(
    "boards.yaml",
    8,
    (boards_yaml() + ALIAS_BOMB).encode(),
    (boards_yaml() + SELF_ALIAS).encode(),
    (boards_yaml() + "key: " + DEEP + "\n").encode(),
)
test_boards_yaml_cli = _fuzz("boards.yaml (cli)", 5, (boards_yaml() + REUSED_ANCHOR).encode())
test_pm_static = _fuzz(
    "pm_static.yml",
    30,
    (pm_static_yaml() + "key: " + DEEP + "\n").encode(),
    (pm_static_yaml() + ALIAS_BOMB).encode(),
)
test_pm_static_cli = _fuzz("pm_static.yml (cli)", 5, (pm_static_yaml() + REUSED_ANCHOR).encode())
test_intel_hex = _fuzz("intel hex", 40)
test_intel_hex_to_mesh_bin = _fuzz("intel hex -> mesh bin", 40, FAR_APART_HEX)
test_intel_hex_cli = _fuzz("intel hex (cli)", 15, FAR_APART_HEX)
test_device_page = _fuzz("device page", 60)
test_device_page_hex_cli = _fuzz("device page hex (cli)", 15)
test_bootloader_config = _fuzz(
    "bootloader_config json",
    50,
    json_text({"bootloader_config": {"bootloader_id": [[DEEP]]}}).encode(),
    json.dumps(BOOTLOADER_CONFIG).replace("89", HUGE_INT).encode(),
)
test_bootloader_config_cli = _fuzz("bootloader_config json (cli)", 15)
test_mesh_zip = _fuzz(
    "mesh dfu zip",
    50,
    _manifest_zip(DEEP),
    _manifest_zip('{"manifest": ' + HUGE_INT + "}"),
    _zip_with_central_directory_offset_off_by(100),
)
test_mesh_zip_cli = _fuzz("mesh dfu zip (cli)", 15, _zip_with_central_directory_offset_off_by(100))
test_mesh_key = _fuzz("mesh key", 40)
test_mesh_key_cli = _fuzz("mesh key (cli)", 12)
test_mcuboot_key = _fuzz("mcuboot key", 40, DAMAGED_OID_PEM)
test_mcuboot_key_cli = _fuzz("mcuboot key (cli)", 12, DAMAGED_OID_PEM)
test_mcuboot_image = _fuzz("mcuboot image", 60)
test_mcuboot_slot = _fuzz("mcuboot slot + trailer", 60, _slot_with_protected_tlvs_past_the_end())
test_mcuboot_image_cli = _fuzz("mcuboot image (cli)", 15)


def test_a_hex_spanning_more_than_any_flash_is_refused_before_it_is_unpacked(
    tmp_path: Path,
) -> None:
    from dfuhil.formats.meshpkg import hex_to_bin

    path = tmp_path / "far.hex"
    path.write_bytes(FAR_APART_HEX)
    with pytest.raises(InputError, match=r"far.hex: data from 0x1000 to 0xFFF0001 spans more"):
        hex_to_bin(path)


def test_a_slot_whose_protected_tlvs_run_past_it_is_refused_by_name() -> None:
    from dfuhil.formats.mcuboot import read_slot_image

    slot = _slot_with_protected_tlvs_past_the_end() + b"\xff" * 0x4000
    with pytest.raises(ImageFormatError, match="protected TLVs end at 0x103FE, past the slot"):
        read_slot_image(lambda a, n: slot[a : a + n], 0, 0x4000, source="slot 1")
