"""Campaign: MCUboot image uploads over SMP on a faulty serial line; 0 false passes.

Every run takes a fresh virtual nRF52840 running a Zephyr smp_svr-like app (tests/smpfarm.py:
NOR flash, a UART on a real pty paced at 115200 baud), puts one kind of line fault on its UART
through the virtual farm's debug port (``FaultInjector.set_line_faults``, seeded) and uploads a
signed image with dfuhil's ``SmpLink`` (what ``dfuhil mcuboot upload``/``upgrade`` use). Then,
on a clean line, the verdict is checked independently:

- pass: the upload returned and a probe read-back of the secondary slot equals the file;
- false pass: the upload returned but the slot does not hold the file (goal 0);
- infra: InfrastructureError (a line that cannot carry the protocol is the rig's fault);
- misclassified: a product failure (ProductError, a refusal) or a traceback for what is only a
  fault of the line (goal 0);
- unbootable: the primary slot no longer holds the running image, or the app no longer answers
  SMP on a clean line after the run (goal 0).

Run: `make bench-faults` or `.venv/bin/python bench/line_faults.py [--seeds 10]
[--budget-s 600] [--kinds bit_flips,drops] [--image-kib 8] [--time-scale 0.05]`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import smpfarm  # noqa: E402  (tests/ helpers: the in-process virtual smp_svr)

from dfuhil.errors import InfrastructureError  # noqa: E402
from dfuhil.farm.model import LineFaults  # noqa: E402
from dfuhil.formats.smp_uart import SmpUart  # noqa: E402
from dfuhil.links.smp_link import SmpLink  # noqa: E402
from dfuhil.sim.debugport import DebugPortServer  # noqa: E402
from dfuhil.sim.faults import FaultInjector  # noqa: E402

# Rates are per byte (per bit for flips): an 8 KiB upload and its echo probe move about
# 25 000 bytes each way, so each kind hits most runs about once or twice. Stalls are in
# device seconds (at the campaign's time scale 0.05, 40 s is 2 wall seconds: some outlast the
# request timeout).
KINDS: dict[str, LineFaults] = {
    "clean": LineFaults(),
    "bit_flips": LineFaults(bit_error_rate=5e-6),
    "drops": LineFaults(drop_rate=4e-5),
    "duplicates": LineFaults(duplicate_rate=4e-5),
    "garbage": LineFaults(garbage_rate=3e-5, garbage_len=24),
    "stalls": LineFaults(stall_rate=1e-4, stall_s=40.0),
    "vanish": LineFaults(vanish_rate=5e-5, vanish_s=2.0),
}
PARTS = {
    "smp": "SMP image upload to the secondary slot, checked by slot read-back",
    "mesh": "mesh DFU through the serial root, checked by device page read-back",
    "upgrade": "`dfuhil mcuboot upgrade` (swap-move), checked by primary slot read-back + boot",
}
OUTCOMES = ("pass", "infra", "product", "false_pass", "misclassified", "unbootable")
TIMEOUT_S = 1.0  # wall seconds per SMP request (the farm runs 20x faster than a bench)
VERBOSE = bool(os.environ.get("LINE_FAULTS_VERBOSE"))


@dataclass
class Tally:
    """One fault kind's results."""

    runs: int = 0
    seeds: set[int] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def row(self, kind: str) -> str:
        o = self.outcomes
        return (
            f"{kind:<11} {self.runs:>4} {len(self.seeds):>5} {o['pass']:>6} {o['infra']:>6} "
            f"{o['product']:>8} {o['false_pass']:>6} {o['misclassified']:>6} "
            f"{o['unbootable']:>6}"
        )


HEADER = (
    f"{'kind':<11} {'runs':>4} {'seeds':>5} {'passes':>6} {'infra':>6} {'product':>8} "
    f"{'false':>6} {'miscl':>6} {'unboot':>6}"
)


@dataclass(frozen=True)
class Images:
    running: bytes
    new: bytes


def make_images(directory: Path, image_kib: int) -> Images:
    build = smpfarm.app_build()
    key = smpfarm.make_key(directory)
    old = smpfarm.app_body(build, "1.0.0", 4 * 1024)
    new = smpfarm.app_body(build, "2.0.0", image_kib * 1024)
    return Images(
        running=smpfarm.sign(directory, old, "1.0.0", key).read_bytes(),
        new=smpfarm.sign(directory, new, "2.0.0", key).read_bytes(),
    )


