"""Running ``nrfutil --json device ...`` as a subprocess, the way Nordic advises automation to.

One :class:`NrfutilCommand` is one executable and environment; it counts process starts (the
cost a lab pays per call: nrfutil starts in hundreds of milliseconds) and turns every way a run
can fail into the product's taxonomy: the rig (no nrfutil, no ``device`` command, a version
outside the range this code was written for, an absent or busy J-Link, no target power) is an
:class:`InfrastructureError` with the remedy; a failed read-back verify is a ProductError.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dfuhil.errors import DfuhilError, InfrastructureError, ProductError
from dfuhil.links.nrfutil_json import NrfutilOutput, TaskEnd, parse_output

# The `nrfutil device` releases this backend was written and checked for: device-info,
# batch-execute and --to-file reads all exist from 2.8 on; 3.x may change the JSON it relies on.
SUPPORTED = ((2, 8, 0), (3, 0, 0))
INSTALL = (
    "install nRF Util (https://www.nordicsemi.com/Products/Development-tools/nRF-Util), then "
    "`nrfutil install device` (a 2.x release, 2.8 or later)"
)


class NrfutilError(DfuhilError):
    """An nrfutil operation failed for a reason that is not the rig's (bad address, ...)."""


@dataclass
class NrfutilCommand:
    """``nrfutil`` on PATH (or ``executable``), run with ``env`` added to this process's."""

    executable: str = "nrfutil"
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 600.0
    starts: int = 0  # process starts so far (bench/provision.py reports them)
    version: tuple[int, int, int] | None = None

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _spawn(
        self, cmd: list[str], board: str | None, timeout_s: float
    ) -> subprocess.CompletedProcess[bytes]:
        """One process start; a missing executable or a hang is the rig's problem."""
        self.starts += 1
        try:
            return subprocess.run(
                cmd, capture_output=True, env=self._environ(), timeout=timeout_s, check=False
            )
        except FileNotFoundError:
            raise InfrastructureError(
                f"`{self.executable}` is not installed (not on PATH)", INSTALL, board=board
            ) from None
        except subprocess.TimeoutExpired:
            raise InfrastructureError(
                f"`{' '.join(cmd)}` did not finish within {timeout_s:.0f} s",
                "power-cycle the J-Link and the board; check no other program holds the probe",
                board=board,
            ) from None

    def run(self, args: Sequence[str], *, board: str | None = None) -> NrfutilOutput:
        """One ``nrfutil --json device ARGS`` run; raises unless every task succeeded."""
        cmd = [self.executable, "--json", "device", *args]
        shown = " ".join(cmd)
        proc = self._spawn(cmd, board, self.timeout_s)
        output = parse_output(proc.stdout.decode(errors="replace"), shown)
        failed = output.failed
        if failed is not None:
            raise task_error(failed, board)
        if proc.returncode != 0:
            stderr = proc.stderr.decode(errors="replace").strip()[-500:]
            raise InfrastructureError(
                f"`{shown}` exited with {proc.returncode} without reporting a failed task"
                + (f": {stderr}" if stderr else ""),
                f"run it by hand to see why; {INSTALL}",
                board=board,
            )
        return output

    def check_version(self) -> tuple[int, int, int]:
        """The installed ``nrfutil device`` version, refused outside :data:`SUPPORTED`."""
        if self.version is not None:
            return self.version
        cmd = [self.executable, "--json", "device", "--version"]
        proc = self._spawn(cmd, None, 60.0)
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-300:]
            said = said or f"exit {proc.returncode}"
            raise InfrastructureError(
                f"nrfutil has no working `device` command ({said})",
                "run `nrfutil install device`",
            )
        output = parse_output(proc.stdout.decode(errors="replace"), " ".join(cmd))
        text = next((str(i["version"]) for i in output.infos if "version" in i), "")
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
        if match is None:
            raise InfrastructureError(
                f"`nrfutil device --version` reported no version ({text!r})", INSTALL
            )
        version = (int(match[1]), int(match[2]), int(match[3]))
        low, high = SUPPORTED
        if not low <= version < high:
            raise InfrastructureError(
                f"nrfutil device {text} is outside the range dfuhil supports "
                f"({_dotted(low)} up to, not including, {_dotted(high)})",
                f"`nrfutil install device={_dotted(low)} --force` or a later 2.x release",
            )
        self.version = version
        return version


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(str(v) for v in version)


# Words of nrfutil's error descriptions that mean the rig, with what to do about it. nrfutil's
# error codes are not documented; its descriptions name the cause.
_INFRA_REMEDIES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("not found", "no device", "not connected"),
        "plug the J-Link in, or correct probe.snr in boards.yaml (`nrfutil device list` lists "
        "the probes this host sees; a probe on another host needs probe.remote)",
    ),
    (
        ("in use", "busy", "held by another"),
        "another program holds the J-Link (nrfutil, nrfjprog, JLinkExe, an IDE, another test "
        "run): close it, or wait for the other run's lease",
    ),
    (
        ("no power", "voltage", "lost power"),
        "the target has no power: check the board's power switch and supply",
    ),
    (
        ("protected", "approtect"),
        "the chip is read-back protected: set probe.allow_recover: true in boards.yaml to let "
        "dfuhil mass-erase it (`nrfutil device recover`), or recover it by hand",
    ),
    (
        ("jlinkarm", "j-link dll", "libjlinkarm"),
        "install SEGGER's J-Link Software and Documentation Pack in the version "
        "`nrfutil device --version` names",
    ),
)


def task_error(task: TaskEnd, board: str | None) -> DfuhilError:
    """The error a failed nrfutil task stands for."""
    said = task.error or task.message or "failed"
    detail = f"nrfutil {task.name} ({task.description}): {said}" + (
        f" [code {task.error_code}]" if task.error_code is not None else ""
    )
    lowered = f"{task.error} {task.message}".lower()
    for words, remedy in _INFRA_REMEDIES:
        if any(word in lowered for word in words):
            return InfrastructureError(detail, remedy, board=board)
    if "verif" in lowered:
        return ProductError(f"board {board}: {detail}")
    return NrfutilError(f"board {board}: {detail}")
