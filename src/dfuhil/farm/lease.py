"""Per-board leases so parallel workers never share a board.

A lease is an exclusive ``flock`` on a file named after the probe. The kernel drops it when the
holder dies, so a crashed nightly run never leaves a board locked (labgrid's stale-lock trouble);
the file records who holds it, so a waiting run can say whom it waits for.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TextIO

from dfuhil.errors import InfrastructureError
from dfuhil.farm.model import BoardSpec

LOCK_DIR = Path(os.environ.get("DFUHIL_LOCK_DIR", Path(tempfile.gettempdir()) / "dfuhil-locks"))


class BoardLease:
    def __init__(self, board: BoardSpec, *, scope: int | None = None, timeout_s: float = 600):
        """``scope`` separates virtual boards of different farm processes (same SNR, no clash)."""
        key = f"{board.probe.kind}-{board.probe.snr}" + (f"-farm{scope}" if scope else "")
        self.board = board
        self.path = LOCK_DIR / f"{key}.lock"
        self.timeout_s = timeout_s
        self._file: TextIO | None = None

    def acquire(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    raise InfrastructureError(
                        f"board still leased after {self.timeout_s:.0f} s by {holder}",
                        f"wait for that run to finish, or stop it; the lock is {self.path}",
                        board=self.board.name,
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
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
