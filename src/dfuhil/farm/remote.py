"""Where a board on another lab host is reachable while its labgrid place is leased.

A lease of a remote board (lab-places acquires the place) yields these endpoints, read from the
place's resources: the RFC 2217 URL ser2net serves the board's serial port on, the probe
endpoint (a J-Link Remote Server, or a virtual farm's TCP debug port) and the SMP UDP address.
The Rig (farm/rig.py) is told them with ``attach_remote`` and opens every link through them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteEndpoints:
    """What a lease of a remote board gives the rest of dfuhil."""

    host: str  # the lab host (exporter name)
    place: str
    serial_url: str  # "rfc2217://HOST:PORT"
    probe: str  # "HOST:PORT" (J-Link Remote Server, or the virtual farm's TCP debug port)
    smp_udp: str | None = None
    ble_hci: str | None = None  # a bumble HCI transport name onto the lab host's radio

    @property
    def where(self) -> str:
        """How messages name the board's location: lab host and place."""
        return f"lab host {self.host}, place {self.place}"


def split_host_port(address: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``HOST:PORT`` (or a bare ``HOST`` when a default port applies) as (host, port)."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit():
        return host.strip("[]"), int(port)
    return address, default_port
