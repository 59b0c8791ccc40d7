"""Leases of boards on other lab hosts: their labgrid place, acquired, with a heartbeat.

labgrid's own locks never expire (labgrid issue #1739: a cancelled CI job leaves its places
acquired until someone kicks them). So a :class:`PlaceLease` records on the place who holds it
and a heartbeat, renewed by a daemon thread every ``stale_after_s / 3`` while held:

    dfuhil_holder=<run, worker, pid N on HOST>  dfuhil_session=<labgrid user that acquired>
    dfuhil_heartbeat=<unix time>

A place held by another dfuhil run whose heartbeat is older than the bound is taken over
(``ReleasePlace`` with ``fromuser``, what ``labgrid-client release --kick`` does; the
coordinator releases only if that user still holds it, so two runs kicking one dead holder
never kick each other) and the log says whose and how stale (the heartbeat is the holder's
unix time: lab hosts and CI machines keep their clocks in step, NTP, as labgrid's own
reservations assume). A place acquired with no dfuhil
heartbeat of its acquirer is a human's (``labgrid-client acquire``): it counts as live and is
never kicked. Same interface as :class:`dfuhil.farm.lease.BoardLease`, so ``acquire_all`` and
``lease_order`` mix both kinds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dfuhil.errors import InfrastructureError
from dfuhil.farm.labgrid_client import LabgridClient, PlaceRefused
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.places import resolve_endpoints
from dfuhil.farm.remote import RemoteEndpoints

STALE_AFTER_S = float(os.environ.get("DFUHIL_PLACE_STALE_S", "60"))
POLL_S = 0.5
HOLDER, SESSION, HEARTBEAT = "dfuhil_holder", "dfuhil_session", "dfuhil_heartbeat"

log = logging.getLogger(__name__)


def place_holder(place: dict[str, Any]) -> tuple[str, float | None]:
    """Who holds an acquired place, and the age of its dfuhil heartbeat (None: not dfuhil's).

    The tags count only if the labgrid user that acquired the place wrote them: tags left
    behind by an earlier holder say nothing about the present one."""
    tags = place["tags"]
    acquired = place["acquired"]
    if tags.get(SESSION) != acquired or HOLDER not in tags:
        return f"{acquired} (no dfuhil heartbeat: a labgrid-client user)", None
    try:
        age = time.time() - float(tags.get(HEARTBEAT, ""))
    except ValueError:
        return f"{acquired} (no dfuhil heartbeat: a labgrid-client user)", None
    return str(tags[HOLDER]), age


class PlaceLease:
    def __init__(
        self,
        board: BoardSpec,
        client: LabgridClient,
        *,
        timeout_s: float = 600,
        holder: str = "",
        on_wait: Callable[[str], None] | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ):
        """``holder`` says who takes it (run, worker); ``on_wait`` hears whom it waits for;
        a dfuhil holder silent for ``stale_after_s`` is taken over."""
        assert board.place is not None
        self.board = board
        self.place = board.place
        self.key = f"place-{board.place}"
        self.client = client
        self.timeout_s = timeout_s
        self.holder = holder
        self.on_wait = on_wait
        self.stale_after_s = stale_after_s
        self.endpoints: RemoteEndpoints | None = None
        self.lost: str | None = None  # why the place stopped being ours while held
        self._stop: threading.Event | None = None
        self._beat: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._stop is not None

    @property
    def who(self) -> str:
        who = f"{self.holder}, " if self.holder else ""
        return f"{who}pid {os.getpid()} on {socket.gethostname()}"

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        waiting = False
        while True:
            try:
                self.client.call("acquire", place=self.place)
                break
            except PlaceRefused as exc:
                if "does not exist" in str(exc):
                    raise InfrastructureError(
                        f"labgrid place {self.place} does not exist on {self.client.address}",
                        "run `dfuhil farm places BOARDS.yaml`",
                        board=self.board.name,
                    ) from None
                if "already acquired" not in str(exc):
                    raise InfrastructureError(
                        f"labgrid refused place {self.place}: {exc}",
                        "see `labgrid-client -p PLACE show`",
                        board=self.board.name,
                    ) from None
            place = self.client.call("places").get(self.place)
            if place is None or not place["acquired"]:
                continue  # released meanwhile: try again at once
            holder, age = place_holder(place)
            if age is not None and age > self.stale_after_s:
                log.warning(
                    "board %s: taking over labgrid place %s from %s: its heartbeat is %.0f s "
                    "old (bound %.0f s)",
                    self.board.name,
                    self.place,
                    holder,
                    age,
                    self.stale_after_s,
                )
                self.client.call("release", place=self.place, fromuser=place["acquired"])
                continue
            if not waiting:
                waiting = True
                never = " (never taken over)" if age is None else ""
                message = (
                    f"board {self.board.name} (labgrid place {self.place}) is held by "
                    f"{holder}{never}: waiting"
                )
                log.warning(message)
                if self.on_wait is not None:
                    self.on_wait(message)
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"labgrid place {self.place} still held after {self.timeout_s:.0f} s by "
                    f"{holder}",
                    "wait for that holder to finish, or stop it (labgrid-client -p "
                    f"{self.place} release --kick, if you are sure it is gone)",
                    board=self.board.name,
                )
            time.sleep(POLL_S)
        try:
            self._renew()
            self.endpoints = resolve_endpoints(self.board, self.client)
        except BaseException:
            self._release_place()
            raise
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeat, args=(self._stop,), name=f"heartbeat {self.place}", daemon=True
        )
        self._beat.start()

    def _renew(self) -> None:
        self.client.call(
            "set_tags",
            place=self.place,
            tags={HOLDER: self.who, SESSION: self.client.name, HEARTBEAT: f"{time.time():.1f}"},
        )

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.stale_after_s / 3):
            try:
                place = self.client.call("places").get(self.place)
                if place is None or place["acquired"] != self.client.name:
                    # Taken over (our heartbeat went stale: a stopped process, a lost network)
                    # or kicked by hand: whatever runs now on the board is not ours alone.
                    who = place_holder(place)[0] if place and place["acquired"] else "nobody"
                    self.lost = f"labgrid place {self.place} was taken from this run (now: {who})"
                    log.error("board %s: %s", self.board.name, self.lost)
                    return
                self._renew()
            except Exception as exc:  # the next link operation reports the rig; keep trying
                log.warning(
                    "board %s: heartbeat of place %s failed: %s", self.board.name, self.place, exc
                )

    def check_held(self) -> None:
        """InfrastructureError if the place was taken from this lease while it was held: what
        ran on the board meanwhile may not have been this run's alone."""
        if self.lost is not None:
            raise InfrastructureError(
                self.lost,
                "keep a holder's heartbeat alive (a process stopped for longer than the bound, "
                f"{self.stale_after_s:.0f} s, loses its places), then rerun",
                board=self.board.name,
            )

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        assert self._beat is not None
        self._beat.join()
        self._stop = self._beat = None
        self.endpoints = None
        self._release_place()

    def _release_place(self) -> None:
        """Release (only if still ours), then drop our tags unless someone took it since."""
        try:
            self.client.call("release", place=self.place, fromuser=self.client.name)
            place = self.client.call("places").get(self.place)
            if place is not None and not place["acquired"]:
                self.client.call(
                    "set_tags", place=self.place, tags={HOLDER: "", SESSION: "", HEARTBEAT: ""}
                )
        except (InfrastructureError, PlaceRefused) as exc:
            log.warning("board %s: releasing place %s failed: %s", self.board.name, self.place, exc)

    def __enter__(self) -> PlaceLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
