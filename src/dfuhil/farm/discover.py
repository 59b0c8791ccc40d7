"""What is attached to this host, and how it differs from boards.yaml.

Probes are found by ``nrfutil device list`` (plus ``device-info`` for each, for the chip), by
pynrfjprog (``enum_emu_snr``/``enum_emu_com_ports``, where SEGGER's library is installed) and
by a running virtual farm (its state file). :func:`reconcile` compares them with the farm file:
boards whose probe is missing, probes no board describes, a chip that is not the one written,
a serial port that moved, a serial number seen twice (two hosts sharing one J-Link). A nightly
job runs ``dfuhil boards discover`` first and refuses to start on a miswired rig.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dfuhil.errors import DfuhilError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.formats.chips import CHIPS, Chip
from dfuhil.links.nrfutil_cli import NrfutilCommand
from dfuhil.sim.state import SimState


@dataclass(frozen=True)
class Attached:
    """One probe this host sees; ``device_version`` as Nordic's tools spell it, if known."""

    snr: int
    source: str  # "nrfutil", "pynrfjprog" or "virtual"
    ports: tuple[str, ...]
    device_version: str | None

    @property
    def chip(self) -> Chip | None:
        """The catalogue chip the probe's device version names, if any."""
        if self.device_version is None:
            return None
        return chip_of(self.device_version)


@dataclass(frozen=True)
class Drift:
    """One way the rig differs from the farm file."""

    kind: str  # missing, undescribed, wrong-chip, port-moved, attached-twice
    snr: int
    board: str | None
    message: str

    def __str__(self) -> str:
        who = f"board {self.board}" if self.board else f"probe {self.snr}"
        return f"{self.kind}: {who}: {self.message}"


def chip_of(device_version: str) -> Chip | None:
    """``NRF52832_xxAA_REV2`` -> nRF52832_xxAA."""
    stem = device_version.upper().split("_REV")[0]
    return next(
        (c for c in CHIPS.values() if c.device_version.upper().split("_REV")[0] == stem), None
    )


# --- sources -----------------------------------------------------------------------------------


def from_nrfutil(command: NrfutilCommand) -> list[Attached]:
    """J-Links as ``nrfutil device list`` sees them, each asked for its chip."""
    command.check_version()
    output = command.run(["list"])
    devices = [d for t in output.tasks for d in t.data.get("devices", [])]
    found = []
    for device in devices:
        if not device.get("traits", {}).get("jlink"):
            continue
        snr = int(str(device["serialNumber"]))
        ports = tuple(
            str(p.get("path") or p.get("comName"))
            for p in device.get("serialPorts", [])
            if p.get("path") or p.get("comName")
        )
        info = command.run(["device-info", "--serial-number", str(snr)])
        jlink: dict[str, object] = next(
            (t.data.get("deviceInfo", {}).get("jlink", {}) for t in info.tasks if t.data), {}
        )
        version = jlink.get("deviceVersion")
        found.append(Attached(snr, "nrfutil", ports, str(version) if version else None))
    return found


def from_pynrfjprog() -> tuple[list[Attached], str | None]:
    """J-Links through pynrfjprog, or why it cannot look (no SEGGER library on this host)."""
    try:
        from pynrfjprog import LowLevel
        from pynrfjprog.APIError import APIError
    except ImportError as exc:
        return [], f"pynrfjprog is not installed ({exc})"
    found = []
    try:
        with LowLevel.API() as api:
            for snr in api.enum_emu_snr() or []:
                ports = tuple(p.path for p in api.enum_emu_com_ports(snr))
                api.connect_to_emu_with_snr(snr)
                try:
                    api.connect_to_device()
                    version: str | None = str(api.read_device_version())
                except APIError:
                    version = None
                api.disconnect_from_emu()
                found.append(Attached(int(snr), "pynrfjprog", ports, version))
    except APIError as exc:
        return found, f"pynrfjprog cannot enumerate ({exc.error_enum.name})"
    return found, None


def from_virtual(state: SimState) -> list[Attached]:
    """The boards a running virtual farm serves, each asked for its chip over the debug port."""
    from pynrfjprog.APIError import APIError

    from dfuhil.sim.lowlevel import VirtualLowLevelAPI

    found = []
    for board in state.boards.values():
        api = VirtualLowLevelAPI("AUTO", endpoint=board.endpoint)
        try:
            api.open()
            api.connect_to_emu_with_snr(board.snr)
            version: str | None = api.read_device_version()
        except APIError:
            version = None
        finally:
            api.close()
        found.append(Attached(board.snr, "virtual", (board.serial,), version))
    return found


