"""What a mesh DFU left on each node: what the host heard, and what each device page says.

The serial protocol has no END packet and DATA_REQs carry no address, so the host alone knows
little: that the serial node acknowledged every segment, what that node reported about its own
part (the application's DFU START / END / BANK_AVAILABLE events, or, from the serial
bootloader, only a DEVICE_STARTED after it jumped to the new image), and which segments some
node was still asking for. Whether a node installed the image shows in its device page (the
bootloader appends a VERSION entry with the new application version and sets FLAGS app_intact
once the copy is done); polling that page over the probe is the bench engineer's
`nrfjprog --memrd`, with a deadline in device time. A mesh DFU ends with one row per node
(:class:`NodeOutcome`) and is a success only when every expected row is confirmed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from dfuhil.formats.chips import Chip
from dfuhil.formats.devpage import FLAG_APP_INTACT, DevicePage, Fwid, read_device_page
from dfuhil.formats.meshdfu import (
    CommandResponse,
    DfuType,
    EndReason,
    Frame,
    Opcode,
    OperatingMode,
    app_fwid,
)

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


# --- what the serial node says about its own part --------------------------------------------

# serial_evt.h: the DFU events of the mesh application (the serial bootloader sends none).
EVT_DFU_START = 0xA2
EVT_DFU_END = 0xA3
EVT_DFU_BANK_AVAILABLE = 0xA4
ROLE_TARGET = 1
ROLE_RELAY = 2
_ROLE_NAMES = {0: "none", ROLE_TARGET: "target", ROLE_RELAY: "relay", 3: "source"}
_FWID_UNION = 10  # fwid_union_t as the events carry it

# The SDK's timings (NordicSemiconductor/nRF5-SDK-for-Mesh v5.0.0, a165eec):
# * mesh/bootloader/src/dfu_mesh.c: a target validates STATE_TIMEOUT_RAMPDOWN = 30 s after its
#   last segment, then reports DFU END. A target missing a segment puts a DATA_REQ in its beacon
#   slot with TX_REPEATS_REQ = TX_REPEATS_INF and TX_INTERVAL_TYPE_REQ = REGULAR_SLOW, until the
#   segment arrives. A relay forwards a request (over the radio, and to its serial host) only
#   when it is not in its 16-entry packet cache, so repeats reach the host again only once
#   other traffic has turned that cache over.
# * mesh/dfu/src/nrf_mesh_dfu.c: the application's REGULAR_SLOW is
#   DFU_TX_INTERVAL_REGULAR_SLOW_US = 10 s, plus up to DFU_TX_DELAY_RANDOMIZATION_MASK_US =
#   65.535 ms per transmit. The serial bootloader's is faster (transport.c: about 2 s apart), so
#   the application's sets the wait.
RAMPDOWN_S = 30.0
REQUEST_REPEAT_S = 10.0 + 0.065535
# How many of a node's repeats may be lost in a row before the host calls the mesh quiet. At
# 30 % loss per receiver and one relay between that node and the serial node, a repeat reaches
# the host with 0.7 * 0.7 = 0.49; seven lost in a row happen with 0.51^7 < 1 %.
REQUEST_REPEATS_COVERED = 7
REQUEST_QUIET_S = REQUEST_REPEAT_S * REQUEST_REPEATS_COVERED
# Device seconds after its last segment that a serial target gets to send DFU END: the rampdown,
# the signature check and the bank write, and a few of its own lost requests repaired.
END_WAIT_S = RAMPDOWN_S + 3 * REQUEST_REPEAT_S
# Device seconds after the transfer that a node gets to show the new version in its device
# page: the rampdown, validation, the bank copy by the bootloader and a reboot, with margin for
# radio repairs (requests every 10 s).
INSTALL_TIMEOUT_S = 120.0


class Verdict(Enum):
    """What is known about one node at the end of a mesh DFU."""

    CONFIRMED = "confirmed"
    REFUSED = "refused"
    RELAYED = "relayed only"
    REQUESTING = "still requesting"
    RECEIVED = "received, not installed"
    NOT_INSTALLED = "not installed"
    UNCONFIRMED = "not confirmed"
    NEVER_HEARD = "never heard"


@dataclass(frozen=True)
class NodeOutcome:
    """One row of the table a mesh DFU ends with."""

    node: str
    verdict: Verdict
    evidence: str
    fix: str = ""

    @property
    def confirmed(self) -> bool:
        return self.verdict is Verdict.CONFIRMED


# Why a DFU END reason means what it means (nrf_mesh_dfu_types.h), and what to do about it.
_END_FIXES: dict[EndReason, tuple[str, str]] = {
    EndReason.ERROR_UNAUTHORIZED: (
        "the device page holds a public key, and the package is unsigned or signed with "
        "another key",
        "sign the package with the key whose public half is in the device page "
        "(dfuhil mesh genpkg ... --key-file KEY.pem; `dfuhil devpage --show-board NAME` shows "
        "the key the board holds)",
    ),
    EndReason.ERROR_PACKET_LOSS: (
        "more than 64 segments were missing at once: the host sent faster than the mesh relays",
        "slow down: --pacing fixed --interval 500",
    ),
    EndReason.ERROR_TIMEOUT: (
        "no data came for the SDK's timeout",
        "check that the serial node relays to the others (radio range, relays)",
    ),
    EndReason.ERROR_NO_START: (
        "the node never got START (a STATE beacon was not followed by the transfer)",
        "run the transfer again; check the frame log for a refused START",
    ),
    EndReason.ERROR_INVALID_PERSISTENT_STORAGE: (
        "the device page lacks entries the bootloader needs",
        "provision the board again (dfuhil provision --board NAME)",
    ),
    EndReason.ERROR_BANK_IN_BOOTLOADER_AREA: (
        "the image does not fit in a bank below the bootloader",
        "send a smaller image (the bank is half of the application area)",
    ),
    EndReason.ERROR_BANK_AND_DESTINATION_OVERLAP: (
        "the bank for this image would overlap where it is installed",
        "send a smaller image (the bank is half of the application area)",
    ),
}


def end_reason_name(reason: int) -> str:
    try:
        return EndReason(reason).name
    except ValueError:
        return f"END_REASON_{reason}"


def _is_error(reason: int) -> bool:
    """ERROR_* reasons, and reasons this SDK does not define (a newer or broken firmware)."""
    return not end_reason_name(reason).startswith(("SUCCESS", "FWID_VALID", "APP_ABORT"))


@dataclass
class SerialNodeLog:
    """What the serial-attached node said about its own part of the transfer.

    Fed every frame of the conversation. The application (mesh/serial) reports START, END and
    BANK_AVAILABLE as events; the serial bootloader reports nothing, only its acknowledgements
    look different (they carry the packet type), and after a successful transfer it starts the
    new application, whose DEVICE_STARTED is then the only sign on the line.
    """

    bootloader: bool | None = None  # None until the first acknowledgement
    role: int | None = None  # from DFU START
    end_role: int | None = None
    end_reason: int | None = None
    end_fwid: bytes | None = None
    bank_available: bool = False
    started_after: int | None = None  # DEVICE_STARTED mode after the last segment
    outdated: bool = False  # FW_OUTDATED_NO_AUTH: it heard the offer

    def on_ack(self, response: CommandResponse) -> None:
        if self.bootloader is None:
            self.bootloader = response.packet_type is not None

    def on_frame(self, item: Frame, *, after_last: bool) -> None:
        payload = item.payload
        if item.opcode == EVT_DFU_START and len(payload) >= 2 + _FWID_UNION:
            self.role = payload[0]
        elif item.opcode == EVT_DFU_END and len(payload) >= 3 + _FWID_UNION:
            self.end_role, self.end_reason = payload[0], payload[2 + _FWID_UNION]
            self.end_fwid = bytes(payload[2 : 2 + _FWID_UNION])
        elif item.opcode == EVT_DFU_BANK_AVAILABLE:
            self.bank_available = True
        elif item.opcode == Opcode.DFU_FW_OUTDATED_NO_AUTH:
            self.outdated = True
        elif item.opcode == Opcode.DEVICE_STARTED and payload and after_last:
            self.started_after = payload[0]

    @property
    def relays(self) -> bool:
        return ROLE_RELAY in (self.role, self.end_role)

    @property
    def expects_end(self) -> bool:
        """A target reports its end; a relay only times out (600 s in the application)."""
        return not self.relays

    @property
    def finished(self) -> bool:
        """Nothing more will come from this node for this transfer."""
        return self.end_reason is not None or self.started_after is not None

    def outcome(self, name: str, fwid: bytes, waited_s: float) -> NodeOutcome:
        """The serial node's row, from its own words only."""
        if self.end_reason is not None and _is_error(self.end_reason):
            reason = end_reason_name(self.end_reason)
            why, fix = next(
                (text for r, text in _END_FIXES.items() if r == self.end_reason),
                ("", "see the frame log and the node's own log"),
            )
            role = _ROLE_NAMES.get(self.end_role or 0, str(self.end_role))
            because = f": {why}" if why else ""
            return NodeOutcome(name, Verdict.REFUSED, f"DFU END {reason} (as {role}){because}", fix)
        if self.relays:
            return NodeOutcome(
                name,
                Verdict.RELAYED,
                "DFU START as relay: it forwards this package but installs nothing (the package "
                "is not an upgrade for its application: company id, application id, version)",
                "`dfuhil mesh check PKG --board NAME` tells which field differs",
            )
        if self.end_reason is not None:
            reason = end_reason_name(self.end_reason)
            if self.end_reason != EndReason.SUCCESS:
                return NodeOutcome(name, Verdict.UNCONFIRMED, f"DFU END {reason}")
            if self.end_fwid is not None and self.end_fwid != fwid[:_FWID_UNION].ljust(
                _FWID_UNION, b"\x00"
            ):
                return NodeOutcome(
                    name,
                    Verdict.UNCONFIRMED,
                    f"DFU END SUCCESS for another firmware id ({self.end_fwid.hex().upper()})",
                )
            bank = ", bank available (the bootloader installs it)" if self.bank_available else ""
            return NodeOutcome(name, Verdict.CONFIRMED, f"DFU END SUCCESS as target{bank}")
        if self.bootloader and self.started_after == OperatingMode.APPLICATION:
            return NodeOutcome(
                name,
                Verdict.CONFIRMED,
                "the serial bootloader started the application after the transfer "
                "(DEVICE_STARTED mode=APPLICATION)",
            )
        board_fix = "with --board NAME the device page is read over the probe"
        if self.bootloader:
            return NodeOutcome(
                name,
                Verdict.UNCONFIRMED,
                f"the serial bootloader reports no end over serial (waited {waited_s:.0f} s)",
                board_fix,
            )
        if self.role is None and not self.outdated:
            return NodeOutcome(
                name,
                Verdict.NEVER_HEARD,
                "no DFU event at all (firmware without mesh serial DFU events, before SDK v3?)",
                board_fix,
            )
        return NodeOutcome(
            name,
            Verdict.UNCONFIRMED,
            f"no DFU END within {waited_s:.0f} s (device) after the last segment",
            board_fix,
        )


