"""SMP over the console UART ("SMP over console", spec §5) for virtual firmware.

Stable API::

    serve_serial(ctx, dispatcher, *, buf_size=None, line_length=128, on_text=None,
                 timeout_s=None) -> bool

It reads ``ctx.uart_read``, reassembles frames with :class:`SerialFrameDecoder`, dispatches
each packet and writes every reply as its frames in ONE ``ctx.uart_write`` call. The UART queues
each write whole, so console text the firmware prints from any thread (``ctx.print``) always
lands between frames, never inside one. Bytes that are not SMP are passed to ``on_text`` (a
Zephyr shell would see them; the virtual app ignores them).

``buf_size`` models the receiver's reassembly buffer (Zephyr NETBUF_SIZE, MCUboot
BOOT_SERIAL_MAX_RECEIVE_SIZE): a packet whose framed body (length + packet + CRC) exceeds it
is dropped without a reply, as the real firmware drops it.

With ``timeout_s`` (device seconds) the call returns False if no SMP packet arrived in that
time (MCUboot's BOOT_SERIAL_WAIT_FOR_DFU window); once one arrives it serves until reset.
Without ``timeout_s`` it serves until the CPU is reset (the ResetSignal unwinds it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dfuhil.formats.smp import (
    FRAME_OVERHEAD,
    LINE_LENGTH,
    SerialFrameDecoder,
    SmpPacket,
    encode_frames,
)
from dfuhil.sim.smp.server import SmpDispatcher

if TYPE_CHECKING:
    from dfuhil.sim.runtime import FirmwareContext


def serve_serial(
    ctx: FirmwareContext,
    dispatcher: SmpDispatcher,
    *,
    buf_size: int | None = None,
    line_length: int = LINE_LENGTH,
    on_text: Callable[[bytes], None] | None = None,
    timeout_s: float | None = None,
    after_reply: Callable[[], None] | None = None,
) -> bool:
    """Serve SMP frames on the console UART until reset; ``after_reply`` runs once each
    request's answer is on the wire (MCUboot's reset: answer first, reboot 250 ms later)."""
    decoder = SerialFrameDecoder()
    deadline = None if timeout_s is None else ctx.now() + timeout_s
    while True:
        wait = None
        if deadline is not None:
            wait = deadline - ctx.now()
            if wait <= 0:
                return False
        data = ctx.uart_read(4096, wait)
        for item in decoder.feed(data):
            if not isinstance(item, SmpPacket):
                if on_text is not None:
                    on_text(item.data)
                continue
            deadline = None  # a frame arrived: serve for good
            if buf_size is not None and len(item.data) + FRAME_OVERHEAD > buf_size:
                ctx.log(f"SMP packet of {len(item.data)} bytes exceeds buf_size {buf_size}")
                continue
            replies = dispatcher.responses(item.data)
            if replies:
                ctx.uart_write(b"".join(encode_frames(r, line_length) for r in replies))
            if after_reply is not None:
                after_reply()
