"""Finding a board on the air: by its advertised name (CONFIG_BT_DEVICE_NAME) or its address.

A name is only an identity if exactly one device advertises it: after the first match the
scan goes on for a short while, and a second address with the same name is an error that lists
both (the fix: give the address). A name nobody advertises is reported with what was seen.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from bumble import hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Device

from dfuhil.errors import InfrastructureError, InputError, Problem

__all__ = ["DUPLICATE_WINDOW_S", "BleTarget", "Seen", "find_device"]

# After a name first matches, how long to listen for a second device advertising it (Zephyr's
# fast advertising interval is 100-150 ms: several rounds).
DUPLICATE_WINDOW_S = 1.0
_ADDRESS = re.compile(r"^(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}(?:/P)?$")


@dataclass(frozen=True)
class BleTarget:
    """``--ble`` as given: an address (``AA:BB:CC:DD:EE:FF``, ``/P`` for public) or a name."""

    name: str | None = None
    address: str | None = None

    @classmethod
    def parse(cls, text: str) -> BleTarget:
        text = text.strip()
        if not text:
            raise InputError("--ble: empty; give the board's advertised name or its address")
        if _ADDRESS.match(text):
            return cls(address=text.upper())
        return cls(name=text)

    def __str__(self) -> str:
        return self.address or repr(self.name)


@dataclass
class Seen:
    """Devices heard during a scan: address -> advertised name (or '')."""

    names: dict[str, str] = field(default_factory=dict)

    def add(self, advertisement: Advertisement) -> str:
        address = str(advertisement.address)
        name = _name(advertisement.data)
        if name or address not in self.names:
            self.names[address] = name or self.names.get(address, "")
        return self.names[address]

    def matching(self, name: str) -> list[str]:
        return sorted(a for a, n in self.names.items() if n == name)

    def describe(self) -> str:
        if not self.names:
            return "no device at all"
        return ", ".join(f"{n or '(no name)'} {a}" for a, n in sorted(self.names.items()))


def _name(data: AdvertisingData) -> str:
    for kind in (AdvertisingData.COMPLETE_LOCAL_NAME, AdvertisingData.SHORTENED_LOCAL_NAME):
        value = data.get(kind)
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return ""


def _same_address(address: hci.Address, wanted: str) -> bool:
    text = str(address).upper()
    return text == wanted or text.removesuffix("/P") == wanted.removesuffix("/P")


async def find_device(
    device: Device,
    target: BleTarget,
    timeout_s: float,
    *,
    board: str | None = None,
    hci_name: str = "",
    duplicate_window_s: float = DUPLICATE_WINDOW_S,
) -> hci.Address:
    """The address of the one device that advertises ``target``; errors name the board."""
    seen = Seen()
    found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
    first_match: list[hci.Address] = []

    def on_advertisement(advertisement: Advertisement) -> None:
        name = seen.add(advertisement)
        if found.done() or (
            not advertisement.is_connectable and not advertisement.is_scan_response
        ):
            return
        if target.address is not None and _same_address(advertisement.address, target.address):
            found.set_result(advertisement.address)
        elif target.name is not None and name == target.name and not first_match:
            first_match.append(advertisement.address)

    device.on(device.EVENT_ADVERTISEMENT, on_advertisement)
    await device.start_scanning(filter_duplicates=False)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not found.done() and loop.time() < deadline and not first_match:
            await asyncio.wait({found}, timeout=min(0.05, max(0.0, deadline - loop.time())))
        if first_match and target.name is not None:
            await asyncio.sleep(duplicate_window_s)  # another board with the same name?
    finally:
        device.remove_listener(device.EVENT_ADVERTISEMENT, on_advertisement)
        await device.stop_scanning()
    if found.done():
        return found.result()
    who = f"board {board}" if board else "the board"
    if target.name is not None and first_match:
        matches = seen.matching(target.name)
        if len(matches) > 1:
            raise InputError(
                Problem(
                    "",
                    None,
                    "--ble",
                    f"{who}: {len(matches)} devices advertise the name {target.name!r}: "
                    f"{', '.join(matches)}; nothing was sent. Give the address instead "
                    "(--ble ADDRESS, or boards.yaml ble.address), or give each board its own "
                    "CONFIG_BT_DEVICE_NAME",
                )
            )
        return first_match[0]
    raise InfrastructureError(
        f"no device advertising {target} was seen in {timeout_s:g} s on {hci_name or 'the radio'} "
        f"(seen: {seen.describe()})",
        "is the board powered and running firmware with Bluetooth SMP "
        "(CONFIG_MCUMGR_TRANSPORT_BT), advertising (not connected to another host), in range? "
        "is the name its CONFIG_BT_DEVICE_NAME (boards.yaml ble.name)?",
        board=board,
    )