def requests_outcome(open_requests: tuple[int, ...], last_age_s: float | None) -> NodeOutcome:
    """The row for nodes the host knows only by their DATA_REQs (they carry no address)."""
    shown = ", ".join(str(s) for s in open_requests[:8]) + (
        ", ..." if len(open_requests) > 8 else ""
    )
    noun = "segment" if len(open_requests) == 1 else "segments"
    age = f", the last {last_age_s:.0f} s before the end" if last_age_s is not None else ""
    return NodeOutcome(
        "(a node behind the serial node)",
        Verdict.REQUESTING,
        f"DATA_REQ for {noun} {shown} still coming{age}; the SDK repeats a request every "
        f"{REQUEST_REPEAT_S:.0f} s until the segment arrives",
        "a node out of reach of every holder of the segment: check radio range and relays; "
        "--board NAME reads each node's device page",
    )


# --- the device pages of the mesh ------------------------------------------------------------


def app_version_fwid(company_id: int, app_id: int, app_version: int) -> Fwid:
    """The VERSION fields a node shows once it installed this application (others ignored)."""
    return Fwid(0, 0, 0, company_id, app_id, app_version)


@dataclass(frozen=True)
class PageWatch:
    """One node whose device page is read over its probe until it shows the new version."""

    name: str
    read: Reader
    chip: Chip


