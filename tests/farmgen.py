"""Boards files cut from the shipped virtual farm: a few of its boards, or N generated ones.

The shipped ``boards.yaml`` is the source of layouts, firmware sets and board entries (its
relative paths made absolute, so the file works from a temporary directory). Used by the
parallel-run tests and ``bench/farm_scale.py``, with the command line of such a run.
"""

from __future__ import annotations

import copy
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "boards.yaml"
# Generated farms cycle through these shipped boards: mixed chips, mesh-DFU and MCUboot kits.
# The first is N=1's board, the base of the bench's ratio: an MCUboot kit, the most work.
TEMPLATES = (
    "vdk52840-swap-move",
    "vdk52832",
    "vdk51422",
    "vdk52840-swap-scratch",
    "vdk52833",
    "vdk52833-overwrite-only",
    "vdk52840",
    "vdk52840-direct-xip-revert",
)
SNR_BASE = 910_000_000


def _load() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(SHIPPED.read_text())
    return _absolute(data)  # type: ignore[no-any-return]


def _absolute(node: Any) -> Any:
    """Relative paths of the shipped file (firmware/..., examples/...) made absolute."""
    if isinstance(node, dict):
        return {k: _absolute(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(v) for v in node]
    if isinstance(node, str) and "/" in node and (REPO / node).exists():
        return str(REPO / node)
    return node


def shipped_entries() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in _load()["boards"]}


def subset(*names: str) -> list[dict[str, Any]]:
    """Shipped board entries by name, unchanged (roles included)."""
    entries = shipped_entries()
    return [copy.deepcopy(entries[name]) for name in names]


def generated(count: int) -> list[dict[str, Any]]:
    """``count`` boards cycling through TEMPLATES, each its own probe; no mesh roles, so every
    board is its own scheduling group (the mesh would join its boards into one)."""
    entries = shipped_entries()
    boards = []
    for index in range(count):
        template = TEMPLATES[index % len(TEMPLATES)]
        entry = copy.deepcopy(entries[template])
        entry["name"] = f"{template}-{index}"
        entry["probe"] = {"backend": "virtual", "snr": SNR_BASE + index}
        entry["roles"] = [r for r in entry["roles"] if not r.startswith("mesh")] or ["provisioning"]
        boards.append(entry)
    return boards


def write_farm(path: Path, boards: list[dict[str, Any]], *, time_scale: float) -> Path:
    """A boards file with the shipped layouts and firmware sets and these boards."""
    data = _load()
    data["virtual_farm"]["time_scale"] = time_scale
    data["boards"] = boards
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    path.write_text(out.getvalue())
    return path


def pytest_command(workdir: Path, boards: Path, *args: str) -> list[str]:
    """`python -m pytest ARGS` on ``boards`` with every report of the run under ``workdir``."""
    return [
        sys.executable,
        "-m",
        "pytest",
        *args,
        "--boards",
        str(boards),
        "--reports-dir",
        str(workdir / "reports"),
        f"--junitxml={workdir / 'junit.xml'}",
        f"--alluredir={workdir / 'allure'}",
        "-o",
        f"log_file={workdir / 'pytest.log'}",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
    ]
