"""A transport-agnostic SMP server core: decode a request packet, run its handlers, encode replies.

Used by the virtual Zephyr app (``dfuhil.sim.smp.app``) and the virtual MCUboot's serial
recovery (``dfuhil.sim.mcuboot``); each registers its own handlers. Stable API::

    SmpError(rc, group=None, rsn=None)          raise from a handler to answer an error
    Handler = (body: dict, header: SmpHeader) -> dict | None     (None: send no reply at all)
    d = SmpDispatcher(error_style="v2" | "v1", on_request=None)
    d.register(group, command_id, read=handler, write=handler)
    d.responses(packet) -> list[bytes]          one reply packet per message in the request
    d.handle(packet) -> bytes | None            the replies concatenated (None if there are none)

The two flavours (spec §4.1, §4.3, §4.6):

- ``"v2"`` (Zephyr ``smp.c``): reply version = min(request version, 1); a request version above
  1 is refused with rc 13 (UNSUPPORTED_TOO_NEW). A group error (``SmpError(rc, group=g)``)
  becomes ``{"err": {"group": g, "rc": rc}}`` for a v2 request and the translated MGMT_ERR
  ``{"rc": n}`` for a v1 request (``translate_v1``); an error without a group is ``{"rc": rc}``.
- ``"v1"`` (MCUboot ``boot_serial.c``): the reply copies the request's version bits and every
  error is ``{"rc": n}`` (a group error is translated as for v1 clients).

Both answer an unknown group or command with ``{"rc": 8}`` (ENOTSUP), undecodable CBOR or a
request that is not a map with ``{"rc": 3}`` (EINVAL), and handle several messages packed in one
request in order. A packet whose header lies about its length is dropped without a reply.
``on_request(header)`` runs before every handler that exists (Zephyr's MGMT_EVT_OP_CMD_RECV
callback); raising SmpError from it refuses the command with that error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import cbor2

from dfuhil.formats.smp import (
    VERSION_V2,
    MgmtErr,
    Op,
    SmpHeader,
    error_name,
    split_messages,
    translate_v1,
)

log = logging.getLogger(__name__)

ErrorStyle = Literal["v2", "v1"]
Handler = Callable[[dict[str, Any], SmpHeader], dict[str, Any] | None]


class SmpError(Exception):
    """A handler's refusal: ``rc`` in ``group``'s table, or a generic MGMT_ERR when ``group`` is
    None."""

    def __init__(self, rc: int, group: int | None = None, rsn: str | None = None) -> None:
        super().__init__(rsn or error_name(rc, group))
        self.rc = int(rc)
        self.group = group
        self.rsn = rsn


class SmpDispatcher:
    """Routes SMP requests to handlers by (group, command id, read/write)."""

    def __init__(
        self,
        error_style: ErrorStyle = "v2",
        *,
        on_request: Callable[[SmpHeader], None] | None = None,
    ) -> None:
        if error_style not in ("v2", "v1"):
            raise ValueError(f"error_style must be 'v2' or 'v1', not {error_style!r}")
        self.error_style = error_style
        self.on_request = on_request
        self._handlers: dict[tuple[int, int, int], Handler] = {}
        self.requests = 0  # messages handled (for tests and logs)

    def register(
        self,
        group: int,
        command_id: int,
        *,
        read: Handler | None = None,
        write: Handler | None = None,
    ) -> None:
        if read is not None:
            self._handlers[(int(group), int(command_id), Op.READ)] = read
        if write is not None:
            self._handlers[(int(group), int(command_id), Op.WRITE)] = write

    def handle(self, packet: bytes) -> bytes | None:
        replies = self.responses(packet)
        return b"".join(replies) if replies else None

    def responses(self, packet: bytes) -> list[bytes]:
        try:
            messages = split_messages(packet)
        except ValueError as exc:
            log.debug("dropping SMP packet: %s", exc)
            return []
        out: list[bytes] = []
        for header, payload in messages:
            self.requests += 1
            reply = self._one(header, payload)
            if reply is not None:
                out.append(reply)
        return out

    # --- one message ----------------------------------------------------------------------

    def _one(self, header: SmpHeader, payload: bytes) -> bytes | None:
        if header.op not in (Op.READ, Op.WRITE):
            body: dict[str, Any] | None = {"rc": int(MgmtErr.EINVAL)}
        elif self.error_style == "v2" and header.version > VERSION_V2:
            body = {"rc": int(MgmtErr.UNSUPPORTED_TOO_NEW)}
        else:
            body = self._run(header, payload)
        if body is None:
            return None
        return self._reply(header, body)

    def _run(self, header: SmpHeader, payload: bytes) -> dict[str, Any] | None:
        handler = self._handlers.get((header.group, header.command_id, header.op))
        if handler is None:
            return {"rc": int(MgmtErr.ENOTSUP)}
        try:
            if self.on_request is not None:
                self.on_request(header)
            try:
                request = cbor2.loads(payload) if payload else {}
            except Exception:  # cbor2 raises several types for malformed input
                return {"rc": int(MgmtErr.EINVAL)}
            if not isinstance(request, dict):
                return {"rc": int(MgmtErr.EINVAL)}
            return handler(request, header)
        except SmpError as err:
            return self._error(err, header)

    def _error(self, err: SmpError, header: SmpHeader) -> dict[str, Any]:
        if err.group is None:
            return {"rc": err.rc}
        if self.error_style == "v2" and header.version == VERSION_V2:
            return {"err": {"group": err.group, "rc": err.rc}}
        return {"rc": translate_v1(err.group, err.rc)}

    def _reply(self, request: SmpHeader, body: dict[str, Any]) -> bytes:
        payload = cbor2.dumps(body)
        # Zephyr answers in the highest version both sides speak; MCUboot echoes the bits.
        v2 = self.error_style == "v2"
        version = min(request.version, VERSION_V2) if v2 else request.version
        header = SmpHeader(
            op=request.op + 1,
            version=version,
            flags=0,
            length=len(payload),
            group=request.group,
            seq=request.seq,
            command_id=request.command_id,
        )
        return header.pack() + payload
