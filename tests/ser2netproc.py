"""ser2net serving one serial device over RFC 2217 on loopback, started the way labgrid's
exporter starts it (labgrid/remote/exporter.py, SerialPortExport for ser2net >= 4.2), except
that it binds 127.0.0.1 only. Stopped by its pid, never by name.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WAIT_S = 10.0  # upper bound for ser2net to listen; never a speed claim


def ser2net_binary() -> str | None:
    found = shutil.which("ser2net")
    if found is None and Path("/usr/sbin/ser2net").is_file():
        found = "/usr/sbin/ser2net"
    return found


def free_port() -> int:
    """An ephemeral loopback port (labgrid's exporter picks its ser2net port the same way)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(binary: str, device: str, baud: int, port: int) -> list[str]:
    """labgrid's ser2net command line (YAML given with -Y, '#' standing for a newline)."""
    return [
        binary,
        "-d",
        "-n",
        "-Y",
        f"connection: &con01#  accepter: telnet(rfc2217,mode=server),tcp,127.0.0.1,{port}",
        "-Y",
        f"  connector: serialdev(nouucplock=true),{device},{baud}n81,local",
        "-Y",
        "  options:",
        "-Y",
        "    max-connections: 10",
    ]


@dataclass
class Ser2net:
    process: subprocess.Popen[bytes]
    port: int
    device: str

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)


def start(device: str, baud: int = 115200) -> Ser2net:
    binary = ser2net_binary()
    if binary is None:
        raise RuntimeError("ser2net is not installed: run `make lab-setup`")
    port = free_port()
    process = subprocess.Popen(
        command(binary, device, baud, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    server = Ser2net(process, port, device)
    deadline = time.monotonic() + WAIT_S
    while True:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"ser2net for {device} exited at once: {err}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"ser2net for {device} does not listen on 127.0.0.1:{port}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(device: str, baud: int = 115200) -> Iterator[Ser2net]:
    server = start(device, baud)
    try:
        yield server
    finally:
        server.stop()
