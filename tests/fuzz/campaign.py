"""The long fuzz campaign (``make fuzz``): every target for a time budget, then one table.

    .venv/bin/python tests/fuzz/campaign.py --budget 60          # seconds per target
    .venv/bin/python tests/fuzz/campaign.py --budget 5 -k mcuboot  # only matching targets

Per target it prints the inputs tried, the distinct refusals (messages with their numbers
blanked out), the tracebacks and the hangs; each failing input is written to --out with its
traceback, to be replayed and kept as an explicit ``@example`` once fixed. Hypothesis runs
unshrunk rounds with a new seed each, until the target's budget is spent; exit 1 if anything
crashed or hung.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz_harness import Outcome
from fuzz_targets import TARGETS
from hypothesis import HealthCheck, Phase, given, seed, settings

ROUND = 50  # examples per hypothesis round


@dataclass
class Tally:
    tried: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    refusals: set[str] = field(default_factory=set)
    failures: dict[str, tuple[Any, str]] = field(default_factory=dict)

    def add(self, data: Any, outcomes: Outcome | list[Outcome]) -> None:
        self.tried += 1
        for outcome in outcomes if isinstance(outcomes, list) else [outcomes]:
            self.kinds[outcome.kind] += 1
            if outcome.kind == "refused":
                self.refusals.add(outcome.key)
            elif outcome.kind in ("traceback", "hang"):
                last = outcome.detail.strip().splitlines()[-1][:200]
                self.failures.setdefault(f"{outcome.kind}: {last}", (data, outcome.detail))


def fuzz(name: str, budget: float, first_seed: int) -> Tally:
    target = TARGETS[name]
    tally = Tally()
    deadline = time.monotonic() + budget
    round_seed = first_seed
    while time.monotonic() < deadline:

        @seed(round_seed)
        @settings(
            max_examples=ROUND,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(target.strategy)
        def one_round(data: Any) -> None:
            if time.monotonic() < deadline:
                tally.add(data, target.runner(data))

        one_round()
        round_seed += 1
    return tally


def save(out: Path, name: str, tally: Tally) -> None:
    for number, (key, (data, detail)) in enumerate(tally.failures.items()):
        stem = out / f"{name.replace(' ', '_').replace('/', '_')}-{number}"
        stem.with_suffix(".txt").write_text(f"{key}\n\ninput: {data!r}\n\n{detail}\n")
        if isinstance(data, bytes):
            stem.with_suffix(".input").write_bytes(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per target (60)")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="first round's seed")
    parser.add_argument("-k", dest="select", default="", help="only targets containing this")
    parser.add_argument("-v", dest="verbose", action="store_true", help="list the refusals")
    parser.add_argument("--out", type=Path, default=Path("reports/fuzz"), help="failing inputs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in TARGETS if args.select in n]
    print(f"fuzz campaign: {len(names)} targets, {args.budget:.0f} s each, seed {args.seed}")
    header = f"{'target':34} {'inputs':>7} {'refusals':>9} {'tracebacks':>11} {'hangs':>6}"
    rows = []
    failed = False
    for name in names:
        tally = fuzz(name, args.budget, args.seed)
        save(args.out, name, tally)
        row = (
            f"{name:34} {tally.tried:7d} {len(tally.refusals):9d} "
            f"{tally.kinds['traceback']:11d} {tally.kinds['hang']:6d}"
        )
        rows.append(row)
        print(row, flush=True)
        for key in tally.failures:
            print(f"    {key}")
        if args.verbose:
            for key in sorted(tally.refusals):
                print(f"    refused: {key}")
        failed = failed or bool(tally.failures)
    print("\n" + header + "\n" + "\n".join(rows))
    if failed:
        print(f"failing inputs and tracebacks: {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
