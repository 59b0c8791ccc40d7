"""Image upload over SMP, pipelined and always following the server's ``off``.

smpclient's ``upload()`` sends one chunk and waits for its answer: at 115200 baud the UART then
idles for the server's flash write and the answer's trip back. The server has ``buf_count``
buffers (Zephyr's netbufs), so this keeps up to that many chunks in flight, the speed-up
smpclient's own ``SMPTransport.max_unencoded_size`` comment suggests. What keeps it correct:

- the first chunk goes alone: it carries ``len`` and the file's SHA256 ``sha``, makes the server
  erase (a long answer) and may be answered with an ``off`` > 0 (the server resumes an
  interrupted upload of the same file);
- answers come back in order; one with an unexpected ``off`` (an aligned partial write on
  MCUboot, a dropped chunk) means the chunks behind it were dropped too, so the pipe drains and
  the upload continues from the server's last word, never from the host's own count;
- a request or answer lost on the wire (a timeout) drops the window to one and asks again from
  the last confirmed offset; the server answers with the offset it expects. The first chunk is
  sent again unchanged. ``MAX_STALLS`` losses in a row without progress end the upload.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from smpclient import SMPClient
from smpclient.requests.image_management import ImageUploadWrite

from dfuhil.errors import ProductError
from dfuhil.links.async_loop import Progress
from dfuhil.links.smp_errors import is_refusal, refusal

__all__ = ["MAX_STALLS", "PipelinedUpload", "UploadResult", "UploadTimeout"]

# How often in a row (no progress in between) an upload may lose a request or its answer
# before it gives up: a noisy line that still moves the upload forward is not given up on.
MAX_STALLS = 3
# Zephyr's upload server needs the header's 32 bytes in the first chunk (spec §4.5).
MIN_FIRST_DATA = 32
# A server that answers offsets without storing the data would be fed forever: give up once the
# bytes sent reach this many times the image (plus some messages of slack for small images).
RESEND_LIMIT = 4


class UploadTimeout(TimeoutError):
    """No answer to an upload request: ``what`` and how long was waited, for the message."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} ({seconds:.1f} s)")
        self.what = what
        self.seconds = seconds


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha: bytes | None  # SHA256 of the file (what the server matches for resume)
    start_offset: int  # > 0 when the server resumed an interrupted upload
    requests: int
    resent_bytes: int  # sent again because the server asked for an earlier offset
    seconds: float
    match: bool | None  # the server's own check of the sha, when it reports one
    window: int  # requests kept in flight at the end

    @property
    def goodput(self) -> float:
        """New bytes accepted per wall second."""
        return (self.size - self.start_offset) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        resumed = f", resumed at {self.start_offset}" if self.start_offset else ""
        return (
            f"{self.size} bytes in {self.seconds:.2f} s ({self.goodput:.0f} B/s), "
            f"{self.requests} requests, window {self.window}{resumed}"
            + (f", {self.resent_bytes} bytes resent" if self.resent_bytes else "")
        )


Inflight = deque[tuple[int, int, "asyncio.Task[Any]"]]


