"""Benchmark: the same SMP upload over the local pty and over ser2net/RFC 2217 on loopback.

One virtual nRF52840 (bench/smp_upload.py's board: MCUboot swap-move + smp_svr-like app, paced
UART at 115200 baud) is provisioned afresh before every upload. Each round uploads the same
signed image twice with dfuhil's default SmpLink (pipelined as the board's UART allows): once
through the farm's pty (local), once through ser2net serving that pty over RFC 2217 on
127.0.0.1, started exactly as labgrid's exporter starts it (tests/ser2netproc.py), the Rig
attached to the board's place as a lease would attach it (probe through the TCP debug port).
Rounds alternate the order so drift on a shared machine hits both ways alike. Figures are
device seconds (wall / time_scale) and image bytes per device second.

Goal: RFC 2217 within 5 % of the local pty.

Run: `.venv/bin/python bench/rfc2217_upload.py [--time-scale 1.0] [--image-kib 200]
[--rounds 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from smp_upload import BOARD, ROOT, boards_file, dfuhil_way, fresh, grown_image

from dfuhil.farm.loader import load_farm
from dfuhil.farm.model import Farm
from dfuhil.farm.remote import RemoteEndpoints
from dfuhil.farm.rig import Rig
from dfuhil.sim.state import FarmProcess

sys.path.insert(0, str(ROOT / "tests"))
import ser2netproc

PLACE = "bench-rfc2217"
LOCAL, REMOTE = "local pty", "RFC 2217 (ser2net)"


def placed(path: Path) -> Path:
    """The same boards file with the board given a place (it is then reached only by lease)."""
    yaml = YAML()
    data = yaml.load(path.read_text())
    data["boards"][0]["place"] = PLACE
    data["boards"][0]["lab_host"] = "loopback"
    out = path.with_name("boards-placed.yaml")
    with out.open("w") as f:
        yaml.dump(data, f)
    return out


@dataclass
class Uploads:
    """Device seconds per upload, per way, and what dfuhil's upload said of each way."""

    size: int
    seconds: dict[str, list[float]]
    notes: dict[str, str]

    def median(self, way: str) -> float:
        return statistics.median(self.seconds[way])


def measure(time_scale: float, image_kib: int, rounds: int) -> Uploads:
    """``rounds`` uploads each way, alternating the order (bench/remote_farm.py reuses it)."""
    with tempfile.TemporaryDirectory(prefix="dfuhil-bench-rfc2217-") as tmp:
        work = Path(tmp)
        path = boards_file(work / "boards.yaml", time_scale)
        local_farm = load_farm(path)
        remote_farm: Farm = load_farm(placed(path))
        board = local_farm.board(BOARD)
        image = grown_image(board, image_kib * 1024)
        with FarmProcess(path, work / "state.json", log_dir=work / "sim") as state:
            entry = state.board(BOARD)
            assert entry.debug_tcp is not None
            with ser2netproc.serving(entry.serial, board.serial.baud) as server:
                local = Rig(local_farm, state)
                remote = Rig(remote_farm)
                endpoints = RemoteEndpoints("loopback", PLACE, server.url, entry.debug_tcp)
                remote.attach_remote(BOARD, endpoints)
                ways = {LOCAL: local, REMOTE: remote}
                seconds: dict[str, list[float]] = {name: [] for name in ways}
                notes: dict[str, str] = {}
                for round_ in range(rounds):
                    order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
                    for name in order:
                        rig = ways[name]
                        spec = rig.farm.board(BOARD)
                        fresh(rig, spec)
                        wall, note = dfuhil_way(rig, spec, image, window=None)
                        seconds[name].append(wall / time_scale)
                        notes[name] = note
    return Uploads(len(image), seconds, notes)


def missing_tools() -> str | None:
    """Why this bench cannot run here, or None."""
    if ser2netproc.ser2net_binary() is None:
        return "ser2net missing: run `make lab-setup`"
    if not (ROOT / "firmware" / "virtual" / "keys").is_dir():
        return "no sample firmware: run `make firmware` first"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--image-kib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    missing = missing_tools()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    uploads = measure(args.time_scale, args.image_kib, args.rounds)
    size = uploads.size
    print(
        f"{size} B signed image, virtual nRF52840 ({BOARD}), 115200 baud paced UART, "
        f"time_scale {args.time_scale}, {args.rounds} rounds, dfuhil default window"
    )
    print(f"{'way':22} {'median s':>9} {'min s':>7} {'max s':>7} {'B/s':>7}  note")
    for name, values in uploads.seconds.items():
        med = uploads.median(name)
        print(
            f"{name:22} {med:>9.2f} {min(values):>7.2f} {max(values):>7.2f} "
            f"{size / med:>7.0f}  {uploads.notes[name]}"
        )
    ratio = uploads.median(REMOTE) / uploads.median(LOCAL)
    print(
        f"RFC 2217 / local: {ratio:.3f} ({ratio - 1:+.1%}); goal within 5 %: "
        f"{'met' if ratio <= 1.05 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