def page_outcome(name: str, page: DevicePage | None, fwid: Fwid, before: str) -> NodeOutcome:
    """A node's row from its device page: installed, received into a bank, or not."""
    seen = installed_app(page)
    wanted = (fwid.company_id, fwid.app_id, fwid.app_version)
    if (
        seen is not None
        and seen.intact
        and (seen.company_id, seen.app_id, seen.app_version) == (wanted)
    ):
        return NodeOutcome(name, Verdict.CONFIRMED, f"device page: {seen}")
    fwid_bytes = app_fwid(*wanted)
    banked = page is not None and any(
        b.dfu_type == DfuType.APPLICATION and b.fwid_bytes[: len(fwid_bytes)] == fwid_bytes
        for b in page.banks
    )
    if banked:
        return NodeOutcome(
            name,
            Verdict.RECEIVED,
            f"device page: a bank holds version {fwid.app_version}, installed is {seen}{before}",
            "the bootloader copies a bank at the next reset; reset the node and read it again",
        )
    return NodeOutcome(
        name,
        Verdict.NOT_INSTALLED,
        f"device page: {seen if seen is not None else 'no VERSION entry'}{before}",
        "the node did not get the whole image: check its radio range and the relays on its way "
        "(is one down?), then send the package again",
    )


def confirm_pages(
    watches: list[PageWatch],
    fwid: Fwid,
    *,
    timeout_s: float = INSTALL_TIMEOUT_S,
    time_scale: float = 1.0,
    poll_s: float = POLL_DEVICE_S,
) -> dict[str, NodeOutcome]:
    """Read every node's device page until each shows ``fwid`` installed, or the deadline.

    ``timeout_s`` and ``poll_s`` are device seconds; the outcome of each node is its last read.
    """
    deadline = time.monotonic() + timeout_s * time_scale
    outcomes: dict[str, NodeOutcome] = {}
    pending = list(watches)
    while True:
        for watch in list(pending):
            page = read_device_page(watch.read, watch.chip)
            outcome = page_outcome(watch.name, page, fwid, f" after {timeout_s:.0f} s")
            outcomes[watch.name] = outcome
            if outcome.confirmed:
                pending.remove(watch)
        if not pending or time.monotonic() >= deadline:
            return outcomes
        time.sleep(poll_s * time_scale)