class PipelinedUpload:
    """One upload of ``data`` through ``client`` (its transport must match answers by seq)."""

    def __init__(
        self,
        client: SMPClient,
        data: bytes,
        *,
        message_size: int,
        timeout_s: float,
        first_timeout_s: float,
        window: int = 1,
        resume: bool = True,
        image: int = 0,
        upgrade: bool = False,
        progress: Progress | None = None,
        who: str = "",
    ) -> None:
        self.client = client
        self.data = data
        self.message_size = message_size
        self.timeout_s = timeout_s
        self.first_timeout_s = first_timeout_s
        self.window = max(1, window)
        self.sha = sha256(data).digest() if resume else None
        self.image = image
        self.upgrade = upgrade
        self.progress = progress
        self.who = who
        self.requests = 0
        self.sent = 0  # image bytes sent, resends included
        self.resent = 0
        self.match: bool | None = None

    # -- requests ----------------------------------------------------------------------------

    def chunk(self, off: int) -> ImageUploadWrite:
        """The largest request the server's buffer takes, starting at ``off``."""
        fields: dict[str, Any] = {"off": off}
        if off == 0:  # smpclient's rule: len, sha, image and upgrade ride on every off 0
            fields.update(len=len(self.data), image=self.image, upgrade=self.upgrade, sha=self.sha)
        empty = ImageUploadWrite(data=b"", **fields)
        _, room = self.client.get_max_cbor_and_data_size(empty)
        if room < (MIN_FIRST_DATA if off == 0 else 1):
            raise ProductError(
                f"the server's buffer ({self.message_size} bytes per message) cannot carry an "
                "upload chunk: the first one needs the request fields, the sha and at least "
                f"{MIN_FIRST_DATA} bytes of image; give a larger buffer size (--buf-size)"
            )
        data = self.data[off : off + room]
        self.sent += len(data)
        if self.sent > RESEND_LIMIT * len(self.data) + 16 * self.message_size:
            raise ProductError(
                f"image upload to {self.who}: {self.sent} bytes sent for a {len(self.data)}-byte "
                f"image and the server wants offset {off} again: it keeps answering offsets "
                "it already had (a server that does not store the chunks, or a line that "
                "corrupts every one)"
            )
        self.requests += 1
        return ImageUploadWrite(data=data, **fields)

    def offset(self, response: Any) -> int:
        """The server's ``off``; an error answer becomes SmpRefused."""
        if is_refusal(response):
            raise refusal("image upload", response)
        off = getattr(response, "off", None)
        if off is None or not 0 <= int(off) <= len(self.data):
            raise ProductError(
                f"image upload to {self.who}: the server answered offset {off!r} for a "
                f"{len(self.data)}-byte image"
            )
        if getattr(response, "match", None) is not None:
            self.match = bool(response.match)
        return int(off)

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done, len(self.data))

    # -- the transfer ------------------------------------------------------------------------

    async def run(self) -> UploadResult:
        total = len(self.data)
        started = time.monotonic()
        first = self.chunk(0)
        answer = await self._first(first)
        acked = self.offset(answer)
        # The server took the first chunk, or it resumed an interrupted upload of this file.
        start_offset = 0 if acked == len(first.data) else acked
        self.report(acked)
        inflight: Inflight = deque()
        try:
            await self._stream(acked, inflight)
        finally:
            for _, _, task in inflight:
                task.cancel()
        if self.match is False:
            raise ProductError(
                f"image upload to {self.who}: the server reports that the received image does "
                "not match the file's SHA256 (corrupted in transit or a server bug); upload it "
                "again"
            )
        return UploadResult(
            size=total,
            sha=self.sha,
            start_offset=start_offset,
            requests=self.requests,
            resent_bytes=self.resent,
            seconds=time.monotonic() - started,
            match=self.match,
            window=self.window,
        )

    async def _first(self, first: ImageUploadWrite) -> Any:
        """Send the first chunk; a lost request or answer is sent again, unchanged. A server
        that got it answers the resend from its own state: Zephyr resumes the upload with the
        same ``sha`` (its ``off``), MCUboot restarts it; neither takes the data twice."""
        for attempt in range(MAX_STALLS + 1):
            if attempt:
                self.requests += 1
            try:
                return await self.client.request(first, self.first_timeout_s)
            except TimeoutError:
                continue
        raise UploadTimeout(
            f"the first image upload chunk ({MAX_STALLS + 1} times)", self.first_timeout_s
        )

    async def _stream(self, acked: int, inflight: Inflight) -> None:
        total = len(self.data)
        next_off = acked
        stalls = 0
        # A request waits behind the others in flight: its answer may take window turns.
        timeout = self.timeout_s * self.window
        while acked < total:
            while len(inflight) < self.window and next_off < total:
                request = self.chunk(next_off)
                task = asyncio.ensure_future(self.client.request(request, timeout))
                inflight.append((next_off, len(request.data), task))
                next_off += len(request.data)
            sent_off, length, task = inflight.popleft()
            try:
                answer = await task
            except TimeoutError:
                stalls += 1
                for _, _, later in inflight:
                    later.cancel()
                inflight.clear()
                if stalls > MAX_STALLS:
                    raise UploadTimeout(
                        f"image upload at offset {sent_off} ({stalls} times)", timeout
                    ) from None
                self.window, timeout = 1, self.timeout_s
                self.resent += next_off - acked
                next_off = acked
                continue
            reported = self.offset(answer)
            if reported != sent_off + length:
                reported = await self._drain(inflight, reported)
                self.resent += max(0, next_off - reported)
                next_off = reported
            if reported > acked:
                stalls = 0  # the line carries the upload: only losses in a row count
            acked = reported
            self.report(acked)

    async def _drain(self, inflight: Inflight, reported: int) -> int:
        """Let the chunks in flight land; the last answer says where the server stands."""
        for _, _, later in inflight:
            try:
                reported = self.offset(await later)
            except TimeoutError:
                continue
        inflight.clear()
        return reported
