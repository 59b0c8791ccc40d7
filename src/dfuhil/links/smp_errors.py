"""SMP error answers as messages a person can act on.

The server says ``{"err": {"group": 1, "rc": 8}}``; the QA engineer needs "image state write
refused: HASH_NOT_FOUND (8): no slot holds image hash ab12… — the file SHA256 is not the image
hash". Names come from Zephyr's ``mgmt_defines.h``/``img_mgmt.h`` (dfuhil.formats.smp), hints
from the server rules in ../shared/specs/mcuboot-smp.md §4.4.
"""

from __future__ import annotations

from typing import Any

from smp import error as smperr

from dfuhil.errors import ProductError
from dfuhil.formats.smp import Group, ImgMgmtErr, MgmtErr, OsMgmtErr

__all__ = ["SmpRefused", "error_name", "is_refusal", "refusal"]


class SmpRefused(ProductError):
    """The SMP server answered with an error: the device refused the step."""

    def __init__(self, operation: str, rc: int, group: int | None, hint: str = "") -> None:
        self.operation = operation
        self.rc = rc
        self.group = group
        self.error = error_name(rc, group)
        super().__init__(
            f"{operation} refused: {self.error} ({rc})" + (f": {hint}" if hint else "")
        )


def error_name(rc: int, group: int | None) -> str:
    table: type[MgmtErr] | type[ImgMgmtErr] | type[OsMgmtErr] = MgmtErr
    if group == Group.IMAGE:
        table = ImgMgmtErr
    elif group == Group.OS:
        table = OsMgmtErr
    try:
        return table(rc).name
    except ValueError:
        return f"rc {rc}" if group is None else f"group {group} rc {rc}"


_LOCK_HINT = (
    "another transport holds the DFU lock (nRF Desktop releases it a few seconds after that "
    "transport's last image command); retry after the timeout"
)

_HINTS: dict[tuple[str, str], str] = {
    ("image state write", "HASH_NOT_FOUND"): "no slot holds image hash {hash} — `dfuhil mcuboot "
    "list` shows the hashes; the file SHA256 is not the image hash",
    ("image state write", "ENOENT"): "no slot holds image hash {hash} — `dfuhil mcuboot list` "
    "shows the hashes; the file SHA256 is not the image hash",
    ("image state write", "IMAGE_ALREADY_PENDING"): "another image is already marked for the "
    "next boot (or a revert is due): reset first, or erase the secondary slot",
    ("image state write", "IMAGE_SETTING_TEST_TO_ACTIVE_DENIED"): "that image is the one "
    "running; only the other slot can be marked for test",
    ("image state write", "IMAGE_CONFIRMATION_DENIED"): "only the running image can be "
    "confirmed: reset into it first",
    ("image state write", "INVALID_HASH"): "an image hash is 32 bytes (the SHA TLV)",
    ("image upload", "INVALID_IMAGE_TOO_LARGE"): "the image is larger than the slot; `dfuhil "
    "image check IMAGE --board NAME` shows by how much",
    ("image upload", "INVALID_IMAGE_HEADER_MAGIC"): "the file does not start with an MCUboot "
    "image header: sign it first (`dfuhil image sign`), upload the .bin, not zephyr.bin",
    ("image upload", "INVALID_IMAGE_HEADER"): "the first chunk does not hold a valid image header",
    ("image upload", "CURRENT_VERSION_IS_NEWER"): "an upgrade-only upload must carry a newer "
    "version than the running image",
    ("image upload", "NO_FREE_SLOT"): "the slot holds an image marked for the next boot: reset "
    "to run it, or `dfuhil mcuboot erase` it",
    ("image upload", "INVALID_IMAGE_DATA_OVERRUN"): "the server's idea of the length differs: "
    "start the upload again",
    ("image erase", "EBADSTATE"): "the slot is running or marked for the next boot",
    ("image erase", "IMAGE_ALREADY_PENDING"): "the slot is marked for the next boot",
}


def _hint(operation: str, name: str, context: dict[str, str]) -> str:
    if name in ("EBUSY", "EACCESSDENIED"):
        return _LOCK_HINT
    if name == "ENOTSUP":
        return (
            "the server does not implement this command (MCUboot serial recovery answers echo "
            "and params only when built with BOOT_MGMT_ECHO / BOOT_MGMT_MCUMGR_PARAMS)"
        )
    template = _HINTS.get((operation, name), "")
    try:
        return template.format(**context)
    except KeyError:
        return template


def refusal(operation: str, response: Any, **context: str) -> SmpRefused:
    """An SMP error response as the exception a person can act on."""
    if isinstance(response, smperr.ErrorV2):
        rc, group = int(response.err.rc), int(response.err.group)
    else:
        rc, group = int(response.rc), None
    return SmpRefused(operation, rc, group, _hint(operation, error_name(rc, group), context))


def is_refusal(response: Any) -> bool:
    """Whether an answer says no: an error model, or a success model carrying ``rc`` != 0
    (the upload answer allows ``rc``, so ``{"rc": 11}`` parses as a "success"); ``{"rc": 0}``
    is MCUboot's way of saying yes."""
    if isinstance(response, smperr.ErrorV2):
        return True
    rc = getattr(response, "rc", None)
    return rc is not None and int(rc) != 0
