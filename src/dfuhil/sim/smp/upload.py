"""The SMP image-upload receiver (group 1, id 1), shared by the virtual Zephyr app and MCUboot.

Stable API::

    UploadPolicy(...)                 what differs between servers; ZEPHYR_UPLOAD, MCUBOOT_UPLOAD
    UploadRequest                     decoded fields: off, data, len, sha, image, upgrade
    UploadReceiver(flash, policy, select_slot, *, page_size, write_size=4,
                   trailer_start=None, running_version=None)
        .handle(body, header) -> dict   register it as the write handler of (IMAGE, UPLOAD)
        .reset()                        forget an interrupted upload
        .slot / .offset / .size / .in_progress

``select_slot(request) -> Slot`` picks the target on the first chunk (Zephyr: the slot not
running, refused with NO_FREE_SLOT while it is pending; MCUboot: the primary of ``image``) and
may raise :class:`SmpError`. Flash is written ONLY through ``flash.flash_erase_page`` and
``flash.flash_write`` (a FirmwareContext), so power-cut injection counts every operation.

Zephyr (``img_mgmt_upload`` / ``img_mgmt_upload_inspect``, zephyr_img_mgmt.c):

- ``off`` missing: INVALID_OFFSET. First chunk: fewer than 32 data bytes: INVALID_IMAGE_HEADER;
  no ``len``: INVALID_LENGTH; header magic wrong: INVALID_IMAGE_HEADER_MAGIC; ``sha`` longer
  than 32: INVALID_HASH; ``sha`` equal to the interrupted upload's: resume, answer its ``off``;
  ``len`` above the slot: INVALID_IMAGE_TOO_LARGE; ``upgrade`` and a version not above the
  running one: CURRENT_VERSION_IS_NEWER. A full 32-byte ``sha`` whose data is already in the
  slot ends the upload at once (``off = len``, ``match: true``). A slot that is not blank is
  erased from 0 up to the page holding byte ``len - 1`` and from the page holding the trailer's
  status area to the slot's end.
- Later chunks: a different ``off`` drops the data and answers the expected ``off``;
  ``off + len(data) > len``: INVALID_IMAGE_DATA_OVERRUN. Unaligned bytes are held in RAM
  (Zephyr's stream_flash) and written, padded with 0xFF, with the last chunk.
- The last chunk answers ``match``: the SHA-256 of the slot's ``len`` bytes equals ``sha``.
  Any error forgets the upload.

MCUboot (``bs_upload``, boot_serial.c): errors are ``rc`` EINVAL; ``off == 0`` restarts, erases
the whole slot and checks ``len`` against the slot; only the write-aligned part of a chunk is
written and the answer's ``off`` is that much (the client re-sends the rest), the last chunk is
padded; the answer always carries ``"rc": 0``; ``sha`` and ``upgrade`` are ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from dfuhil.formats.mcuboot import HEADER_SIZE, IMAGE_MAGIC, ImageHeader, ImageVersion
from dfuhil.formats.mcuboot_build import Slot
from dfuhil.formats.smp import Group, ImgMgmtErr, MgmtErr, SmpHeader
from dfuhil.sim.smp.server import SmpError

SHA_MAX = 32  # IMG_MGMT_DATA_SHA_LEN
ERASED = 0xFF


class FlashPort(Protocol):
    """What the receiver needs of a FirmwareContext."""

    def read(self, address: int, length: int) -> bytes: ...

    def flash_write(self, address: int, data: bytes) -> None: ...

    def flash_erase_page(self, address: int) -> None: ...


@dataclass(frozen=True)
class UploadPolicy:
    """What one SMP server does differently from another (see the module docstring)."""

    errors: Literal["image", "mgmt"]  # IMAGE group codes (Zephyr) or rc EINVAL (MCUboot)
    erase: Literal["image", "slot"]  # up to len + trailer if not blank, or the whole slot
    tail: Literal["buffer", "aligned"]  # hold unaligned bytes in RAM, or answer a smaller off
    check_header: bool  # first chunk: >= 32 bytes, image magic, len present
    resume_by_sha: bool
    report_match: bool  # CONFIG_IMG_ENABLE_IMAGE_CHECK: "match" on the last chunk
    report_rc: bool  # "rc": 0 in every good answer (MCUboot)
    honour_upgrade: bool  # the "upgrade" flag's version check
    reset_on_error: bool  # an error forgets the upload in progress
    require_data: bool  # a request without "data" is refused (MCUboot); Zephyr takes it as empty


ZEPHYR_UPLOAD = UploadPolicy(
    errors="image",
    erase="image",
    tail="buffer",
    check_header=True,
    resume_by_sha=True,
    report_match=True,
    report_rc=False,
    honour_upgrade=True,
    reset_on_error=True,
    require_data=False,
)

MCUBOOT_UPLOAD = UploadPolicy(
    errors="mgmt",
    erase="slot",
    tail="aligned",
    check_header=False,
    resume_by_sha=False,
    report_match=False,
    report_rc=True,
    honour_upgrade=False,
    reset_on_error=False,
    require_data=True,
)


@dataclass(frozen=True)
class UploadRequest:
    off: int | None
    data: bytes | None
    len: int | None
    sha: bytes
    image: int
    upgrade: bool

    @classmethod
    def decode(cls, body: dict[str, Any]) -> UploadRequest:
        """The fields as zcbor's bulk decoder takes them; a wrong type is EINVAL."""

        def uint(key: str) -> int | None:
            value = body.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SmpError(MgmtErr.EINVAL, rsn=f"{key} must be an unsigned integer")
            return value

        data = body.get("data")
        sha = body.get("sha", b"")
        upgrade = body.get("upgrade", False)
        if not isinstance(data, bytes | None) or not isinstance(sha, bytes):
            raise SmpError(MgmtErr.EINVAL, rsn="data and sha must be byte strings")
        if not isinstance(upgrade, bool):
            raise SmpError(MgmtErr.EINVAL, rsn="upgrade must be a bool")
        return cls(uint("off"), data, uint("len"), sha, uint("image") or 0, upgrade)