def confirm_mesh(
    serial: NodeOutcome,
    watches: list[PageWatch],
    fwid: Fwid,
    open_requests: tuple[int, ...] = (),
    last_request_age: float | None = None,
    *,
    timeout_s: float = INSTALL_TIMEOUT_S,
    time_scale: float = 1.0,
) -> list[NodeOutcome]:
    """One row per expected node from its device page, the serial node (``serial.node``) first.

    The serial node's own words replace its page row when they say more: a refusal with its
    reason, or that it only relayed. Open requests add a row of their own.
    """
    pages = confirm_pages(watches, fwid, timeout_s=timeout_s, time_scale=time_scale)
    rows = []
    for watch in watches:
        row = pages[watch.name]
        own_words = serial.verdict in (Verdict.REFUSED, Verdict.RELAYED)
        if watch.name == serial.node and not row.confirmed and own_words:
            row = serial
        rows.append(row)
    if open_requests:
        rows.append(requests_outcome(open_requests, last_request_age))
    return rows


def table(outcomes: list[NodeOutcome]) -> list[str]:
    """The rows as aligned lines, with the fix under each row that has one."""
    width = max([len(o.node) for o in outcomes] + [4])
    verdict_width = max(len(v.value) for v in Verdict)
    lines = [f"  {'node':<{width}}  {'verdict':<{verdict_width}}  evidence"]
    for o in outcomes:
        lines.append(f"  {o.node:<{width}}  {o.verdict.value:<{verdict_width}}  {o.evidence}")
        if o.fix and not o.confirmed:
            lines.append(f"  {'':<{width}}  {'':<{verdict_width}}  fix: {o.fix}")
    return lines
