"""``dfuhil boards discover``: the probes attached to this host against boards.yaml.

Prints each probe found (by nrfutil, by pynrfjprog, by a running virtual farm) and each drift:
boards missing, probes not described, wrong chip, serial port moved, a J-Link seen twice. Exit
0 when the farm matches, 1 on drift, so a nightly job can refuse to start on a miswired rig;
``--write FILE`` drafts boards.yaml entries for the probes no board describes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from dfuhil.errors import DfuhilError
from dfuhil.farm.discover import Attached, draft, from_nrfutil, from_pynrfjprog, from_virtual
from dfuhil.farm.discover import reconcile as reconcile_farm
from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm
from dfuhil.links.nrfutil_cli import NrfutilCommand
from dfuhil.sim.state import DEFAULT_STATE_FILE, load_state

TOOLS = ("nrfutil", "pynrfjprog", "virtual")


def register(verbs: argparse._SubParsersAction[argparse.ArgumentParser], default: str) -> None:
    discover = verbs.add_parser(
        "discover", help="list attached probes and compare them with the farm file (exit 1: drift)"
    )
    discover.add_argument("file", nargs="?", default=default, metavar="FILE")
    discover.add_argument(
        "--sim-state",
        type=Path,
        default=DEFAULT_STATE_FILE,
        metavar="STATE.json",
        help="state file of a running virtual farm (its boards count as attached)",
    )
    discover.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help=f"which to ask, comma-separated (default: {','.join(TOOLS)})",
    )
    discover.add_argument("--write", type=Path, metavar="FILE", help="draft entries for new probes")
    discover.add_argument("--json", action="store_true", help="print probes and drift as JSON")
    discover.set_defaults(func=discover_command)


def attached_probes(
    farm: Farm, tools: list[str], sim_state: Path
) -> tuple[list[Attached], list[str]]:
    """Every probe the chosen tools see, and a note for each tool that could not look."""
    found: list[Attached] = []
    notes: list[str] = []
    if "nrfutil" in tools:
        if shutil.which("nrfutil") is None:
            notes.append("nrfutil: not on PATH")
        else:
            try:
                found += from_nrfutil(NrfutilCommand())
            except DfuhilError as exc:
                notes.append(f"nrfutil: {exc}")
    if "pynrfjprog" in tools:
        probes, note = from_pynrfjprog()
        found += probes
        if note:
            notes.append(f"pynrfjprog: {note}")
    if "virtual" in tools and farm.virtual_boards():
        try:
            found += from_virtual(load_state(sim_state))
        except DfuhilError as exc:
            notes.append(f"virtual: {str(exc).splitlines()[0]}")
    return found, notes


def discover_command(args: argparse.Namespace) -> int:
    farm = load_farm(args.file)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(TOOLS))
    if unknown:
        print(f"--tools: unknown {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
        return 2
    found, notes = attached_probes(farm, tools, args.sim_state)
    drift = reconcile_farm(farm, found)
    if args.json:
        print(
            json.dumps(
                {
                    "probes": [
                        {**asdict(p), "chip": p.chip.name if p.chip else None} for p in found
                    ],
                    "drift": [asdict(d) for d in drift],
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        for probe in found:
            chip = probe.chip.name if probe.chip else probe.device_version or "?"
            print(f"{probe.source:10} {probe.snr:>12}  {chip:16} {', '.join(probe.ports) or '-'}")
        for note in notes:
            print(f"note: {note}")
        for item in drift:
            print(str(item))
        print(f"{args.file}: " + (f"{len(drift)} drift" if drift else "the rig matches"))
    if args.write is not None:
        described = {b.probe.snr for b in farm.boards}
        new = {p.snr: p for p in found if p.snr not in described and p.source != "virtual"}
        backend = "nrfutil" if any(p.source == "nrfutil" for p in new.values()) else "pynrfjprog"
        args.write.write_text(draft(list(new.values()), backend))
        print(f"wrote {len(new)} draft board(s) to {args.write}")
    return 1 if drift else 0
