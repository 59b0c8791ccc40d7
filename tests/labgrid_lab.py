"""A labgrid lab on loopback for the framework's own tests: one ``labgrid-coordinator`` and any
number of ``labgrid-exporter`` processes, each a "lab host" of its own.

dfuhil never imports labgrid (it lives in .venv-labgrid, see lab-common); this harness only runs
its programs. Everything listens on 127.0.0.1; the exporters publish 127.0.0.1 as their host
(``--hostname``), so their RFC 2217 ports are reached there. Every process is stopped by its
pid, and so are the ser2net children an exporter starts for its serial ports (a killed exporter
leaves them running otherwise); :meth:`LabgridLab.leftovers` tells a test what still runs.

    with labgrid_lab(tmp_path) as lab:
        lab.start_exporter("lab-a", exporter_yaml_path)   # `dfuhil farm export` wrote it
        print(lab.resources())                            # HOST/GROUP/CLASS/NAME -> data
        with lab.place("p1", "lab-a/board1/*"):           # ser2net runs only while acquired
            print(lab.serial_ports("p1"))
    assert lab.leftovers() == []
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ser2netproc import free_port  # one loopback port picker for the lab tests

from dfuhil.errors import InfrastructureError
from dfuhil.farm.labgrid_client import labgrid_program
from dfuhil.sim.state import pid_alive

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 30.0  # generous bound for a process to come up; never a speed claim
STOP_S = 5.0  # how long a process gets to stop after SIGTERM before SIGKILL


class LabgridMissing(RuntimeError):
    """labgrid's programs are not installed where dfuhil looks for them."""


def labgrid_bin(program: str) -> str:
    """``program`` from labgrid's venv (dfuhil's own finder); LabgridMissing if absent."""
    try:
        return str(labgrid_program(program))
    except InfrastructureError as exc:
        raise LabgridMissing(str(exc)) from None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first found through /proc)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


@dataclass
class LabProcess:
    """One labgrid program we started, its output file and the children it spawned."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    children: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def remember_children(self) -> None:
        """Note its children (ser2net) now: once it is gone, /proc no longer links them."""
        if self.proc.poll() is None:
            self.children.update(descendants(self.pid))

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (``kill``: SIGKILL at once, a crash), then its children, each by pid."""
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)
        for child in sorted(self.children):
            _stop_pid(child)


def _stop_pid(pid: int) -> None:
    """Stop a process that is not our child (we cannot wait() on it): TERM, then KILL."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# labgrid's exporter has ser2net accept on every interface (``tcp,PORT``); the lab's exporters
# find this wrapper first on PATH, which keeps ser2net on loopback and changes nothing else.
SER2NET_LOOPBACK = """#!{python}
import os, re, shutil, sys
real = shutil.which("ser2net", path=os.environ["DFUHIL_REAL_PATH"]) or "/usr/sbin/ser2net"
args = [re.sub(r"\\),tcp,(\\d+)$", r"),tcp,127.0.0.1,\\1", a) for a in sys.argv[1:]]
os.execv(real, [real, *args])
"""


def ser2net_on_loopback(directory: Path) -> Path:
    """A directory holding a ``ser2net`` that is the real one bound to 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "ser2net"
    shim.write_text(SER2NET_LOOPBACK.format(python=sys.executable))
    shim.chmod(0o755)
    return directory


