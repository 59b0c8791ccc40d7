"""Fault injection on a virtual board, from the host: power cuts at a chosen flash operation.

MCUboot's own simulator proves its swap is power-fail safe by interrupting the Nth flash
operation of an upgrade, for every N (spec §7). The virtual farm offers the same lever through
its debug port, so a test can count the operations of a swap, cut the power before any one of
them, switch the board on again and check what it boots:

- ``cut_power_after(n)``: the n-th code flash write or erase from now is NOT performed; the
  board loses power at that instant (firmware stopped, RAM, GPREGRET and GPIO cleared). Every
  NVMC operation counts, the firmware's and a debugger's alike: a probe write while a cut is
  armed can be the one that trips it (the probe then gets an error, as when a target browns
  out under a J-Link).
- ``cut_power_after(n, torn_seed=s)``: the power fails *during* the n-th operation instead:
  its page is left torn, partly written or partly erased as seed ``s`` picks (dfuhil.sim.torn),
  which MCUboot's own simulator never does. ``last_tear()`` says what it left.
- ``cut_power_now()``: the supply drops immediately.
- ``power_on()``: like flipping the power switch back (the board boots from reset).
- ``powered()``: whether it has power now.
- ``flash_ops()`` / ``reset_stats()``: code flash operations counted since the last reset of
  the board's statistics, the same count the cut uses.

A reset in the middle of an SMP upload needs nothing here: the probe's pin reset does that.

The serial line has levers of its own (dfuhil.sim.uart_faults):

- ``set_line_faults(LineFaults(...))``: bit flips, dropped, duplicated and garbage bytes,
  stalls, a vanishing port, seeded; ``set_line_faults(None)`` switches them off.
- ``line_faults()``: the settings and what they did per direction (``to_board``, ``to_host``).
- ``vanish_port(down_s)``: the port goes away now and a new one (new path) appears later.

The J-Link's own USB link has one (a probe unplugged in the middle of programming):

- ``lose_probe_after(n, seed=s)``: the n-th flash write or erase asked *through the probe*
  from now is the one in flight when the link drops; seed ``s`` decides whether the target
  still finished it. The host gets the DLL's error, then the probe is gone (not enumerated,
  every request refused) until ``replug_probe()``. ``lose_probe_now()`` drops it at once;
  ``probe_link()`` says what the lever did (lost, losses, flash operations, last in flight).

The Bluetooth LE link has one (a central that walks away):

- ``drop_ble()``: the board ends its connection now (the central sees a disconnection);
  ``drop_ble(after_bytes=n)``: once n more ATT bytes were written to it, mid-upload.

- ``halt_cpu()``: the board stops answering (its core halted, as a hung firmware would).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import asdict
from types import TracebackType
from typing import Any

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.model import LineFaults
from dfuhil.sim.uart_faults import checked_line_faults
from dfuhil.sim.wire import connect_debug_port, debug_port_address, recv_message, send_message

_REMEDY = "check that the virtual farm (`dfuhil sim serve`) is running and serves this board"


class FaultInjector:
    """Power and flash-counter control of one virtual board (probe serial ``snr``)."""

    def __init__(self, endpoint: str, snr: int) -> None:
        try:
            self._address = debug_port_address(endpoint)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self.endpoint = endpoint
        self.snr = snr
        self._path = endpoint.removeprefix("unix:").removeprefix("tcp:")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- the levers ------------------------------------------------------------------------------

    def cut_power_after(self, n: int, *, torn_seed: int | None = None) -> None:
        """Cut the power instead of performing the ``n``-th flash write/erase from now, or,
        with ``torn_seed``, in the middle of it."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"cut_power_after: n counts flash operations from 1, not {n!r}")
        if torn_seed is None:
            self._call("power_cut", after_ops=n)
            return
        if isinstance(torn_seed, bool) or not isinstance(torn_seed, int):
            raise InputError(f"cut_power_after: torn_seed must be an int, not {torn_seed!r}")
        self._call("power_cut", after_ops=n, torn=True, seed=torn_seed)

    def last_tear(self) -> str | None:
        """What the last torn cut left on the page (None if no cut tore anything yet)."""
        tear = self._call("last_tear")
        return None if tear is None else str(tear)

    def cut_power_now(self) -> None:
        self._call("power_cut", now=True)

    def power_on(self) -> None:
        self._call("power_on")

    def powered(self) -> bool:
        """Whether the board has power now (the virtual PDU's outlet state reads this)."""
        return bool(self._call("status")["powered"])

    def flash_ops(self) -> int:
        """Code flash writes and erases since the last :meth:`reset_stats`."""
        return int(self._call("flash_ops"))

    def reset_stats(self) -> None:
        self._call("reset_stats")

    def set_line_faults(self, faults: LineFaults | None) -> dict[str, Any]:
        """Fault the board's serial line from now on (None: a clean line again)."""
        settings = asdict(faults) if faults is not None else {}
        try:
            checked_line_faults(settings)
        except ValueError as exc:
            raise InputError(f"virtual board {self.snr}: {exc}") from None
        return dict(self._call("line_faults", faults=settings))

    def line_faults(self) -> dict[str, Any]:
        """Settings, counters per direction, the port's current path and whether it is there."""
        return dict(self._call("line_faults"))

    def vanish_port(self, down_s: float = 1.0) -> None:
        """The serial port goes away now; a new one appears ``down_s`` device seconds later."""
        self._call("uart_vanish", down_s=down_s)

    def drop_ble(self, after_bytes: int | None = None) -> dict[str, Any]:
        """Drop the board's BLE connection now, or after ``after_bytes`` more bytes written."""
        if after_bytes is None:
            return dict(self._call("ble_drop"))
        return dict(self._call("ble_drop", after_bytes=after_bytes))

    def lose_probe_after(self, n: int, *, seed: int = 0) -> dict[str, Any]:
        """Drop the probe's USB link during the ``n``-th probe flash operation from now."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"lose_probe_after: n counts flash operations from 1, not {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"lose_probe_after: seed must be an int, not {seed!r}")
        return dict(self._call("probe_loss", after_ops=n, seed=seed))

    def lose_probe_now(self) -> dict[str, Any]:
        return dict(self._call("probe_loss", now=True))

    def replug_probe(self) -> dict[str, Any]:
        """The probe is back (and any armed loss disarmed)."""
        return dict(self._call("probe_loss", back=True))

    def probe_link(self) -> dict[str, Any]:
        return dict(self._call("probe_loss"))

    def halt_cpu(self) -> None:
        """The board stops answering: its core halts (firmware stopped, UART silent)."""
        self._call("halt")

    # --- transport -------------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = connect_debug_port(self._address)
            except OSError as exc:
                raise InfrastructureError(
                    f"virtual farm debug port {self._path} not reachable: {exc.strerror or exc}",
                    _REMEDY,
                ) from None
            self._sock = sock
        return self._sock

    def _call(self, method: str, **args: Any) -> Any:
        with self._lock:
            sock = self._connect()
            try:
                send_message(sock, {"method": method, "snr": self.snr, "args": args})
                answer = recv_message(sock)
            except OSError as exc:
                answer, reason = None, exc.strerror
            else:
                reason = "connection closed"
            if answer is None:
                self.close()
                raise InfrastructureError(
                    f"virtual farm debug port {self._path}: {reason}", _REMEDY
                )
        if "err" in answer:
            raise InfrastructureError(
                f"virtual board {self.snr}: {method} refused: {answer.get('msg', '')}", _REMEDY
            )
        return answer["ok"]
