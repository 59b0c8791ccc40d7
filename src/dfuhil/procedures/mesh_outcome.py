"""What a mesh DFU left on each node, read the way the bootloader itself records it.

After a transfer the host knows only that the root acknowledged every segment; whether a node
installed the image shows in its device page (the bootloader appends a VERSION entry with the new
application version and sets FLAGS app_intact once the copy is done). Polling that page over the
probe is the bench engineer's `nrfjprog --memrd`, with a deadline in device time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dfuhil.formats.chips import Chip
from dfuhil.formats.devpage import FLAG_APP_INTACT, DevicePage, read_device_page

Reader = Callable[[int, int], bytes]

POLL_DEVICE_S = 0.5  # how often to look, in device seconds (a page read is ~8 KB over SWD)


@dataclass(frozen=True)
class InstalledApp:
    """The application a node's device page says is installed and intact."""

    company_id: int
    app_id: int
    app_version: int
    intact: bool

    def __str__(self) -> str:
        state = "intact" if self.intact else "NOT intact"
        return (
            f"company 0x{self.company_id:08X} app {self.app_id} version {self.app_version} "
            f"({state})"
        )


def installed_app(page: DevicePage | None) -> InstalledApp | None:
    if page is None or page.version is None:
        return None
    flags = page.flags if page.flags is not None else 0
    version = page.version
    return InstalledApp(
        version.company_id, version.app_id, version.app_version, bool(flags & FLAG_APP_INTACT)
    )


def wait_for_app_version(
    read: Reader,
    chip: Chip,
    version: int,
    *,
    timeout_s: float,
    time_scale: float = 1.0,
    poll_s: float = POLL_DEVICE_S,
) -> InstalledApp | None:
    """Poll until the node records ``version`` as installed and intact; the last seen otherwise.

    ``timeout_s`` and ``poll_s`` are device seconds (the virtual farm scales them down).
    """
    deadline = time.monotonic() + timeout_s * time_scale
    while True:
        seen = installed_app(read_device_page(read, chip))
        if seen is not None and seen.app_version == version and seen.intact:
            return seen
        if time.monotonic() >= deadline:
            return seen
        time.sleep(poll_s * time_scale)
