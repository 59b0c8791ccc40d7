"""nRF Desktop's DFU lock, with each SMP transport of the virtual app as one owner.

Source: nRF Connect SDK ``applications/nrf_desktop/src/modules/dfu_mcumgr.c`` and
``src/util/dfu_lock.c``. On every SMP command of the image group or OS reset
(``smp_cmd_is_dfu_cmd``) the module reschedules its 5 s ``DFU_TIMEOUT`` work and claims the
lock; a claim that fails cancels that owner's timer and answers the command with
``MGMT_ERR_EACCESSDENIED`` (``*rc = MGMT_ERR_EACCESSDENIED; return MGMT_CB_ERROR_RC``), so the
client sees ``{"rc": 11}``. The timer's expiry releases the lock. When a different owner claims
a free lock, the previous owner's ``owner_changed`` callback resets MCUmgr's upload state
(``img_mgmt_reset_upload``), so a half-done upload never mixes with another owner's data.

In nRF Desktop the owners are DFU modules (MCUmgr, the config channel); the virtual app treats
its serial and UDP SMP transports as the two owners, which is what a test of "a transfer over
the second transport is refused while the first holds the lock" needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from dfuhil.formats.smp import Group, MgmtErr, OsCmd, SmpHeader
from dfuhil.sim.smp.server import SmpError


def is_dfu_command(header: SmpHeader) -> bool:
    """``smp_cmd_is_dfu_cmd``: any image-group command, and OS reset."""
    return header.group == Group.IMAGE or (
        header.group == Group.OS and header.command_id == OsCmd.RESET
    )


class DfuLock:
    def __init__(
        self,
        timeout_s: float,
        now: Callable[[], float],
        owner_changed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.now = now
        self.owner_changed = owner_changed  # (previous owner, new owner)
        self.owner: str | None = None
        self._previous: str | None = None
        self._deadlines: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, owner: str, header: SmpHeader) -> None:
        """The CMD_RECV hook: raise SmpError(EACCESSDENIED) if ``owner`` may not do this now."""
        if not is_dfu_command(header):
            return
        with self._lock:
            self._expire()
            self._deadlines[owner] = self.now() + self.timeout_s
            if not self._claim(owner):
                del self._deadlines[owner]
                raise SmpError(MgmtErr.EACCESSDENIED, rsn=f"DFU lock held by {self.owner}")

    def holder(self) -> str | None:
        with self._lock:
            self._expire()
            return self.owner

    def _claim(self, owner: str) -> bool:
        if self.owner == owner:
            return True
        if self.owner is not None:
            return False
        self.owner = owner
        previous, self._previous = self._previous, owner
        if previous is not None and previous != owner and self.owner_changed is not None:
            self.owner_changed(previous, owner)
        return True

    def _expire(self) -> None:
        """The owner's timeout work ran: ``dfu_lock_release``."""
        if self.owner is None:
            return
        deadline = self._deadlines.get(self.owner)
        if deadline is not None and self.now() >= deadline:
            del self._deadlines[self.owner]
            self.owner = None
