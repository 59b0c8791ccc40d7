"""What identifies a board in a report: the same keys in allure labels, JUnit properties and
the report's environment, so a result can be traced to one chip, one probe and exact images."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from dfuhil import __version__
from dfuhil.farm.model import BoardSpec

# Peer tools whose versions decide what a run means; absent ones are said to be absent.
TOOLS = ("pytest", "allure-pytest", "pynrfjprog", "smpclient", "imgtool", "pyserial")


def identity(board: BoardSpec) -> dict[str, str]:
    return {
        "board": board.name,
        "chip": board.chip.name,
        "board_type": board.board_type.pca if board.board_type else "",
        "probe": str(board.probe),
        "roles": ",".join(board.roles),
        "firmware_set": board.firmware.name if board.firmware else "",
    }


@cache
def sha256_of(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def firmware_hashes(board: BoardSpec) -> dict[str, str]:
    """Each image of the board's firmware set (by role) -> ``file sha256:<hex>``."""
    firmware = board.firmware
    if firmware is None:
        return {}
    images = firmware.images() + ([firmware.dfu_update] if firmware.dfu_update else [])
    return {image.role: f"{image.file.name} sha256:{sha256_of(image.file)}" for image in images}


def tool_versions() -> dict[str, str]:
    found = {"dfuhil": __version__, "python": platform.python_version()}
    for tool in TOOLS:
        try:
            found[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            found[tool] = "not installed"
    found["nrfutil"] = "on PATH" if shutil.which("nrfutil") else "not on PATH"
    return found


def environment(boards: Iterable[BoardSpec]) -> dict[str, str]:
    """The run's environment: tool versions, probe backends, and per board its chip, probe
    serial and firmware set with each image's SHA-256."""
    env = tool_versions()
    unique = {b.name: b for b in boards}
    env["probe backends"] = ", ".join(sorted({b.probe.backend for b in unique.values()}))
    for name, board in sorted(unique.items()):
        ident = identity(board)
        env[f"board {name}"] = (
            f"{ident['chip']}, probe {ident['probe']}, set {ident['firmware_set']}"
        )
        for role, digest in firmware_hashes(board).items():
            env[f"firmware {ident['firmware_set']} {role}"] = digest
    return env


def properties_text(env: dict[str, str]) -> str:
    """Java properties, as Allure's environment.properties wants them (keys escaped)."""

    def key(text: str) -> str:
        return (
            text.replace("\\", "\\\\").replace(" ", "\\ ").replace(":", "\\:").replace("=", "\\=")
        )

    return "".join(f"{key(k)}={v}\n" for k, v in env.items())
