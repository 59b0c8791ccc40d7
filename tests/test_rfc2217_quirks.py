"""pyserial's RFC 2217 client quirks, absorbed once in dfuhil.links.serial_port: the URL options
labgrid's SerialDriver uses, no write timeout (pyserial refuses one), and an open whose purge is
not acknowledged in time (labgrid #1396, #1779) retried instead of failing the board. The
server here is pyserial's own RFC 2217 PortManager in front of a loop:// port (what is written
comes back), made to ignore purges."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import serial
from serial import rfc2217

from dfuhil.errors import InfrastructureError
from dfuhil.links import serial_port
from dfuhil.links.console import Console
from dfuhil.links.serial_port import network_url, open_serial, port_options


def test_an_rfc2217_url_gets_labgrids_options_unless_it_names_them() -> None:
    assert network_url("rfc2217://h:1") == "rfc2217://h:1?ign_set_control&timeout=5"
    assert network_url("rfc2217://h:1?timeout=9") == "rfc2217://h:1?timeout=9&ign_set_control"
    assert network_url("rfc2217://h:1?ign_set_control&timeout=2") == (
        "rfc2217://h:1?ign_set_control&timeout=2"
    )
    assert network_url("/dev/ttyACM0") == "/dev/ttyACM0"
    assert network_url("socket://h:1") == "socket://h:1"


def test_no_write_timeout_goes_to_pyserials_rfc2217_client() -> None:
    remote = port_options("rfc2217://h:1", 115200, False, 0.1, write_timeout=2.0)
    assert "write_timeout" not in remote and "exclusive" not in remote
    local = port_options("/dev/ttyACM0", 115200, False, 0.1, write_timeout=2.0)
    assert local["write_timeout"] == 2.0 and local["exclusive"] is True


class _DeafToPurge(rfc2217.PortManager):  # type: ignore[misc]
    """pyserial's server side, not answering the first ``ignore`` purge requests."""

    ignore = 0

    def _telnet_process_subnegotiation(self, suboption: bytes) -> None:
        if suboption[1:2] == rfc2217.PURGE_DATA and self.ignore > 0:
            type(self).ignore -= 1
            return
        super()._telnet_process_subnegotiation(suboption)


@contextlib.contextmanager
def rfc2217_server(ignore_purges: int) -> Iterator[str]:
    """The URL of a loopback RFC 2217 server in front of a loop:// port."""
    device = serial.serial_for_url("loop://", timeout=0.05)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()
    _DeafToPurge.ignore = ignore_purges

    class _Conn:  # PortManager writes its answers with .write()
        def __init__(self, sock: socket.socket) -> None:
            self.write = sock.sendall

    def serve(conn: socket.socket) -> None:
        manager = _DeafToPurge(device, _Conn(conn))
        conn.settimeout(0.05)
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    data = None
                except OSError:
                    return
                if data == b"":
                    return
                if data:
                    device.write(b"".join(manager.filter(data)))
                out = device.read(device.in_waiting or 1)
                if out:
                    conn.sendall(b"".join(manager.escape(out)))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"rfc2217://127.0.0.1:{listener.getsockname()[1]}?timeout=0.5"
    finally:
        stop.set()
        listener.close()
        thread.join(2.0)
        device.close()


def _options(url: str) -> dict[str, Any]:
    return port_options(url, 115200, False, 0.1)


def test_an_open_whose_purge_is_not_acknowledged_is_retried(monkeypatch: Any) -> None:
    monkeypatch.setattr(serial_port, "_NEGOTIATION_RETRY_S", 0.0)
    with rfc2217_server(ignore_purges=1) as url:
        port = open_serial(url, _options(url))
        try:
            port.write(b"ping\r\n")
            assert port.read(6) == b"ping\r\n"
        finally:
            port.close()


def test_a_purge_never_acknowledged_is_an_infrastructure_error_saying_so(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(serial_port, "_NEGOTIATION_RETRY_S", 0.0)
    with rfc2217_server(ignore_purges=99) as url:
        console = Console(url, name="b1", where="lab host lab-a, place p1")
        with pytest.raises(InfrastructureError) as raised:
            console.open()
    message = str(raised.value)
    assert "RFC 2217 negotiation" in message and "purge" in message
    assert "lab host lab-a, place p1" in message