def one_run(images: Images, faults: LineFaults, time_scale: float) -> tuple[str, str]:
    """One upload under ``faults``: (outcome, note)."""
    build = smpfarm.app_build()
    secondary = build.geometry.secondary
    with (
        smpfarm.smp_board(images.running, build, time_scale=time_scale) as dut,
        tempfile.TemporaryDirectory(prefix="dfuhil-lf-") as sockdir,
    ):
        port = DebugPortServer(
            os.path.join(sockdir, "d.sock"), {dut.board.snr: dut.board}, time_scale
        )
        port.start()
        try:
            with FaultInjector(port.endpoint, dut.board.snr) as lever:
                lever.set_line_faults(faults)
                outcome, note = _upload(dut.serial, images.new)
                lever.set_line_faults(None)
                stats = lever.line_faults()
                # A vanished port comes back under a new path: wait for it, then check.
                deadline = time.monotonic() + 10 * faults.vanish_s * time_scale + 2
                while not stats["present"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                    stats = lever.line_faults()
            holds = dut.slot_bytes(secondary, len(images.new)) == images.new
            if outcome == "pass" and not holds:
                return "false_pass", "upload returned but the secondary slot differs"
            if not _bootable(dut, images.running):
                return "unbootable", note
            return outcome, note
        finally:
            port.close()


def _upload(serial: str, image: bytes) -> tuple[str, str]:
    try:
        with SmpLink.open_serial(
            serial, timeout_s=TIMEOUT_S, uart=SmpUart(delivery="paced"), name="lf"
        ) as smp:
            smp.upload(image, first_timeout_s=5.0)
    except InfrastructureError as exc:
        return "infra", str(exc).splitlines()[0][:160]
    except AssertionError as exc:  # ProductError, SmpRefused: a verdict on the product
        return "product", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    except Exception as exc:  # a traceback for a line fault: misclassified
        return "misclassified", "".join(traceback.format_exception_only(exc)).strip()[:200]
    return "pass", ""


def _bootable(dut: smpfarm.SmpBoard, running: bytes) -> bool:
    """The primary still holds the running image and the app answers SMP on a clean line."""
    primary = dut.build.geometry.primary
    if dut.slot_bytes(primary, len(running)) != running:
        return False
    try:
        with SmpLink.open_serial(dut.serial, timeout_s=2.0, name="check") as smp:
            return any(s.active for s in smp.image_list())
    except Exception:
        return False


def campaign(
    kinds: list[str],
    seeds: int,
    *,
    part: str = "smp",
    image_kib: int = 8,
    time_scale: float = 0.05,
    budget_s: float | None = None,
    first_seed: int = 1,
) -> dict[str, Tally]:
    """Run every kind over ``seeds`` seeds (interleaved, so a budget cut keeps all kinds).

    ``part``: ``smp`` (SMP image uploads), ``mesh`` (mesh DFU through a serial root) or
    ``upgrade`` (``dfuhil mcuboot upgrade`` on the shipped swap-move board).
    """
    logging.getLogger("dfuhil").setLevel(logging.CRITICAL)
    tallies = {kind: Tally() for kind in kinds}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dfuhil-lf-img-")))
        if part == "upgrade":
            import line_faults_upgrade as upgrade  # bench/line_faults_upgrade.py

            stack.enter_context(contextlib.chdir(work))  # the verb's reports/ go there
            rig = stack.enter_context(upgrade.upgrade_rig(work, time_scale))

            def run(faults: LineFaults) -> tuple[str, str]:
                return upgrade.one_run(rig, faults)
        elif part == "mesh":
            import line_faults_mesh as mesh  # bench/line_faults_mesh.py

            package = mesh.make_package(work, image_kib)

            def run(faults: LineFaults) -> tuple[str, str]:
                return mesh.one_run(package, faults, work, time_scale)
        else:
            images = make_images(work, image_kib)

            def run(faults: LineFaults) -> tuple[str, str]:
                return one_run(images, faults, time_scale)

        for seed in range(first_seed, first_seed + seeds):
            for kind in kinds:
                if budget_s is not None and time.monotonic() - started > budget_s:
                    return tallies
                outcome, note = run(replace(KINDS[kind], seed=seed))
                if outcome == "product":
                    outcome = "misclassified"  # a line fault is never the product's
                tally = tallies[kind]
                tally.runs += 1
                tally.seeds.add(seed)
                tally.outcomes[outcome] += 1
                if outcome != "pass" and (outcome != "infra" or VERBOSE):
                    tally.notes.append(f"seed {seed}: {outcome}: {note}")
    return tallies


def print_table(tallies: dict[str, Tally]) -> None:
    print(HEADER)
    for kind, tally in tallies.items():
        print(tally.row(kind))
    for kind, tally in tallies.items():
        for note in tally.notes:
            print(f"  {kind}: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting runs after")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--image-kib", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"unknown fault kind(s) {unknown}; known: {', '.join(KINDS)}", file=sys.stderr)
        return 2
    bad = 0
    parts = list(PARTS) if args.part == "all" else [args.part]
    for part in parts:
        started = time.monotonic()
        tallies = campaign(
            kinds,
            args.seeds,
            part=part,
            image_kib=args.image_kib,
            time_scale=args.time_scale,
            budget_s=args.budget_s / len(parts) if args.budget_s else None,
            first_seed=args.first_seed,
        )
        print(f"== {part}: " + PARTS[part])
        print_table(tallies)
        print(f"wall {time.monotonic() - started:.0f} s\n")
        bad += sum(t.outcomes[o] for t in tallies.values() for o in OUTCOMES[3:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
