"""The virtual farm's debug port: a loopback socket standing in for SWD through a J-Link.

It listens on a Unix socket (the local host's probes) and on TCP 127.0.0.1 (an ephemeral port,
``debug_tcp`` in the state file): what a lab exporter publishes as the board's probe endpoint,
the way a J-Link Remote Server publishes a real probe. Both carry the same frames, so power cuts
and probe losses work for a remote host exactly as for a local one.

Requests and answers are length-prefixed JSON (4-byte big-endian length), bytes as base64. One
socket serves every virtual board of the farm, addressed by probe serial number, exactly as one
J-Link DLL enumerates every probe on a host. The client is ``dfuhil.sim.lowlevel``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dfuhil.sim.board import AccessFault, VirtualBoard
from dfuhil.sim.clock import PowerLoss
from dfuhil.sim.flash import FlashFault
from dfuhil.sim.uart_faults import checked_line_faults
from dfuhil.sim.wire import (
    EMULATOR_NOT_CONNECTED,
    INVALID_OPERATION,
    INVALID_PARAMETER,
    JLINKARM_DLL_ERROR,
    NVMC_ERROR,
    PortError,
    decode_bytes,
    encode_bytes,
    recv_message,
    send_message,
)

log = logging.getLogger(__name__)


Handler = Callable[[VirtualBoard, dict[str, Any]], Any]


# Bytes a debugger read through the port, per board since its last reset_stats: what a probe
# backend costs in SWD traffic (bench/provision.py compares backends by it).
_bytes_read: dict[str, int] = {}


def _read(board: VirtualBoard, a: dict[str, Any]) -> Any:
    data = board.read(int(a["address"]), int(a["length"]))
    _bytes_read[board.name] = _bytes_read.get(board.name, 0) + len(data)
    return encode_bytes(data)


def _stats(board: VirtualBoard, _a: dict[str, Any]) -> Any:
    return {**board.stats(), "swd_bytes_read": _bytes_read.get(board.name, 0)}


def _reset_stats(board: VirtualBoard, _a: dict[str, Any]) -> Any:
    _bytes_read.pop(board.name, None)
    board.reset_stats()


def _write(board: VirtualBoard, a: dict[str, Any]) -> Any:
    board.write(int(a["address"]), decode_bytes(a["data"]), bool(a["control"]))


def _reset(halt: bool, reason: str) -> Handler:
    def handler(board: VirtualBoard, _a: dict[str, Any]) -> Any:
        if not board.powered:
            raise PortError(
                INVALID_OPERATION, f"{board.name} has no power (power cut); power_on first"
            )
        board.cpu.reset(halt=halt, reason=reason)

    return handler


def _radio(board: VirtualBoard, a: dict[str, Any]) -> Any:
    """The farm's radio medium, reached through any of its boards: set loss, read counters."""
    medium = board.radio.medium
    loss = a.get("loss")
    if loss is not None:
        if isinstance(loss, bool) or not isinstance(loss, int | float) or not 0 <= loss <= 1:
            raise PortError(INVALID_PARAMETER, f"radio loss must be in [0, 1], not {loss!r}")
        medium.set_loss(float(loss))
    return medium.describe()


def _power_cut(board: VirtualBoard, a: dict[str, Any]) -> Any:
    """Fault injection: cut now, or arm a cut before the Nth code flash operation from now;
    with ``torn`` (and an int ``seed``), the cut lands inside that operation instead."""
    torn = a.get("torn", False)
    if not isinstance(torn, bool):
        raise PortError(INVALID_PARAMETER, f"power_cut torn must be true or false, not {torn!r}")
    if a.get("now"):
        if torn:
            raise PortError(
                INVALID_PARAMETER,
                "power_cut now lands between flash operations; a torn cut needs after_ops",
            )
        board.cut_power("power cut by the host")
        return None
    after = a.get("after_ops")
    if isinstance(after, bool) or not isinstance(after, int) or after < 1:
        raise PortError(
            INVALID_PARAMETER, f"power_cut after_ops must be an int >= 1, not {after!r}"
        )
    seed = a.get("seed", 0)
    if torn and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise PortError(INVALID_PARAMETER, f"power_cut seed must be an int, not {seed!r}")
    board.arm_power_cut(after, seed if torn else None)
    return None


def _last_tear(board: VirtualBoard, _a: dict[str, Any]) -> Any:
    """What the last torn cut left (None if none yet): for campaign reports."""
    tear = board.flash.last_tear
    return None if tear is None else tear.describe()


