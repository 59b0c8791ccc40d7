"""Zephyr's SMP UART receive path as built: ``uart_mcumgr.c``'s line buffers under ``smp_uart.c``.

Why it matters: these line buffers, not the netbuf size that the MCUmgr params answer reports,
decide whether a request survives the trip. What Zephyr does (drivers/console/uart_mcumgr.c,
subsys/mgmt/mcumgr/transport/src/smp_uart.c):

- the receive callback takes a line buffer (one of ``CONFIG_UART_MCUMGR_RX_BUF_COUNT``, each
  ``CONFIG_UART_MCUMGR_RX_BUF_SIZE`` bytes) at a line's first byte; with none free it ignores the
  whole line up to its ``\\n`` ("Insufficient buffers, fragment dropped");
- a line that outgrows its buffer is dropped too ("Line too long");
- a finished line goes to a FIFO; the system work queue decodes it into the packet being
  reassembled and only then gives its buffer back.

How fast the buffers come back depends on what feeds the callback. A hardware UART interrupts
every few bytes, so the work queue runs between lines and a buffer is free again long before
the next line ends (``burst=False``, "paced"). A USB CDC-ACM port (and many USB-serial bridges)
hands the callback a whole burst in one run, so the work queue runs only after it
(``burst=True``): every line of one burst beyond the buffer count is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RX_BUF_SIZE = 128  # CONFIG_UART_MCUMGR_RX_BUF_SIZE default
RX_BUF_COUNT = 2  # CONFIG_UART_MCUMGR_RX_BUF_COUNT default


@dataclass
class UartLineBuffers:
    """The line buffers of one SMP UART; ``feed`` is one run of the receive callback."""

    count: int = RX_BUF_COUNT
    size: int = RX_BUF_SIZE
    burst: bool = False
    dropped: int = 0  # lines ignored for want of a free buffer
    too_long: int = 0  # lines ignored because they outgrew their buffer
    _current: bytearray | None = field(default=None, repr=False)
    _ignoring: bool = field(default=False, repr=False)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines completed by ``chunk``, in order; the ones with no buffer are gone.

        Lines finished in this run hold their buffers until it ends (burst) or are handed to
        the work queue at once (paced); a line still open at the end keeps its buffer.
        """
        lines: list[bytes] = []
        held = 0  # finished lines of this run whose buffers the work queue has not freed yet
        pos = 0
        while pos < len(chunk):
            newline = chunk.find(b"\n", pos)
            end = len(chunk) if newline < 0 else newline + 1
            line = self._take(chunk[pos:end], held, complete=newline >= 0)
            if line is not None:
                lines.append(line)
                if self.burst:
                    held += 1
            pos = end
        return lines

    def _take(self, segment: bytes, held: int, *, complete: bool) -> bytes | None:
        if not self._ignoring and self._current is None:
            if held >= self.count:
                self._ignoring = True
                self.dropped += 1
            else:
                self._current = bytearray()
        if not self._ignoring and self._current is not None:
            if len(self._current) + len(segment) > self.size:
                self._current = None
                self._ignoring = True
                self.too_long += 1
            else:
                self._current += segment
        if not complete:
            return None
        if self._ignoring:
            self._ignoring = False
            return None
        line, self._current = self._current, None
        return bytes(line) if line is not None else None
