"""The labgrid exporter file of one lab host, written from boards.yaml (``dfuhil farm export``).

A lab host runs ``labgrid-exporter --name HOST FILE``; FILE publishes one resource group per
board of that host, named after the board, with the resources the rest of dfuhil looks up by
name (the conventions of issue 10, relied on by ``farm places`` and the remote links):

- ``console``: a ``RawSerialPort`` (the board's serial device, its baud). labgrid's exporter
  serves it through a ser2net process of its own as a ``NetworkSerialPort`` (RFC 2217).
- ``probe``: a ``NetworkService`` with address and port of the board's debug port on the
  network: SEGGER's J-Link Remote Server for a real board (``probe.remote`` in boards.yaml), the
  virtual farm's TCP debug port (``debug_tcp`` in its state file) for a virtual one. labgrid has
  no J-Link resource; ``NetworkService`` (address, port, username) is its resource for "a
  service at host:port" and the exporter publishes it unchanged, so nothing is invented.
- ``smp-udp``: a ``NetworkService`` for boards with SMP over UDP.
- ``ble-hci``: a ``NetworkService`` for a virtual board on the air: its farm's HCI port (bumble's
  ``tcp-client:``), so a host elsewhere joins that farm's radio.
- ``power``: a ``NetworkPowerPort`` (model, host, index) for boards with a ``power:`` switch,
  exactly as boards.yaml describes it; ``labgrid-client power`` on the place then drives it
  through labgrid's NetworkPowerDriver (dfuhil.farm.power).

Nothing here imports labgrid (it lives in its own venv): the file is plain YAML.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.model import VIRTUAL_PORT, BoardSpec, Farm, PowerSpec
from dfuhil.sim.state import SimState, load_state

CONSOLE = "console"
PROBE = "probe"
SMP_UDP = "smp-udp"
BLE_HCI = "ble-hci"  # a virtual farm's Bluetooth radio: an HCI port per host (bumble)
POWER = "power"
BY_ID = "/dev/serial/by-id/"


@dataclass(frozen=True)
class Endpoint:
    """A TCP/UDP service at ``address:port``."""

    address: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT`` (the forms boards.yaml and the farm state already validated)."""
        host, _, port = text.rpartition(":")
        return cls(host, int(port))

    def resource(self) -> dict[str, Any]:
        # username is mandatory for labgrid's NetworkService; neither service has one.
        return {"cls": "NetworkService", "address": self.address, "port": self.port, "username": ""}


@dataclass(frozen=True)
class ExportedBoard:
    """What the exporter publishes for one board."""

    name: str
    serial_port: str
    baud: int
    probe: Endpoint
    smp_udp: Endpoint | None = None
    power: PowerSpec | None = None
    ble_hci: Endpoint | None = None

    def group(self) -> dict[str, Any]:
        """The board's resource group in labgrid's exporter format."""
        group: dict[str, Any] = {
            CONSOLE: {"cls": "RawSerialPort", "port": self.serial_port, "speed": self.baud},
            PROBE: self.probe.resource(),
        }
        if self.smp_udp is not None:
            group[SMP_UDP] = self.smp_udp.resource()
        if self.ble_hci is not None:
            group[BLE_HCI] = self.ble_hci.resource()
        if self.power is not None:
            group[POWER] = {
                "cls": "NetworkPowerPort",
                "model": self.power.model,
                "host": self.power.host,
                "index": self.power.index,
            }
        return group


@dataclass(frozen=True)
class Export:
    """One lab host's exporter file, and remarks worth telling whoever installs it."""

    host: str
    boards: tuple[ExportedBoard, ...]
    notes: tuple[str, ...] = ()

    def config(self) -> dict[str, Any]:
        return {board.name: board.group() for board in self.boards}

    def yaml(self) -> str:
        out = io.StringIO()
        # labgrid renders the file as a Jinja2 template whose line statements start with "#":
        # a YAML comment must start with "##" (its line comment prefix).
        out.write(
            f"## labgrid exporter file of lab host {self.host}, written by dfuhil farm export.\n"
            f"## Run: labgrid-exporter --name {self.host} -c COORDINATOR_HOST:PORT THIS_FILE\n"
        )
        YAML().dump(self.config(), out)
        return out.getvalue()