class UploadReceiver:
    """One image upload at a time, into the slot ``select_slot`` picks."""

    def __init__(
        self,
        flash: FlashPort,
        policy: UploadPolicy,
        select_slot: Callable[[UploadRequest], Slot],
        *,
        page_size: int,
        write_size: int = 4,
        trailer_start: Callable[[Slot], int] | None = None,
        running_version: Callable[[], ImageVersion | None] | None = None,
    ) -> None:
        self.flash = flash
        self.policy = policy
        self.select_slot = select_slot
        self.page_size = page_size
        self.write_size = write_size
        self.trailer_start = trailer_start
        self.running_version = running_version
        self.completed = 0  # uploads finished since boot (for tests and logs)
        self.reset()

    def reset(self) -> None:
        self.slot: Slot | None = None
        self.size = 0
        self.offset = 0  # bytes accepted (Zephyr: includes the RAM tail)
        self._written = 0  # bytes in flash (always write-aligned)
        self._tail = b""
        self._sha = b""

    @property
    def in_progress(self) -> bool:
        return self.slot is not None

    # --- the handler ------------------------------------------------------------------------

    def handle(self, body: dict[str, Any], header: SmpHeader) -> dict[str, Any]:
        request = UploadRequest.decode(body)
        try:
            return self._handle(request)
        except SmpError:
            if self.policy.reset_on_error:
                self.reset()
            raise

    def _handle(self, req: UploadRequest) -> dict[str, Any]:
        if req.off is None:
            raise self._error(ImgMgmtErr.INVALID_OFFSET, "off is missing")
        if req.data is None and self.policy.require_data:
            raise self._error(ImgMgmtErr.INVALID_LENGTH, "data is missing")
        data = req.data or b""
        if req.off == 0:
            answer = self._start(req, data)
            if answer is not None:
                return answer
        elif self.slot is None or req.off != self.offset:
            return self._answer()  # drop the data, tell the client where we are
        elif req.off + len(data) > self.size:
            raise self._error(ImgMgmtErr.INVALID_IMAGE_DATA_OVERRUN, "data beyond len")
        return self._write(data)

    def _start(self, req: UploadRequest, data: bytes) -> dict[str, Any] | None:
        """First chunk: check, resume or (re)start. An answer means: do not write the data."""
        policy = self.policy
        if policy.check_header and len(data) < HEADER_SIZE:
            raise self._error(ImgMgmtErr.INVALID_IMAGE_HEADER, "first chunk under 32 bytes")
        if req.len is None:
            raise self._error(ImgMgmtErr.INVALID_LENGTH, "len is missing")
        header = ImageHeader.unpack(data) if len(data) >= HEADER_SIZE else None
        if policy.check_header and (header is None or header.magic != IMAGE_MAGIC):
            raise self._error(ImgMgmtErr.INVALID_IMAGE_HEADER_MAGIC, "not an MCUboot image")
        if policy.resume_by_sha:
            if len(req.sha) > SHA_MAX:
                raise self._error(ImgMgmtErr.INVALID_HASH, "sha longer than 32 bytes")
            if req.sha and self.slot is not None and req.sha == self._sha:
                return self._answer()  # resume the interrupted upload
        slot = self.select_slot(req)
        if req.len > slot.size:
            raise self._error(ImgMgmtErr.INVALID_IMAGE_TOO_LARGE, f"len {req.len} > slot")
        if policy.honour_upgrade and req.upgrade and header is not None:
            running = self.running_version() if self.running_version else None
            if running is not None and running.key() >= header.version.key():
                raise self._error(ImgMgmtErr.CURRENT_VERSION_IS_NEWER, "not an upgrade")
        self.reset()
        self.slot, self.size, self._sha = slot, req.len, bytes(req.sha)
        if policy.report_match and len(self._sha) == SHA_MAX and self._slot_holds_file():
            self.offset = self._written = self.size
            return self._finish()
        self._erase(slot, req.len)
        return None

    def _write(self, data: bytes) -> dict[str, Any]:
        assert self.slot is not None
        last = self.offset + len(data) == self.size
        if self.policy.tail == "buffer":
            pending = self._tail + data
            keep = 0 if last else len(pending) % self.write_size
            chunk, self._tail = pending[: len(pending) - keep], pending[len(pending) - keep :]
            self._program(self._pad(chunk))
            self.offset += len(data)
        else:
            usable = len(data) - len(data) % self.write_size
            chunk = self._pad(data) if last else data[:usable]
            self._program(chunk)
            self.offset += len(data) if last else usable
        if self.offset == self.size:
            return self._finish()
        return self._answer()

    def _finish(self) -> dict[str, Any]:
        answer = self._answer()
        if self.policy.report_match:
            answer["match"] = len(self._sha) == SHA_MAX and self._slot_holds_file()
        self.completed += 1
        self.reset()
        return answer

    def _answer(self) -> dict[str, Any]:
        if self.policy.report_rc:
            return {"rc": 0, "off": self.offset}
        return {"off": self.offset}

    # --- flash --------------------------------------------------------------------------------

    def _pad(self, chunk: bytes) -> bytes:
        extra = -len(chunk) % self.write_size
        return chunk + bytes([ERASED]) * extra

    def _program(self, chunk: bytes) -> None:
        assert self.slot is not None
        if chunk:
            self.flash.flash_write(self.slot.start + self._written, chunk)
            self._written += len(chunk)

    def _slot_holds_file(self) -> bool:
        assert self.slot is not None
        content = self.flash.read(self.slot.start, self.size)
        return hashlib.sha256(content).digest() == self._sha

    def _erase(self, slot: Slot, length: int) -> None:
        if self.policy.erase == "slot":
            self._erase_range(slot.start, slot.end)
            return
        if self.flash.read(slot.start, slot.size) == bytes([ERASED]) * slot.size:
            return  # img_mgmt_flash_check_empty: a blank slot is not erased again
        end = slot.start + self._page_end(max(length, 1) - 1)
        self._erase_range(slot.start, end)
        if self.trailer_start is not None:
            trailer = slot.start + self.trailer_start(slot)
            trailer -= (trailer - slot.start) % self.page_size
            if trailer >= end:
                self._erase_range(trailer, slot.end)

    def _page_end(self, offset: int) -> int:
        return (offset // self.page_size + 1) * self.page_size

    def _erase_range(self, start: int, end: int) -> None:
        for page in range(start, end, self.page_size):
            self.flash.flash_erase_page(page)

    def _error(self, code: ImgMgmtErr, why: str) -> SmpError:
        if self.policy.errors == "mgmt":
            return SmpError(MgmtErr.EINVAL, rsn=why)
        return SmpError(code, group=Group.IMAGE, rsn=why)
