"""``dfuhil sim serve``: host every virtual board of a farm in one process until told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path

from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.formats.ble_link import LinkConfig
from dfuhil.formats.smp_uart import Delivery
from dfuhil.sim.ble_radio import BleRadio
from dfuhil.sim.board import BoardWiring, VirtualBoard
from dfuhil.sim.clock import VirtualClock
from dfuhil.sim.debugport import DebugPortServer
from dfuhil.sim.radio import RadioMedium
from dfuhil.sim.state import SimState, VirtualBoardState, pid_alive


def _board_logger(name: str, log_dir: Path | None) -> logging.Logger:
    logger = logging.getLogger(f"dfuhil.sim.board.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / f"{name}.sim.log", mode="w")
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        logger.addHandler(handler)
    return logger


def _uart_delivery(spec: BoardSpec) -> Delivery:
    """How the board's UART hands bytes to its firmware: as its MCUboot app's ``smp_uart``
    says, else paced like the J-Link VCOM of a DK."""
    mcuboot = spec.mcuboot
    if mcuboot is None or mcuboot.smp_uart is None:
        return "paced"
    return mcuboot.smp_uart.delivery


class VirtualFarm:
    """The boards, their shared clock and air, and the debug port that reaches them."""

    def __init__(
        self,
        farm: Farm,
        *,
        time_scale: float | None = None,
        log_dir: Path | None = None,
        debug_host: str = "127.0.0.1",
    ):
        self.clock = VirtualClock(time_scale if time_scale is not None else farm.time_scale)
        self.radio = RadioMedium(farm.radio, self.clock)
        self.boards: dict[str, VirtualBoard] = {}
        # One Bluetooth LE link for the boards that speak SMP over it and the hosts that join.
        self.ble_radio: BleRadio | None = None
        if any(spec.ble is not None for spec in farm.virtual_boards()):
            self.ble_radio = BleRadio()
            self.ble_radio.start()
        for spec in farm.virtual_boards():
            wiring = BoardWiring(
                name=spec.name,
                snr=spec.probe.snr,
                chip=spec.chip,
                baud=spec.serial.baud,
                led_pins=spec.leds.pins,
                leds_active_low=spec.leds.active_low,
                uart_delivery=_uart_delivery(spec),
                ble_name=spec.ble.name if spec.ble is not None else None,
                ble_address=spec.ble.address if spec.ble is not None else None,
                ble_link=spec.mcuboot.ble_link if spec.mcuboot is not None else LinkConfig(),
            )
            self.boards[spec.name] = VirtualBoard(
                wiring,
                self.clock,
                _board_logger(spec.name, log_dir),
                radio=self.radio.port(spec.name),
                ble_radio=self.ble_radio,
            )
        for name, faults in farm.line_faults:
            if name in self.boards:
                self.boards[name].uart.faults.set(faults)
        # Unix socket paths are limited to ~100 bytes: keep the socket in a short temp dir.
        self._sockdir = tempfile.mkdtemp(prefix="dfuhil-")
        self.debug_port = DebugPortServer(
            os.path.join(self._sockdir, "debug.sock"),
            {b.snr: b for b in self.boards.values()},
            self.clock.time_scale,
            tcp_host=debug_host,  # loopback unless a lab host publishes it to the network
        )

    def start(self) -> None:
        self.debug_port.start()
        for board in self.boards.values():
            board.power_on()

    def stop(self) -> None:
        for board in self.boards.values():
            board.shutdown()
        self.debug_port.close()
        if self.ble_radio is not None:
            self.ble_radio.stop()
        with contextlib.suppress(OSError):
            os.rmdir(self._sockdir)

    def state(self, path: Path, boards_file: Path) -> SimState:
        return SimState(
            path=path,
            pid=os.getpid(),
            time_scale=self.clock.time_scale,
            boards_file=str(boards_file),
            ble_hci=self.ble_radio.moniker if self.ble_radio is not None else None,
            boards={
                name: VirtualBoardState(
                    name=name,
                    serial=board.uart.path,
                    snr=board.snr,
                    endpoint=self.debug_port.endpoint,
                    smp_udp=board.udp.address,
                    debug_tcp=self.debug_port.tcp_endpoint,
                )
                for name, board in self.boards.items()
            },
        )


def serve(
    farm: Farm,
    state_file: Path,
    *,
    time_scale: float | None = None,
    log_dir: Path | None = None,
    ready: threading.Event | None = None,
    watch_pid: int | None = None,
    debug_host: str = "127.0.0.1",
) -> int:
    """Run until SIGINT/SIGTERM; the state file exists exactly while the farm is up.

    With ``watch_pid`` the farm also stops when that process is gone: a test run killed with
    kill -9 never leaves its farm behind.
    """
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    virtual = VirtualFarm(farm, time_scale=time_scale, log_dir=log_dir, debug_host=debug_host)
    virtual.start()
    state = virtual.state(state_file, farm.path)
    lock = threading.Lock()

    def republish(_path: str) -> None:
        """A port re-enumerated under a new path: the state file names the new one, so a host
        that lost the old port finds the board's port again."""
        with lock:
            if not stop.is_set():
                virtual.state(state_file, farm.path).write()

    for board in virtual.boards.values():
        board.uart.on_reenumerate = republish
    try:
        state.write()
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            if watch_pid is not None and not pid_alive(watch_pid):
                break
    finally:
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()
        virtual.stop()
    return 0