# --- reconciliation ----------------------------------------------------------------------------


def _same_port(written: str, seen: Iterable[str]) -> bool:
    real = os.path.realpath(written)
    return any(real == os.path.realpath(p) for p in seen)


def reconcile(farm: Farm, attached: Sequence[Attached]) -> list[Drift]:
    """Every difference between the farm file and what is attached, in board order."""
    drift: list[Drift] = []
    by_snr: dict[int, list[Attached]] = {}
    for probe in attached:
        by_snr.setdefault(probe.snr, []).append(probe)
    for snr, seen in by_snr.items():
        if len({p.ports for p in seen}) > 1:
            where = "; ".join(f"{p.source} with ports {', '.join(p.ports) or '-'}" for p in seen)
            drift.append(
                Drift(
                    "attached-twice",
                    snr,
                    None,
                    f"J-Link {snr} is seen twice ({where}); one probe can serve one host: "
                    "unplug one, or check two hosts are not sharing it",
                )
            )
    described = set()
    for board in farm.boards:
        described.add(board.probe.snr)
        seen = [p for p in by_snr.get(board.probe.snr, []) if _comparable(board, p)]
        if not seen:
            drift.append(_missing(board))
            continue
        probe = seen[0]
        if probe.chip is not None and probe.chip != board.chip:
            drift.append(
                Drift(
                    "wrong-chip",
                    probe.snr,
                    board.name,
                    f"boards.yaml says {board.chip.name}, the probe reaches {probe.device_version}"
                    f"; correct chip: (line {board.line}) or rewire the probe",
                )
            )
        if (
            not board.serial.is_virtual
            and probe.ports
            and not _same_port(board.serial.port, probe.ports)
        ):
            drift.append(
                Drift(
                    "port-moved",
                    probe.snr,
                    board.name,
                    f"boards.yaml says serial port {board.serial.port}, the probe has "
                    f"{', '.join(probe.ports)}; update serial.port (line {board.line})",
                )
            )
    for snr, seen in by_snr.items():
        if snr not in described:
            probe = seen[0]
            what = probe.chip.name if probe.chip else probe.device_version or "unknown chip"
            drift.append(
                Drift(
                    "undescribed",
                    snr,
                    None,
                    f"{what} on {', '.join(probe.ports) or 'no serial port'} (via "
                    f"{probe.source}) is in no board of {farm.path}; `--write FILE` drafts it",
                )
            )
    return drift


def _comparable(board: BoardSpec, probe: Attached) -> bool:
    """A virtual board is matched by the virtual farm, a real one by real probe tools."""
    return (probe.source == "virtual") == board.is_virtual


def _missing(board: BoardSpec) -> Drift:
    if board.is_virtual:
        fix = "start the virtual farm for this file (dfuhil sim serve)"
    else:
        fix = f"plug J-Link {board.probe.snr} in, or correct probe.snr (line {board.line})"
    return Drift("missing", board.probe.snr, board.name, f"its probe is not attached; {fix}")


def draft(attached: Sequence[Attached], backend: str) -> str:
    """boards.yaml entries for probes no board describes (to be completed by hand)."""
    lines = [
        "# Drafted by `dfuhil boards discover`: add a flash_layout (and firmware, roles) to",
        "# each board, then move them into the farm file's boards list.",
        "boards:",
    ]
    for probe in attached:
        chip = probe.chip
        name = f"{(chip.name.split('_')[0] if chip else 'board').lower()}-{probe.snr}"
        lines += [
            f"  - name: {name}",
            f"    chip: {chip.name if chip else 'TODO  # the chip did not answer'}",
            f"    probe: {{backend: {backend}, snr: {probe.snr}}}",
        ]
        if probe.ports:
            lines.append(f"    serial: {{port: {probe.ports[0]}, baud: 115200}}")
        lines.append("    flash_layout: TODO")
    return "\n".join(lines) + "\n"


class DiscoveryError(DfuhilError):
    """No probe tool could look at this host."""