def build_export(farm: Farm, host: str, sim_state: Path) -> Export:
    """The exporter file for the boards whose ``lab_host`` is ``host``.

    Refuses (InputError) an unknown host and real boards it cannot publish; a virtual board
    needs its farm running (InfrastructureError saying how to start it), since its pty and debug
    port exist only there.
    """
    boards = [b for b in farm.boards if b.lab_host == host]
    if not boards:
        hosts = sorted({b.lab_host for b in farm.boards if b.lab_host})
        have = (
            f"lab hosts in the file: {', '.join(hosts)}"
            if hosts
            else "no board names a lab host: add lab_host: NAME to the boards that host publishes"
        )
        raise InputError(Problem(str(farm.path), None, "lab_host", f"no board on {host!r}; {have}"))
    problems = [p for b in boards if not b.is_virtual for p in _real_problems(farm, b)]
    if problems:
        raise InputError(problems)
    state = load_state(sim_state) if any(b.is_virtual for b in boards) else None
    exported = tuple(_virtual(b, state) if state and b.is_virtual else _real(b) for b in boards)
    return Export(host, exported, tuple(note for b in boards for note in _notes(b)))


def _notes(board: BoardSpec) -> list[str]:
    """What is exported but worth a second look."""
    notes = []
    if not board.is_virtual and not board.serial.port.startswith(BY_ID):
        notes.append(
            f"{board.name}: {board.serial.port} may name another board after a replug; prefer "
            f"its {BY_ID}... path"
        )
    if board.serial.rtscts:
        notes.append(
            f"{board.name}: labgrid's ser2net opens the port without RTS/CTS; the client turns "
            "it on over RFC 2217 (pyserial rtscts=True)"
        )
    return notes


def _real_problems(farm: Farm, board: BoardSpec) -> list[Problem]:
    """Why a bench board cannot be exported (empty: it can)."""

    def problem(field: str, message: str) -> Problem:
        return Problem(str(farm.path), board.line, f"boards.{board.name}.{field}", message)

    found = []
    if not board.serial.port.startswith("/dev/"):
        found.append(
            problem(
                "serial.port",
                f"{board.serial.port!r} is no serial device of the lab host; an exporter "
                f"publishes local ports: give the board's {BY_ID}... path on {board.lab_host}",
            )
        )
    if board.probe.remote is None:
        found.append(
            problem(
                "probe.remote",
                "no J-Link Remote Server: run JLinkRemoteServer on the lab host for this probe "
                "and write probe: {remote: LABHOST:19020} (the port it listens on)",
            )
        )
    if board.smp_udp == VIRTUAL_PORT:
        found.append(problem("smp_udp", "'virtual' is for virtual boards; write host:port"))
    return found


def _real(board: BoardSpec) -> ExportedBoard:
    assert board.probe.remote is not None  # _real_problems refused it
    return ExportedBoard(
        name=board.name,
        serial_port=board.serial.port,
        baud=board.serial.baud,
        probe=Endpoint.parse(board.probe.remote),
        smp_udp=Endpoint.parse(board.smp_udp) if board.smp_udp else None,
        power=board.power,
    )


def _virtual(board: BoardSpec, state: SimState) -> ExportedBoard:
    entry = state.board(board.name)  # InfrastructureError naming the farm's boards
    restart = (
        f"restart the farm with a dfuhil whose farm serves TCP debug ports: dfuhil sim serve "
        f"--boards {state.boards_file} --state-file {state.path}"
    )
    if entry.debug_tcp is None:
        raise InfrastructureError(
            f"the virtual farm ({state.path}) publishes no TCP debug port, so the exporter has "
            "no probe endpoint to publish",
            restart,
            board=board.name,
        )
    if board.smp_udp is not None and entry.smp_udp is None:
        raise InfrastructureError(
            f"boards.yaml gives it smp_udp but the virtual farm ({state.path}) serves none",
            restart,
            board=board.name,
        )
    return ExportedBoard(
        name=board.name,
        serial_port=entry.serial,
        baud=board.serial.baud,
        probe=Endpoint.parse(entry.debug_tcp),
        smp_udp=Endpoint.parse(entry.smp_udp) if entry.smp_udp else None,
        power=board.power,
        ble_hci=_ble_hci(board, state),
    )


def _ble_hci(board: BoardSpec, state: SimState) -> Endpoint | None:
    """The farm's radio for a board on the air: its HCI port (``tcp-client:HOST:PORT``)."""
    if board.ble is None:
        return None
    host_port = (state.ble_hci or "").removeprefix("tcp-client:")
    if not state.ble_hci or host_port == state.ble_hci:
        raise InfrastructureError(
            f"boards.yaml puts the board on the air (ble) but the virtual farm ({state.path}) "
            f"publishes no HCI port (ble_hci: {state.ble_hci!r})",
            f"restart it from this dfuhil: dfuhil sim serve --boards {state.boards_file} "
            f"--state-file {state.path}",
            board=board.name,
        )
    return Endpoint.parse(host_port)
