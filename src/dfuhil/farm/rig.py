"""Where the boards of a farm are right now: probes and serial ports, real or virtual.

The farm file says what a board is; the rig adds where it is reachable this run (a J-Link on USB
or over IP, or a board of a running virtual farm) and which tool drives its probe (boards.yaml's
probe backend; for virtual boards ``DFUHIL_PROBE=nrfutil`` drives them through the virtual
farm's own ``nrfutil`` executable instead of pynrfjprog's API). Nothing above this layer asks
which it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.links.console import Console
from dfuhil.links.nrfutil_cli import NrfutilCommand
from dfuhil.links.nrfutil_probe import NrfutilProbe
from dfuhil.links.probe import Probe, ProbeTarget, jlink_factory, virtual_factory
from dfuhil.sim.state import SimState

PROBE_ENV = "DFUHIL_PROBE"  # how virtual boards are driven: "pynrfjprog" (default) or "nrfutil"
VIRTUAL_TOOLS = ("pynrfjprog", "nrfutil")


class Rig:
    def __init__(
        self, farm: Farm, sim: SimState | None = None, *, virtual_tool: str | None = None
    ) -> None:
        self.farm = farm
        self.sim = sim
        tool = virtual_tool or os.environ.get(PROBE_ENV) or "pynrfjprog"
        if tool not in VIRTUAL_TOOLS:
            raise InputError(
                f"{PROBE_ENV}={tool!r}: virtual boards are driven by one of "
                f"{', '.join(VIRTUAL_TOOLS)}"
            )
        self.virtual_tool = tool
        # One nrfutil per rig, so its version is checked once and its process starts add up.
        self.nrfutil = NrfutilCommand()
        self._virtual_nrfutil: NrfutilCommand | None = None

    def _virtual(self, board: BoardSpec) -> SimState:
        if self.sim is None:
            raise InfrastructureError(
                "the board is virtual but no virtual farm is running",
                f"start one: dfuhil sim serve --boards {self.farm.path} (pytest starts its own)",
                board=board.name,
            )
        return self.sim

    def time_scale(self, board: BoardSpec) -> float:
        return self._virtual(board).time_scale if board.is_virtual else 1.0

    def probe(self, board: BoardSpec) -> Probe:
        """An unopened probe session for the board (``with rig.probe(b) as probe: ...``)."""
        if board.is_virtual:
            sim = self._virtual(board)
            state = sim.board(board.name)
            target = ProbeTarget(
                board=board.name,
                chip=board.chip,
                snr=state.snr,
                allow_recover=board.probe.allow_recover,
            )
            factory = virtual_factory(state.endpoint)
            if self.virtual_tool == "nrfutil":
                command = self.virtual_nrfutil(sim)
                return NrfutilProbe(
                    target, command, time_scale=self.time_scale(board), extras=factory
                )
            return Probe(target, factory, time_scale=self.time_scale(board))
        target = ProbeTarget(
            board=board.name,
            chip=board.chip,
            snr=board.probe.snr,
            ip=board.probe.ip,
            speed_khz=board.probe.speed_khz,
            port=board.probe.port,
            allow_recover=board.probe.allow_recover,
        )
        if board.probe.tool == "nrfutil":
            return NrfutilProbe(target, self.nrfutil)
        return Probe(target, jlink_factory)

    def nrfutil_starts(self) -> int:
        """nrfutil processes this rig has started so far (its cost; bench/provision.py)."""
        virtual = self._virtual_nrfutil.starts if self._virtual_nrfutil is not None else 0
        return self.nrfutil.starts + virtual

    def virtual_nrfutil(self, sim: SimState) -> NrfutilCommand:
        """The virtual farm's ``nrfutil``, first on PATH and bound to this farm's state file."""
        if self._virtual_nrfutil is None:
            from dfuhil.sim.nrfutil import STATE_ENV, install_shim

            bin_dir = install_shim(sim.path)
            path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
            env = {"PATH": path, STATE_ENV: str(sim.path.resolve())}
            self._virtual_nrfutil = NrfutilCommand(env=env)
        return self._virtual_nrfutil

    def serial_url(self, board: BoardSpec) -> str:
        if board.serial.is_virtual:
            return self._virtual(board).board(board.name).serial
        return board.serial.port

    def smp_udp(self, board: BoardSpec) -> str | None:
        """``host:port`` of the board's SMP UDP server, or None if the board has no UDP transport.

        A virtual board's port is assigned by the running farm (its state file); a real board's
        is the boards.yaml value.
        """
        if board.smp_udp is None:
            return None
        if not board.is_virtual:
            return board.smp_udp
        address = self._virtual(board).board(board.name).smp_udp
        if not address:
            raise InfrastructureError(
                "the running virtual farm reports no SMP UDP port for the board",
                f"restart it from this dfuhil: dfuhil sim serve --boards {self.farm.path}",
                board=board.name,
            )
        return address

    def console(
        self, board: BoardSpec, log_dir: Path | None = None, *, open_timeout: float = 0.0
    ) -> Console:
        """An unopened console; its full log goes to ``log_dir/<board>.log``."""
        return Console(
            self.serial_url(board),
            baud=board.serial.baud,
            rtscts=board.serial.rtscts,
            log_path=log_dir / f"{board.name}.log" if log_dir is not None else None,
            name=board.name,
            open_timeout=open_timeout,
            protocol=console_protocol(board),
        )


def console_protocol(board: BoardSpec) -> str:
    """What the board's UART speaks once provisioned: its application's protocol."""
    app = board.firmware.application if board.firmware else None
    return app.protocol if app is not None else "text"
