"""Per-board leases so parallel workers and separate runs never share a board.

A lease is an exclusive ``flock`` on a file named after the probe. The kernel drops it when the
holder dies (even by kill -9), so a crashed nightly run never leaves a board locked (labgrid's
stale-lock trouble); the file records who holds it, so a waiting run can say whom it waits for.
Several boards are always leased in one global order (:func:`lease_order`), so two multi-board
holders can never deadlock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from dfuhil.errors import InfrastructureError
from dfuhil.farm.model import BoardSpec

LOCK_DIR = Path(os.environ.get("DFUHIL_LOCK_DIR", Path(tempfile.gettempdir()) / "dfuhil-locks"))
POLL_S = 0.2

log = logging.getLogger(__name__)


def lease_key(board: BoardSpec, scope: int | None = None) -> str:
    """The lock name: the J-Link (whichever tool drives it: two workers using nrfutil and
    pynrfjprog must not share one), plus the farm process of a virtual board (same SNR)."""
    return f"{board.probe.kind}-{board.probe.snr}" + (f"-farm{scope}" if scope else "")


class BoardLease:
    def __init__(
        self,
        board: BoardSpec,
        *,
        scope: int | None = None,
        timeout_s: float = 600,
        holder: str = "",
        on_wait: Callable[[str], None] | None = None,
    ):
        """``holder`` says who takes it (run, worker); ``on_wait`` hears whom it waits for."""
        self.board = board
        self.key = lease_key(board, scope)
        self.path = LOCK_DIR / f"{self.key}.lock"
        self.timeout_s = timeout_s
        self.holder = holder
        self.on_wait = on_wait
        self._file: TextIO | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        deadline = time.monotonic() + self.timeout_s
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(handle)
                if not waiting:
                    waiting = True
                    message = f"board {self.board.name} is leased by {holder}: waiting"
                    log.warning(message)
                    if self.on_wait is not None:
                        self.on_wait(message)
                if time.monotonic() > deadline:
                    handle.close()
                    raise InfrastructureError(
                        f"board still leased after {self.timeout_s:.0f} s by {holder}",
                        f"wait for that run to finish, or stop it; the lock is {self.path}",
                        board=self.board.name,
                    ) from None
                time.sleep(POLL_S)
        handle.seek(0)
        handle.truncate()
        who = f"{self.holder}, " if self.holder else ""
        handle.write(f"{who}pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> BoardLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(handle: TextIO) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process (it wrote no name)"


def local_holder(board: BoardSpec) -> str | None:
    """Who holds the board's lock now (any farm process's, for a virtual board), or None.

    A lock file outlives its lease (it is never removed), so only a lock taken now counts."""
    key = lease_key(board)
    for path in sorted(LOCK_DIR.glob(f"{key}.lock")) + sorted(LOCK_DIR.glob(f"{key}-farm*.lock")):
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(handle)
    return None


def lease_order(leases: Iterable[BoardLease]) -> list[BoardLease]:
    """The one global order every holder of several boards takes them in: by lock name."""
    return sorted(leases, key=lambda lease: lease.key)


def acquire_all(leases: Iterable[BoardLease]) -> list[BoardLease]:
    """Take every lease in the global order; on any failure release what was taken."""
    ordered = lease_order(leases)
    with contextlib.ExitStack() as taken:
        for lease in ordered:
            lease.acquire()
            taken.callback(lease.release)
        taken.pop_all()
    return ordered
