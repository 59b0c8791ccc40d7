"""What a Zephyr SMP UART transport holds, and the requests a host may send it.

Why: the MCUmgr params answer reports the netbuf (``buf_size``, ``buf_count``) but not the UART
line buffers in front of it (``CONFIG_UART_MCUMGR_RX_BUF_COUNT`` x ``_SIZE``, stock 2 x 128;
smpclient issue #73). When a request reaches the device in one burst (USB CDC-ACM), every frame
line beyond the free line buffers is dropped and the request is never answered. So the host
sizes its requests, and how many it keeps in flight, to what the line buffers hold: the stock
geometry unless boards.yaml states the build's own (``mcuboot.smp_uart``).

Pure arithmetic on spec §5's framing: a packet P travels as base64 of ``len ‖ P ‖ crc``
(4 bytes more), cut every 124 characters into lines of ``06 09``/``04 14`` + text + ``\\n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dfuhil.formats.smp import FRAME_OVERHEAD, LINE_LENGTH, chars_per_line, netbuf_window

__all__ = [
    "DELIVERIES",
    "Delivery",
    "SerialBudget",
    "SmpUart",
    "frame_lines",
    "max_packet_for_lines",
    "serial_budget",
]

Delivery = Literal["paced", "burst"]
DELIVERIES: tuple[Delivery, ...] = ("paced", "burst")


@dataclass(frozen=True)
class SmpUart:
    """A build's SMP UART transport (Zephyr Kconfig); the defaults are Zephyr's own.

    ``delivery`` is what carries the host's bytes to the chip: ``burst`` (USB CDC-ACM, a
    USB-serial bridge that forwards whole USB packets: a request arrives in one piece) or
    ``paced`` (a hardware UART at the baud rate: the work queue frees each line before the
    next one ends). Unknown means burst: it is the one a request must survive.
    """

    rx_buf_count: int = 2  # CONFIG_UART_MCUMGR_RX_BUF_COUNT
    rx_buf_size: int = 128  # CONFIG_UART_MCUMGR_RX_BUF_SIZE
    mtu: int = 256  # CONFIG_MCUMGR_TRANSPORT_UART_MTU
    delivery: Delivery = "burst"

    @property
    def line_length(self) -> int:
        """The ``line_length`` (smp package meaning) whose lines fit one line buffer."""
        return min(LINE_LENGTH, self.rx_buf_size)

    def describe(self) -> str:
        return (
            f"{self.rx_buf_count} x {self.rx_buf_size} bytes, MTU {self.mtu}, "
            f"{self.delivery} delivery"
        )


def frame_lines(packet_size: int, line_length: int = LINE_LENGTH) -> int:
    """How many console lines a packet of ``packet_size`` bytes takes on the wire."""
    chars = 4 * math.ceil((packet_size + FRAME_OVERHEAD) / 3)
    return math.ceil(chars / chars_per_line(line_length))


def max_packet_for_lines(lines: int, line_length: int = LINE_LENGTH) -> int:
    """The largest packet (SMP header + CBOR) that travels in ``lines`` lines."""
    return chars_per_line(line_length) // 4 * 3 * lines - FRAME_OVERHEAD


@dataclass(frozen=True)
class SerialBudget:
    """What the host sends a serial SMP server: messages up to ``message_size`` bytes, up to
    ``window`` of them in flight, cut into lines of ``line_length``."""

    message_size: int
    window: int
    line_length: int
    lines_per_message: int

    def __str__(self) -> str:
        return (
            f"messages ≤ {self.message_size} B ({self.lines_per_message} lines), "
            f"window {self.window}"
        )


def serial_budget(uart: SmpUart, buf_size: int, buf_count: int) -> SerialBudget:
    """Message size and window whose bytes in flight fit ``uart``'s line buffers.

    ``buf_size``/``buf_count`` are the netbuf (MCUmgr params): at most
    :func:`~dfuhil.formats.smp.netbuf_window` requests are in flight, whatever the UART holds.
    With paced delivery the line buffers come back between lines, so only the netbuf bounds
    the budget. With bursts every
    line in flight needs a buffer: of the splits that fill the most buffers, the one with the
    largest messages wins (fewer headers and round trips).
    """
    line_length = uart.line_length
    largest = max(1, buf_size - FRAME_OVERHEAD)
    if uart.delivery == "paced":
        size = largest
        window = netbuf_window(buf_count)
        return SerialBudget(size, window, line_length, frame_lines(size, line_length))
    best: SerialBudget | None = None
    for lines in range(1, max(1, uart.rx_buf_count) + 1):
        size = min(largest, max_packet_for_lines(lines, line_length))
        if size <= 0:
            continue
        used = frame_lines(size, line_length)
        window = max(1, min(netbuf_window(buf_count), uart.rx_buf_count // used))
        candidate = SerialBudget(size, window, line_length, used)
        if best is None or (window * size, size) > (
            best.window * best.message_size,
            best.message_size,
        ):
            best = candidate
    if best is None:
        raise ValueError(f"no SMP message fits {uart.describe()}")
    return best