class LabgridLab:
    """A coordinator on 127.0.0.1 and the exporters started through it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.coordinator: LabProcess | None = None
        self.exporters: dict[str, LabProcess] = {}
        self.started: list[LabProcess] = []  # every process ever started, for leftovers()

    # --- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: Sequence[str], identity: str) -> LabProcess:
        log = self.workdir / f"{name}.log"
        path = os.environ.get("PATH", os.defpath)
        shims = ser2net_on_loopback(self.workdir / "bin")
        env = {
            **os.environ,
            "LG_USERNAME": identity,
            "LG_HOSTNAME": identity,
            "PATH": f"{shims}{os.pathsep}{path}",
            "DFUHIL_REAL_PATH": f"{path}{os.pathsep}/usr/sbin",
        }
        env.pop("LG_COORDINATOR", None)  # only the address we pass counts
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        started = LabProcess(name, proc, log)
        self.started.append(started)
        return started

    def start(self) -> None:
        """Start the coordinator and wait until a client gets an answer from it."""
        self.coordinator = self._spawn(
            "coordinator",
            [labgrid_bin("labgrid-coordinator"), "--listen", self.address],
            "coordinator",
        )
        self._wait(
            self.coordinator,
            lambda: self.client("resources", check=False).returncode == 0,
            "the coordinator to answer `labgrid-client resources`",
        )

    def start_exporter(self, host: str, config: Path) -> LabProcess:
        """Start ``labgrid-exporter --name host`` on ``config``; wait until every group of the
        file is visible through the coordinator with every resource available."""
        exporter = self._spawn(
            f"exporter-{host}",
            [
                labgrid_bin("labgrid-exporter"),
                "--name",
                host,
                "--coordinator",
                self.address,
                "--hostname",
                "127.0.0.1",
                str(config),
            ],
            host,
        )
        self.exporters[host] = exporter
        wanted = expected_resources(host, config)
        self._wait(
            exporter,
            lambda: wanted <= self.available(),
            f"exporter {host} to publish {sorted(wanted)}",
        )
        exporter.remember_children()
        return exporter

    def stop_exporter(self, host: str, *, kill: bool = False) -> None:
        """Stop one lab host's exporter (``kill``: as if it crashed) and its ser2net."""
        self.exporters.pop(host).stop(kill=kill)

    def stop(self) -> None:
        """Stop the exporters (and their ser2net), then the coordinator, each by pid."""
        for host in list(self.exporters):
            self.stop_exporter(host)
        if self.coordinator is not None:
            self.coordinator.stop()

    def leftovers(self) -> list[int]:
        """Pids of anything this lab started that still runs (empty after stop())."""
        pids = {p.pid for p in self.started if p.proc.poll() is None}
        pids |= {c for p in self.started for c in p.children if pid_alive(c)}
        return sorted(pids)

    def _wait(self, proc: LabProcess, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not ready():
            if proc.proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.name} exited (code {proc.proc.returncode}) while waiting for {what}:\n"
                    + proc.output()[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"waited {WAIT_S:.0f} s for {what}; {proc.name} said:\n{proc.output()[-3000:]}"
                )
            time.sleep(0.2)

    # --- the client --------------------------------------------------------------------------

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``labgrid-client -x COORDINATOR args...`` as user "dfuhil-test"."""
        env = {**os.environ, "LG_USERNAME": "dfuhil-test", "LG_HOSTNAME": "dfuhil-test"}
        env.pop("LG_COORDINATOR", None)
        result = subprocess.run(
            [labgrid_bin("labgrid-client"), "-x", self.address, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=WAIT_S,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"labgrid-client {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def available(self) -> set[str]:
        """``HOST/GROUP/CLASS/NAME`` of every resource the coordinator shows as available."""
        result = self.client("-v", "resources", check=False)
        if result.returncode != 0:
            return set()
        return {key for key, res in parse_resources(result.stdout).items() if res.get("avail")}

    def resources(self) -> dict[str, dict[str, Any]]:
        """``HOST/GROUP/CLASS/NAME`` -> the resource as the coordinator holds it (``avail``,
        ``acquired``, ``params``), from ``labgrid-client -v resources``."""
        return parse_resources(self.client("-v", "resources").stdout)

    def serial_ports(self, place: str) -> dict[str, int]:
        """``HOST/GROUP/CLASS/NAME`` -> RFC 2217 port of each serial port ``place`` holds
        (None until the exporter's ser2net for it runs)."""
        return {
            key: res["params"]["port"]
            for key, res in self.resources().items()
            if res.get("acquired") == place and res.get("cls") == "NetworkSerialPort"
        }

    def _wait_served(self, place: str) -> None:
        """Wait until every serial port of ``place`` has its ser2net port; note the children."""
        deadline = time.monotonic() + WAIT_S
        while None in self.serial_ports(place).values():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ser2net port for place {place} after {WAIT_S:.0f} s")
            time.sleep(0.1)
        for exporter in self.exporters.values():
            exporter.remember_children()

    @contextlib.contextmanager
    def place(self, name: str, *matches: str) -> Iterator[None]:
        """A place matching ``matches``, acquired by user "dfuhil-test" for the block (an
        exporter starts a RawSerialPort's ser2net only while a place holding it is acquired);
        released and deleted afterwards."""
        self.client("-p", name, "create")
        try:
            for match in matches:
                self.client("-p", name, "add-match", match)
            self.client("-p", name, "acquire")
            try:
                self._wait_served(name)
                yield
            finally:
                self.client("-p", name, "release", check=False)
        finally:
            self.client("-p", name, "delete", check=False)


def expected_resources(host: str, config: Path) -> set[str]:
    """What an exporter file publishes, as ``labgrid-client resources`` lists it: a
    RawSerialPort is served (and listed) as a NetworkSerialPort."""
    data = YAML(typ="safe").load(config.read_text())
    served = {"RawSerialPort": "NetworkSerialPort", "USBSerialPort": "NetworkSerialPort"}
    found = set()
    for group, resources in data.items():
        for name, params in resources.items():
            if name == "location" or not isinstance(params, dict):
                continue
            cls = params.get("cls", name)
            found.add(f"{host}/{group}/{served.get(cls, cls)}/{name}")
    return found


def parse_resources(text: str) -> dict[str, dict[str, Any]]:
    """Parse ``labgrid-client -v resources``: ``Exporter``/``Group``/``Resource`` header lines,
    each resource followed by its data as a pretty-printed Python dict."""
    found: dict[str, dict[str, Any]] = {}
    host = group = ""
    key: str | None = None
    body: list[str] = []

    def flush() -> None:
        if key is not None and body:
            found[key] = ast.literal_eval(" ".join(body))

    for raw in text.splitlines():
        line = raw.strip()
        header = line.startswith(("Exporter '", "Group '", "Resource '"))
        if header:
            flush()
            key, body = None, []
        if line.startswith("Exporter '"):
            host = line.split("'")[1]
        elif line.startswith("Group '"):
            group = line.split("'")[1]
        elif line.startswith("Resource '"):
            name = line.split("'")[1]
            cls = line.split("(", 1)[1].split("/")[2].split("[")[0]
            key = f"{host}/{group}/{cls}/{name}"
        elif key is not None:
            body.append(line)
    flush()
    return found


@contextlib.contextmanager
def labgrid_lab(workdir: Path) -> Iterator[LabgridLab]:
    """A running coordinator for the block; everything started through it stopped at the end."""
    lab = LabgridLab(workdir)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