def _line_faults(board: VirtualBoard, a: dict[str, Any]) -> Any:
    """Set (``faults``: the boards.yaml keys; ``{}`` switches them off) or just read the faults
    on the board's serial line, with what they did so far."""
    settings = a.get("faults")
    if settings is not None:
        try:
            board.uart.faults.set(checked_line_faults(settings))
        except ValueError as exc:
            raise PortError(INVALID_PARAMETER, str(exc)) from None
    return {
        **board.uart.faults.describe(),
        "serial": board.uart.path,
        "present": board.uart.present,
        "vanishes": board.uart.vanishes,
    }


def _uart_vanish(board: VirtualBoard, a: dict[str, Any]) -> Any:
    """The serial port vanishes now (USB re-enumeration); a new one appears after ``down_s``."""
    down = a.get("down_s", 1.0)
    if isinstance(down, bool) or not isinstance(down, int | float) or not 0 <= down <= 60:
        raise PortError(INVALID_PARAMETER, f"down_s must be in [0, 60] seconds, not {down!r}")
    board.uart.vanish(float(down))
    return None


def _ble_drop(board: VirtualBoard, a: dict[str, Any]) -> Any:
    """Drop the board's Bluetooth LE connection now, or once ``after_bytes`` more ATT bytes
    were written to it (a central that walks out of range mid-upload)."""
    if board.ble is None:
        raise PortError(INVALID_OPERATION, f"{board.name} has no Bluetooth LE (boards.yaml ble)")
    after = a.get("after_bytes")
    if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 1):
        raise PortError(
            INVALID_PARAMETER, f"ble_drop after_bytes must be an int >= 1, not {after!r}"
        )
    return {"dropped": board.ble.drop(after), "connections": board.ble.connections_made}


HANDLERS: dict[str, Handler] = {
    "read": _read,
    "write": _write,
    "erase_all": lambda b, a: b.erase_all(),
    "erase_page": lambda b, a: b.erase_page(int(a["address"])),
    "erase_uicr": lambda b, a: b.erase_uicr(),
    # A debugger's system reset leaves the core halted until go(); a pin reset just runs.
    "sys_reset": _reset(True, "system reset by debugger"),
    "debug_reset": _reset(False, "debug reset"),
    "hard_reset": _reset(False, "hard reset"),
    "pin_reset": _reset(False, "pin reset"),
    "halt": lambda b, a: b.cpu.halt(),
    "go": lambda b, a: b.cpu.go(),
    "is_halted": lambda b, a: b.cpu.halted,
    "device": lambda b, a: {
        "family": b.chip.family,
        "device_version": b.chip.device_version,
        "chip": b.chip.name,
        "serial": b.uart.path,
        "smp_udp": b.udp.address,
    },
    "status": lambda b, a: b.status(),
    "stats": _stats,
    "reset_stats": _reset_stats,
    "radio": _radio,
    "power_cut": _power_cut,
    "power_on": lambda b, a: b.power_on(),
    "flash_ops": lambda b, a: b.flash.stats.operations,
    "last_tear": _last_tear,
    "line_faults": _line_faults,
    "uart_vanish": _uart_vanish,
    "ble_drop": _ble_drop,
}


# What goes through the J-Link (a lost probe answers none of it); the rest is the farm's own.
PROBE_METHODS = frozenset(
    {"read", "write", "erase_all", "erase_page", "erase_uicr", "sys_reset", "debug_reset"}
    | {"hard_reset", "pin_reset", "halt", "go", "is_halted", "device"}
)
PROBE_FLASH_METHODS = frozenset({"write", "erase_all", "erase_page", "erase_uicr"})


@dataclass
class ProbeLink:
    """One virtual J-Link's USB link: armed to drop after N more flash operations, or lost.

    The operation that trips the loss was in flight when the cable went: a seeded coin says
    whether the target finished it (the NVMC completes a started word write or page erase on
    its own) or never got it. Either way the host sees the DLL's error, then no probe at all.
    """

    snr: int
    lose_after: int | None = None
    seed: int = 0
    lost: bool = False
    losses: int = 0
    flash_ops: int = 0  # flash operations asked through this probe since the farm started
    last_in_flight: str | None = None  # "done" or "not done", for the test's own account

    def describe(self) -> dict[str, Any]:
        return {
            "lose_after": self.lose_after,
            "lost": self.lost,
            "losses": self.losses,
            "flash_ops": self.flash_ops,
            "last_in_flight": self.last_in_flight,
        }


