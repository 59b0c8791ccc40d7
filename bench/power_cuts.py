"""Figures: power-cut campaigns on the virtual MCUboot v2.1.0, whole-operation and torn cuts.

For each campaign (tests/powercut_campaign.py: swap-scratch and swap-move permanent swaps and
reverts, overwrite-only, direct-xip-revert's erase of an unconfirmed image, and swap-scratch
with a 2-sector scratch) every flash operation i of the upgrade boot is cut once whole (before
the operation, as MCUboot's simulator does) and once per seed torn (inside it, dfuhil.sim.torn),
and the board is switched on again. Reported per campaign and cut kind: cuts tried, recovered,
wrong image, bricked, crashed (a bug of the virtual MCUboot) and unexplained (not recovered and
no known hole of MCUboot v2.1.0, dfuhil.formats.mcuboot_holes; goal 0). Where MCUboot v2.1.0
itself fails, the hole is printed with its source lines and count. ``--budget`` bounds the
wall time: once it is spent no further cut starts, and the table says the run was cut short.

Run: `.venv/bin/python bench/power_cuts.py [--seeds 3] [--budget 900]` (or `make bench-power`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from imgtool import keys as imgtool_keys  # noqa: E402
from powercut_campaign import CAMPAIGNS, OUTCOMES, Campaign, Tally, cut_once, replay  # noqa: E402


def run_campaign(
    campaign: Campaign, seeds: int, key: object, deadline: float
) -> tuple[int, dict[str, Tally], bool]:
    """(N, tallies per cut kind, finished) for one campaign, stopping at ``deadline``."""
    tallies = {"whole": Tally(), "torn": Tally()}
    with replay(campaign, key) as run:
        n = run.count()
        for i in range(1, n + 1):
            for seed in [None, *range(1, seeds + 1)]:
                if time.monotonic() > deadline:
                    return n, tallies, False
                cut_once(campaign, run, i, seed, tallies)
    return n, tallies, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="torn cuts per operation")
    parser.add_argument("--budget", type=float, default=900.0, help="wall-time budget, s")
    parser.add_argument("--cases", type=int, default=4, help="non-recovered cuts listed each")
    args = parser.parse_args()
    key = imgtool_keys.ECDSA256P1.generate()
    started = time.monotonic()
    deadline = started + args.budget
    header = f"{'campaign':<38} {'N':>3} {'cut':<5} {'tried':>5} " + " ".join(
        f"{o:>11}" for o in (*OUTCOMES, "unexplained")
    )
    print(f"MCUboot v2.1.0 power-cut campaigns, {args.seeds} torn seed(s) per operation")
    print(header)
    notes: list[str] = []
    for campaign in CAMPAIGNS:
        n, tallies, finished = run_campaign(campaign, args.seeds, key, deadline)
        for kind, tally in tallies.items():
            counts = " ".join(f"{tally.counts[o]:>11}" for o in OUTCOMES)
            counts += f" {tally.unexplained():>11}"
            short = "" if finished else "  (budget spent)"
            print(f"{campaign.name:<38} {n:>3} {kind:<5} {tally.tried:>5} {counts}{short}")
            for case in tally.cases[: args.cases]:
                notes.append(f"  {campaign.name}, {kind}: {case}")
            for hole, count in tally.known.items():
                notes.append(f"  {campaign.name}, {kind}: {count} x {hole.describe()}")
        if not finished:
            break
    print(f"wall time {time.monotonic() - started:.0f} s")
    if notes:
        print("cuts that did not recover (first few per campaign and kind):")
        print("\n".join(notes))


if __name__ == "__main__":
    main()
