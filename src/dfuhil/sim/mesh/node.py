"""The shape both mesh firmwares share: interrupts feeding one main loop, one timer, TX slots.

On the chip, UART and RADIO interrupts hand bytes to a main context that also runs timers. Here
two reader threads play the interrupt handlers (one blocked on the UART, one on the radio) and
put what they got, stamped with the device time, in one inbox; the firmware's own thread takes
inputs in order, fires the timer and the TX slots when they are due, and otherwise waits for the
next input or deadline. Every wait is on the farm's virtual clock, and a reset (or a jump to
another image) stops the readers before the next firmware starts reading.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from dfuhil.formats.meshdfu import Frame, FrameReader, Opcode, frame
from dfuhil.sim.clock import ResetSignal
from dfuhil.sim.mesh.transport import TxSlots, TxTiming
from dfuhil.sim.runtime import Firmware, FirmwareContext

READ_SLICE_S = 0.25  # device seconds a reader blocks before looking at its stop flag
WAIT_WALL_S = 0.05  # longest wall-clock wait before re-checking reset/halt


@dataclass(frozen=True)
class SerialInput:
    frame: Frame
    at: float


@dataclass(frozen=True)
class RadioInput:
    packet: bytes
    at: float


Input = SerialInput | RadioInput


class Inbox:
    """What the UART and RADIO interrupt handlers received, in arrival order."""

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx
        self._queue: queue.Queue[Input] = queue.Queue()
        self._stop = threading.Event()
        name = ctx.board.name
        self._threads = [
            threading.Thread(target=self._uart, name=f"{name}-mesh-uart", daemon=True),
            threading.Thread(target=self._radio, name=f"{name}-mesh-radio", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)

    def get(self, timeout_s: float | None) -> Input | None:
        """The next input, waiting at most ``timeout_s`` device seconds (None: until one)."""
        clock = self.ctx.board.clock
        deadline = None if timeout_s is None else self.ctx.now() + timeout_s
        while True:
            self.ctx.checkpoint()
            remaining = None if deadline is None else deadline - self.ctx.now()
            if remaining is not None and remaining <= 0:
                with contextlib.suppress(queue.Empty):
                    return self._queue.get_nowait()
                return None
            wait = WAIT_WALL_S if remaining is None else min(WAIT_WALL_S, clock.wall(remaining))
            try:
                return self._queue.get(timeout=max(wait, 0.0))
            except queue.Empty:
                continue

    def _uart(self) -> None:
        reader = FrameReader()
        with contextlib.suppress(ResetSignal):
            while not self._stop.is_set():
                data = self.ctx.uart_read(timeout_s=READ_SLICE_S)
                if data and not self._stop.is_set():
                    now = self.ctx.now()
                    for item in reader.feed(data):
                        self._queue.put(SerialInput(item, now))

    def _radio(self) -> None:
        with contextlib.suppress(ResetSignal):
            while not self._stop.is_set():
                packet = self.ctx.radio_receive(timeout_s=READ_SLICE_S)
                if packet is not None and not self._stop.is_set():
                    self._queue.put(RadioInput(packet, self.ctx.now()))


class TimerAction(Enum):
    CORE_TIMEOUT = "core timeout"  # the DFU core's own timer (rampdown)
    ABORT = "abort"  # no START / no DATA in time
    GO_TO_APP = "go to app"  # bootloader: nothing happened, start the application


class MeshNode(Firmware):
    """Base of the mesh bootloader and the DFU example: the loop, the timer, the slots."""

    timing: TxTiming  # set by the subclass: whose repeat schedule the slots follow

    def __init__(self, ctx: FirmwareContext) -> None:
        super().__init__(ctx)
        self.tx = TxSlots(self.timing, random.Random(f"{ctx.board.name}/{ctx.board.snr}"))
        self.inbox = Inbox(ctx)
        self._timer: tuple[float, TimerAction] | None = None
        self._deferred: list[Callable[[], None]] = []

    # --- to be provided by the firmware -----------------------------------------------------------

    @abstractmethod
    def on_serial(self, item: Frame) -> None:
        """Handle one input; the subclass is the firmware."""

    @abstractmethod
    def on_radio(self, packet: bytes, at: float) -> None:
        """Handle one input; the subclass is the firmware."""

    @abstractmethod
    def on_timer(self, action: TimerAction) -> None:
        """Handle one input; the subclass is the firmware."""

    # --- services ---------------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        self.ctx.uart_write(frame(opcode, payload))

    def send_dfu_packet(self, packet: bytes) -> None:
        """A DFU packet to the host (opcode 0x78, the same as the host sends them with)."""
        self.send_frame(Opcode.DFU_DATA, packet)

    def set_timer(self, delay_s: float, action: TimerAction) -> None:
        """The one state timer: setting it replaces whatever it was going to do."""
        self._timer = (self.ctx.now() + delay_s, action)

    def stop_timer(self) -> None:
        self._timer = None

    def log(self, message: str) -> None:
        self.ctx.log(message)

    def log_tx_summary(self) -> None:
        """What the TX slots did, so a too-fast host's cost shows in the board log."""
        s = self.tx.stats
        self.ctx.log(
            f"radio TX: {s.transmits} sent, {s.skipped} skipped as redundant, {s.killed} cut "
            f"short by a newer packet in the slot pool ({s.dropped} of them never sent)"
        )

    def defer(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the current input is handled (never inside the DFU core)."""
        self._deferred.append(action)

    # --- the loop ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """Handle inputs, the timer and the TX slots until reset or jump."""
        self.inbox.start()
        try:
            while True:
                self._run_deferred()
                now = self.ctx.now()
                if self._timer is not None and self._timer[0] <= now:
                    action = self._timer[1]
                    self._timer = None
                    self.on_timer(action)
                    continue
                for packet in self.tx.due(now):
                    self.ctx.radio_send(packet)
                deadlines = [
                    d for d in (self.tx.next_time(), self._timer_deadline()) if d is not None
                ]
                wait = max(0.0, min(deadlines) - now) if deadlines else None
                item = self.inbox.get(wait)
                if isinstance(item, SerialInput):
                    self.on_serial(item.frame)
                elif isinstance(item, RadioInput):
                    self.on_radio(item.packet, item.at)
        finally:
            self.inbox.stop()

    def _timer_deadline(self) -> float | None:
        return self._timer[0] if self._timer is not None else None

    def _run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()