def _probe_loss(link: ProbeLink, a: dict[str, Any]) -> dict[str, Any]:
    """Arm (``after_ops``, ``seed``), unplug now (``now``) or replug (``back``) a probe."""
    if a.get("back"):
        link.lost, link.lose_after = False, None
    elif a.get("now"):
        link.lost, link.lose_after = True, None
        link.losses += 1
    elif "after_ops" in a:
        after, seed = a["after_ops"], a.get("seed", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 1:
            raise PortError(
                INVALID_PARAMETER, f"probe_loss after_ops must be an int >= 1, not {after!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PortError(INVALID_PARAMETER, f"probe_loss seed must be an int, not {seed!r}")
        link.lose_after, link.seed = after, seed
    return link.describe()


class DebugPortServer:
    """Serves the boards of one virtual farm on a Unix socket and on TCP loopback."""

    def __init__(
        self,
        path: str,
        boards: dict[int, VirtualBoard],
        time_scale: float,
        *,
        tcp_host: str = "127.0.0.1",
    ) -> None:
        self.path = path
        self.boards = boards
        self.time_scale = time_scale
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(16)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((tcp_host, 0))
        self._tcp.listen(16)
        self._stop = threading.Event()
        self._links = {snr: ProbeLink(snr) for snr in boards}
        self._links_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._accept_loop, args=(sock,), name=name, daemon=True)
            for sock, name in ((self._sock, "debugport"), (self._tcp, "debugport-tcp"))
        ]

    @property
    def endpoint(self) -> str:
        return f"unix:{self.path}"

    @property
    def tcp_endpoint(self) -> str:
        """``HOST:PORT`` of the TCP listener (what a lab exporter publishes as ``probe``)."""
        host, port = self._tcp.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for sock in (self._sock, self._tcp):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if conn.family == socket.AF_INET:  # one small frame per request: no Nagle delay
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    request = recv_message(conn)
                except (OSError, ValueError, PortError):
                    return
                if request is None:
                    return
                try:
                    send_message(conn, self._answer(request))
                except OSError:
                    return

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        method = str(request.get("method", ""))
        args: dict[str, Any] = request.get("args", {})
        try:
            if method == "enum":
                return {"ok": sorted(s for s in self.boards if not self._links[s].lost)}
            if method == "time_scale":
                return {"ok": self.time_scale}
            handler = HANDLERS.get(method)
            if handler is None and method != "probe_loss":
                raise PortError(INVALID_OPERATION, f"debug port has no method '{method}'")
            snr = int(request.get("snr", -1))
            board = self.boards.get(snr)
            if board is None:
                raise PortError(
                    EMULATOR_NOT_CONNECTED,
                    f"no virtual probe with serial number {request.get('snr')}",
                )
            if handler is None:  # probe_loss: the lever on the J-Link, not on the board
                with self._links_lock:
                    return {"ok": _probe_loss(self._links[snr], args)}
            if method in PROBE_METHODS:
                serve = handler
                self._through_probe(snr, method, lambda: serve(board, args))
            try:
                return {"ok": handler(board, args)}
            except PowerLoss as loss:  # a debugger's flash operation hit an armed power cut
                raise PortError(JLINKARM_DLL_ERROR, f"{loss}: the target lost power") from None
        except PortError as exc:
            return {"err": exc.code, "msg": str(exc)}
        except FlashFault as exc:
            return {"err": INVALID_PARAMETER, "msg": str(exc)}
        except AccessFault as exc:
            code = NVMC_ERROR if exc.nvmc else JLINKARM_DLL_ERROR
            return {"err": code, "msg": str(exc)}
        except Exception as exc:  # never kill the farm for one bad request
            log.exception("debug port request %s failed", method)
            return {"err": JLINKARM_DLL_ERROR, "msg": f"{type(exc).__name__}: {exc}"}

    def _through_probe(self, snr: int, method: str, perform: Callable[[], Any]) -> None:
        """Refuse a request the probe cannot carry; trip an armed loss on its flash operation
        (performing the operation in flight or not, as the seeded coin says)."""
        with self._links_lock:
            link = self._links[snr]
            if link.lost:
                raise PortError(
                    EMULATOR_NOT_CONNECTED, f"J-Link {snr} is not connected (USB link lost)"
                )
            if method not in PROBE_FLASH_METHODS:
                return
            link.flash_ops += 1
            if link.lose_after is None:
                return
            link.lose_after -= 1
            if link.lose_after > 0:
                return
            done = random.Random(f"{link.seed}/{link.losses}").random() < 0.5
            link.lose_after, link.lost = None, True
            link.losses += 1
            link.last_in_flight = "done" if done else "not done"
        if done:
            with contextlib.suppress(Exception):  # the host never hears how it ended
                perform()
        raise PortError(
            JLINKARM_DLL_ERROR,
            f"J-Link {snr}: USB link lost during {method} (probe unplugged or hub reset)",
        )
