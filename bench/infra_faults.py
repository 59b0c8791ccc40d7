"""Figures: per infrastructure fault kind, what a pytest run on a 2-board virtual farm makes of it.

Each run is `pytest suites/test_provisioning.py -k "banner or second_provisioning" -n 2
--quarantine-after 1` (one retry, the default) on a generated farm (tests/farmgen.py) of two
boards, with a test-only plugin faulting the first board (FAULTY) only:

  serial port lost   tests/infra_fault.py: the host's end of the console pty closes mid-test
  probe lost         tests/probe_fault.py: the J-Link drops off USB in the softdevice step
  board silent       tests/board_fault.py halt: the board's core halts (UART silent) mid-test
  farm killed        tests/board_fault.py kill: the virtual farm process is SIGKILLed mid-test

each "once" (the first attempt of each test on FAULTY) and "always" (every attempt). Columns:

  infra    attempts on FAULTY that ended as infrastructure (retried ones plus final ones), of
           all attempts on FAULTY that failed; "3/3" is the goal, "0/2" means reported as product
  retried  attempts retried after an infrastructure fault (JUnit ``infra_retry`` properties)
  quar.    whether FAULTY was quarantined (the run's summary says so)
  others   OTHER's tests passed / OTHER's tests (all passed: the fault did not spread)
  exit     the pytest exit code

Run: `make bench-infra` or `.venv/bin/python bench/infra_faults.py [--kinds probe,port]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from farmgen import generated, pytest_command, write_farm  # noqa: E402
from test_parallel import PROVISIONING, Run, finish  # noqa: E402

TIME_SCALE = 0.1
SELECT = "banner or second_provisioning"


@dataclass(frozen=True)
class Fault:
    name: str
    plugin: str
    env: str
    kind: str = ""  # the plugin's KIND, where it takes one

    def spec(self, board: str, times: int) -> str:
        return f"{board}:{times}" + (f":{self.kind}" if self.kind else "")


FAULTS = {
    "port": Fault("serial port lost", "infra_fault", "DFUHIL_TEST_PORT_FAULT"),
    "probe": Fault("probe lost mid-flash", "probe_fault", "DFUHIL_TEST_PROBE_FAULT"),
    "silent": Fault("board silent (halted)", "board_fault", "DFUHIL_TEST_BOARD_FAULT", "halt"),
    "kill": Fault("farm killed", "board_fault", "DFUHIL_TEST_BOARD_FAULT", "kill"),
}


@dataclass(frozen=True)
class Row:
    fault: str
    times: str
    infra: int
    failed: int
    retried: int
    quarantined: bool
    others_passed: int
    others: int
    exit: int
    wall_s: float


def one(fault: Fault, times: int, workdir: Path) -> Row:
    boards = generated(2)
    faulty, other = boards[0]["name"], boards[1]["name"]
    path = write_farm(workdir / "boards.yaml", boards, time_scale=TIME_SCALE)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), fault.env: fault.spec(faulty, times)}
    command = pytest_command(
        workdir, path, PROVISIONING, "-p", fault.plugin, "-k", SELECT, "-n", "2"
    )
    started = time.monotonic()
    process = subprocess.Popen(
        [*command, "--quarantine-after", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run: Run = finish(process, workdir)
    wall = time.monotonic() - started
    cases = run.cases() if (workdir / "junit.xml").is_file() else []
    retried = infra = failed = 0
    for name, props, failures in cases:
        if faulty not in name:
            continue
        tries = props.get("infra_retry", "")
        n_retried = tries.count("attempt ")
        retried += n_retried
        infra += n_retried + (1 if failures and props.get("failure") == "infrastructure" else 0)
        failed += n_retried + (1 if failures else 0)
    mine = [failures for name, _, failures in cases if other in name]
    return Row(
        fault=fault.name,
        times="always" if times > 1 else "once",
        infra=infra,
        failed=failed,
        retried=retried,
        quarantined=f"QUARANTINED: board {faulty}" in run.output,
        others_passed=sum(1 for failures in mine if not failures),
        others=len(mine),
        exit=run.returncode,
        wall_s=wall,
    )


def table(rows: list[Row]) -> str:
    head = f"{'fault':<22} {'times':<7} {'infra':>6} {'retried':>7} {'quar.':>5} "
    head += f"{'others':>7} {'exit':>4} {'wall s':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.fault:<22} {r.times:<7} {f'{r.infra}/{r.failed}':>6} {r.retried:>7} "
            f"{'yes' if r.quarantined else 'no':>5} {f'{r.others_passed}/{r.others}':>7} "
            f"{r.exit:>4} {r.wall_s:>6.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(FAULTS), help=f"of {', '.join(FAULTS)}")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown:
        parser.error(f"unknown fault kind(s) {unknown}: pick from {', '.join(FAULTS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-infra-") as tmp:
        for kind in kinds:
            for times in (1, 99):
                workdir = Path(tmp) / f"{kind}-{times}"
                workdir.mkdir()
                rows.append(one(FAULTS[kind], times, workdir))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
