"""Where the boards of a farm are right now: probes and serial ports, real or virtual.

The farm file says what a board is; the rig adds where it is reachable this run (a J-Link on USB
or over IP, or a board of a running virtual farm) and which tool drives its probe (boards.yaml's
probe backend; for virtual boards ``DFUHIL_PROBE=nrfutil`` drives them through the virtual
farm's own ``nrfutil`` executable instead of pynrfjprog's API). Nothing above this layer asks
which it is.

A board with a ``place`` lives on another lab host: it is reachable only while its place is
leased, and the lease tells the rig its endpoints (``attach_remote``): the console over RFC 2217,
the probe through a J-Link Remote Server (or a virtual farm's TCP debug port), SMP over UDP.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfuhil.errors import InfrastructureError, InputError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.remote import RemoteEndpoints, split_host_port
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
        self._remote: dict[str, RemoteEndpoints] = {}

    # --- boards on other lab hosts ------------------------------------------------------------

    def attach_remote(self, name: str, endpoints: RemoteEndpoints) -> None:
        """The board's place is leased: reach it through these endpoints until detached."""
        board = self.farm.board(name)
        if board.place is None:
            raise InputError(
                f"board {name} has no place in {self.farm.path}: it is local, nothing to attach"
            )
        self._remote[name] = endpoints

    def detach_remote(self, name: str) -> None:
        """The lease ended: the board is unreachable again. Safe to call twice."""
        self._remote.pop(name, None)

    def remote(self, board: BoardSpec) -> RemoteEndpoints | None:
        """The endpoints of a board on another lab host (None for a local board); a board
        with a place whose place is not leased is an InfrastructureError."""
        if board.place is None:
            return None
        endpoints = self._remote.get(board.name)
        if endpoints is None:
            host = f" on lab host {board.lab_host}" if board.lab_host else ""
            raise InfrastructureError(
                f"the board lives in labgrid place {board.place}{host}, which is not leased "
                "by this run",
                "reach it through the pytest board fixtures, which lease its place and attach "
                f"its endpoints; `labgrid-client -p {board.place} show` says who holds it",
                board=board.name,
            )
        return endpoints

    def _virtual(self, board: BoardSpec) -> SimState:
        if self.sim is None:
            raise InfrastructureError(
                "the board is virtual but no virtual farm is running",
                f"start one: dfuhil sim serve --boards {self.farm.path} (pytest starts its own)",
                board=board.name,
            )
        return self.sim

    def time_scale(self, board: BoardSpec) -> float:
        """Wall seconds per device second; a remote virtual board runs at boards.yaml's
        virtual_farm.time_scale (its farm runs on the lab host, no local state says more)."""
        if not board.is_virtual:
            return 1.0
        if board.place is not None:
            return self.farm.time_scale
        return self._virtual(board).time_scale

    def probe(self, board: BoardSpec) -> Probe:
        """An unopened probe session for the board (``with rig.probe(b) as probe: ...``)."""
        remote = self.remote(board)
        if remote is not None:
            return self._remote_probe(board, remote)
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
        return self._jlink_probe(board, board.probe.ip, board.probe.port)

    def _jlink_probe(self, board: BoardSpec, ip: str | None, port: int | None) -> Probe:
        """A J-Link on USB (no ``ip``) or behind a J-Link Remote Server, driven by the board's
        probe tool."""
        target = ProbeTarget(
            board=board.name,
            chip=board.chip,
            snr=board.probe.snr,
            ip=ip,
            speed_khz=board.probe.speed_khz,
            port=port,
            allow_recover=board.probe.allow_recover,
        )
        if board.probe.tool == "nrfutil":
            return NrfutilProbe(target, self.nrfutil)
        return Probe(target, jlink_factory)

    def _remote_probe(self, board: BoardSpec, remote: RemoteEndpoints) -> Probe:
        """A virtual board's probe goes to its farm's TCP debug port (same frames, same faults);
        a real one's to the J-Link Remote Server the lab host runs."""
        if board.is_virtual:
            target = ProbeTarget(
                board=board.name,
                chip=board.chip,
                snr=board.probe.snr,
                allow_recover=board.probe.allow_recover,
            )
            factory = virtual_factory(f"tcp:{remote.probe}")
            return Probe(target, factory, time_scale=self.time_scale(board))
        return self._jlink_probe(board, *split_host_port(remote.probe))

    def debug_endpoint(self, board: BoardSpec) -> str:
        """A virtual board's debug port (power cuts, line faults): the local farm's socket, or
        the TCP debug port its lab host publishes while the board's place is leased."""
        remote = self.remote(board)
        if remote is not None:
            return f"tcp:{remote.probe}"
        return self._virtual(board).board(board.name).endpoint

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
        remote = self.remote(board)
        if remote is not None:
            return remote.serial_url
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
        remote = self.remote(board)
        if remote is not None:
            if remote.smp_udp is None:
                raise InfrastructureError(
                    f"place {remote.place} on lab host {remote.host} publishes no smp-udp "
                    "service, but boards.yaml gives the board smp_udp",
                    "re-export the lab host's boards (`dfuhil farm export`) and restart its "
                    "labgrid-exporter",
                    board=board.name,
                )
            return remote.smp_udp
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
        remote = self.remote(board)
        return Console(
            self.serial_url(board),
            baud=board.serial.baud,
            rtscts=board.serial.rtscts,
            log_path=log_dir / f"{board.name}.log" if log_dir is not None else None,
            name=board.name,
            open_timeout=open_timeout,
            protocol=console_protocol(board),
            where=remote.where if remote is not None else "",
        )


def console_protocol(board: BoardSpec) -> str:
    """What the board's UART speaks once provisioned: its application's protocol."""
    app = board.firmware.application if board.firmware else None
    return app.protocol if app is not None else "text"
