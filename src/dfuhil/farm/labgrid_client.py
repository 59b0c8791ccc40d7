"""How dfuhil talks to labgrid's coordinator without importing labgrid.

labgrid lives in its own venv (its pyserial fork installs the same ``serial`` package as
pyserial), so dfuhil runs :mod:`dfuhil.farm.labgrid_agent` there: one long-lived process per
coordinator and dfuhil process, speaking JSON lines. A request costs one gRPC round trip
(about a millisecond on loopback) where a ``labgrid-client`` call costs a Python start and a
grpc import (about half a second): leases and heartbeats go through it.

Every call has a deadline: a coordinator that does not answer is an InfrastructureError naming
its address and the fix within seconds, never a hang.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.model import Farm

AGENT = Path(__file__).with_name("labgrid_agent.py")
REPO = Path(__file__).resolve().parents[3]
CALL_TIMEOUT_S = 8.0  # the agent's own gRPC deadline is 5 s; this bounds a wedged agent


class PlaceRefused(Exception):
    """The coordinator answered, and said no (place exists, is acquired, ...)."""


VENV_ENV = "DFUHIL_LABGRID_VENV"


def labgrid_program(program: str) -> Path:
    """One of labgrid's programs (``python``, ``labgrid-client``, ...): from
    $DFUHIL_LABGRID_VENV, else <repo>/.venv-labgrid, else next to a labgrid-client on PATH."""
    env = os.environ.get(VENV_ENV)
    candidates = [Path(env)] if env else [REPO / ".venv-labgrid"]
    for venv in candidates:
        if (venv / "bin" / program).exists():
            return venv / "bin" / program
    on_path = shutil.which("labgrid-client")
    if on_path is not None and (Path(on_path).parent / program).exists():
        return Path(on_path).parent / program
    raise InfrastructureError(
        f"labgrid is not installed: no {program} (looked in "
        f"{', '.join(map(str, candidates))} and on PATH)",
        f"run `make lab-setup` (labgrid's own venv), or point {VENV_ENV} at one",
    )


def labgrid_python() -> Path:
    """The Python of labgrid's venv (runs dfuhil's agent)."""
    return labgrid_program("python")


def coordinator_address(farm: Farm) -> str:
    """boards.yaml's ``coordinator:``, else $LG_COORDINATOR as labgrid users set it."""
    address = farm.coordinator or os.environ.get("LG_COORDINATOR")
    if not address:
        raise InputError(
            Problem(
                str(farm.path),
                None,
                "coordinator",
                "boards have a `place` but no labgrid coordinator is named: add "
                "`coordinator: HOST:PORT` to the file or set LG_COORDINATOR",
            )
        )
    return address


def _unreachable(address: str, why: str) -> InfrastructureError:
    return InfrastructureError(
        f"labgrid coordinator at {address} does not answer ({why})",
        "start it (labgrid-coordinator -l HOST:PORT) or fix `coordinator:` in boards.yaml "
        "(or LG_COORDINATOR)",
    )


class LabgridClient:
    """One agent process talking to one coordinator; calls are serialised (thread-safe)."""

    def __init__(self, address: str, *, identity: str | None = None) -> None:
        """``identity`` is the labgrid user name (LG_USERNAME); default: the user's, made
        unique per dfuhil process so two runs never kick each other's acquisition."""
        self.address = address
        self._lock = threading.Lock()
        self._next_id = 1
        self._buffer = b""
        env = dict(os.environ)
        env["LG_USERNAME"] = identity or (
            f"{os.environ.get('LG_USERNAME') or _user()}-dfuhil-{os.getpid()}"
        )
        self._proc = subprocess.Popen(
            [str(labgrid_python()), str(AGENT), address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        hello = self._read(0, time.monotonic() + CALL_TIMEOUT_S)
        if not hello["ok"]:
            self.close()
            raise _unreachable(address, hello["error"])
        self.name: str = hello["result"]  # how the coordinator names us ("host/user")

    def call(self, op: str, **fields: Any) -> Any:
        """One request; PlaceRefused if the coordinator says no, InfrastructureError if it is
        gone or silent."""
        with self._lock:
            if self._proc.poll() is not None:
                raise _unreachable(self.address, "the labgrid agent has exited")
            request_id = self._next_id
            self._next_id += 1
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(
                    (json.dumps({"id": request_id, "op": op, **fields}) + "\n").encode()
                )
                self._proc.stdin.flush()
            except BrokenPipeError:
                raise _unreachable(self.address, "the labgrid agent has exited") from None
            reply = self._read(request_id, time.monotonic() + CALL_TIMEOUT_S)
        if reply["ok"]:
            return reply["result"]
        if reply.get("lost"):
            self.close()  # its session is dead: client_for starts a fresh one next time
            raise _unreachable(self.address, reply["error"])
        raise PlaceRefused(reply["error"])

    def _read(self, request_id: int, deadline: float) -> dict[str, Any]:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                line, sep, rest = self._buffer.partition(b"\n")
                if sep:
                    self._buffer = rest
                    reply: dict[str, Any] = json.loads(line)
                    if reply.get("id") == request_id:
                        return reply
                    continue  # the late answer of a request that timed out
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.close()
                    raise _unreachable(self.address, f"no reply within {CALL_TIMEOUT_S:.0f} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.close()
                    raise _unreachable(self.address, "the labgrid agent has exited")
                self._buffer += chunk

    def __enter__(self) -> LabgridClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """Stop the agent (end of stdin; by its pid if it does not go)."""
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.close()
                self._proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def _user() -> str:
    import getpass

    return getpass.getuser()


_clients: dict[str, LabgridClient] = {}
_clients_lock = threading.Lock()


def identity_of(address: str) -> str | None:
    """How the coordinator at ``address`` knows this process ("host/user"), if it has a client
    there: the identity that holds the places this process leased."""
    with _clients_lock:
        client = _clients.get(address)
        return client.name if client is not None and client.alive else None


def client_for(address: str) -> LabgridClient:
    """This process's client to ``address`` (started on first use, closed at exit)."""
    with _clients_lock:
        client = _clients.get(address)
        if client is None or not client.alive:
            client = _clients[address] = LabgridClient(address)
        return client


@atexit.register
def close_all() -> None:
    """Stop every agent this process started."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
