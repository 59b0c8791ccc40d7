"""STATE.json: how the rest of the world finds a running virtual farm, and how to start one.

``dfuhil sim serve`` writes it once every board is up (atomically, so a reader never sees half a
file) and removes it on exit. Per board it holds at least ``{"serial": <pty>, "snr": <int>}``
plus how the probe reaches the board.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfuhil.errors import InfrastructureError

DEFAULT_STATE_FILE = Path(".dfuhil/sim-state.json")


@dataclass(frozen=True)
class VirtualBoardState:
    name: str
    serial: str
    snr: int
    endpoint: str
    smp_udp: str | None = None  # "127.0.0.1:PORT": the board's SMP-over-UDP socket
    debug_tcp: str | None = None  # "127.0.0.1:PORT": the debug port on TCP (lab exporters)


@dataclass(frozen=True)
class SimState:
    path: Path
    pid: int
    time_scale: float
    boards_file: str
    boards: dict[str, VirtualBoardState]
    # The bumble transport name a host opens to join the farm's virtual radio (SMP over BLE).
    ble_hci: str | None = None

    def board(self, name: str) -> VirtualBoardState:
        try:
            return self.boards[name]
        except KeyError:
            raise InfrastructureError(
                f"the virtual farm described by {self.path} has no board '{name}' "
                f"(it serves: {', '.join(sorted(self.boards)) or 'none'})",
                f"restart it with the same boards file: dfuhil sim serve --boards "
                f"{self.boards_file} --state-file {self.path}",
                board=name,
            ) from None

    def check_running(self) -> None:
        """Raise the infrastructure error a test on a board of a dead farm must report."""
        if not pid_alive(self.pid):
            raise InfrastructureError(
                f"the virtual farm (pid {self.pid}, {self.path}) is gone: it died during the "
                "run, so the tests on its boards are infrastructure errors, not product failures",
                f"see its stderr {self.path.with_name(self.path.name + '.stderr')} and the "
                "*.sim.log files next to it, then rerun",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "time_scale": self.time_scale,
            "boards_file": self.boards_file,
            "boards": {
                b.name: {
                    "serial": b.serial,
                    "snr": b.snr,
                    "probe": {"backend": "virtual", "endpoint": b.endpoint},
                    "smp_udp": b.smp_udp,
                    "debug_tcp": b.debug_tcp,
                }
                for b in self.boards.values()
            },
            "ble_hci": self.ble_hci,
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, self.path)


def _remedy(path: Path) -> str:
    return (
        f"start it with `dfuhil sim serve --boards boards.yaml --state-file {path}` "
        "(pytest and `make regression` start one by themselves)"
    )


def load_state(path: Path) -> SimState:
    """Read a farm's state file, and check that the farm behind it still runs."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InfrastructureError(
            f"no virtual farm is running (no state file {path})", _remedy(path)
        ) from None
    except (OSError, ValueError) as exc:
        raise InfrastructureError(
            f"virtual farm state file {path} is unreadable: {exc}", _remedy(path)
        ) from None
    pid = int(data.get("pid", 0))
    if not pid_alive(pid):
        raise InfrastructureError(
            f"the virtual farm that wrote {path} (pid {pid}) is no longer running", _remedy(path)
        )
    boards = {
        name: VirtualBoardState(
            name=name,
            serial=str(entry["serial"]),
            snr=int(entry["snr"]),
            endpoint=str(entry["probe"]["endpoint"]),
            smp_udp=entry.get("smp_udp"),
            debug_tcp=entry.get("debug_tcp"),
        )
        for name, entry in data.get("boards", {}).items()
    }
    return SimState(
        path=path,
        pid=pid,
        time_scale=float(data.get("time_scale", 1.0)),
        boards_file=str(data.get("boards_file", "")),
        boards=boards,
        ble_hci=data.get("ble_hci"),
    )


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie child still counts until it is reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child not yet reaped by its parent is a zombie: gone for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class FarmProcess:
    """A ``dfuhil sim serve`` child process, started and stopped by a test session or a bench."""

    def __init__(
        self,
        boards_file: Path,
        state_file: Path,
        *,
        log_dir: Path | None = None,
        time_scale: float | None = None,
        watch_pid: int | None = None,
    ) -> None:
        """``watch_pid``: the farm stops by itself once that process is gone (the run's owner)."""
        self.boards_file = boards_file
        self.state_file = state_file
        self.log_dir = log_dir
        self.time_scale = time_scale
        self.watch_pid = watch_pid
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_path = state_file.with_name(state_file.name + ".stderr")

    def start(self, timeout_s: float = 60.0) -> SimState:
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "dfuhil",
            "sim",
            "serve",
            "--boards",
            str(self.boards_file),
            "--state-file",
            str(self.state_file),
        ]
        if self.log_dir is not None:
            cmd += ["--log-dir", str(self.log_dir)]
        if self.time_scale is not None:
            cmd += ["--time-scale", str(self.time_scale)]
        if self.watch_pid is not None:
            cmd += ["--watch-pid", str(self.watch_pid)]
        with self._stderr_path.open("wb") as stderr:
            # Its own session: a Ctrl-C or kill aimed at a worker's group never takes the farm
            # that other workers share; the run's owner stops it (or --watch-pid does).
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InfrastructureError(
                    f"the virtual farm exited at start (code {self._proc.returncode}): "
                    + self._stderr_path.read_text(errors="replace").strip()[-2000:],
                    f"run `{' '.join(cmd[2:])}` by hand to see why",
                )
            if self.state_file.exists():
                return load_state(self.state_file)
            time.sleep(0.05)
        self.stop()
        raise InfrastructureError(
            f"the virtual farm did not come up within {timeout_s:.0f} s",
            f"see {self._stderr_path}",
        )

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> SimState:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_farm(state_file: Path, timeout_s: float = 15.0) -> bool:
    """Stop the farm that published ``state_file`` (SIGTERM, then SIGKILL); True if one ran.

    For the owner of a run whose farm another process started (a pytest-xdist worker).
    """
    try:
        pid = int(json.loads(state_file.read_text()).get("pid", 0))
    except (OSError, ValueError):
        return False
    if not pid_alive(pid):
        with contextlib.suppress(FileNotFoundError):
            state_file.unlink()  # written by a farm that was killed: nothing serves it
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    return True
