"""``dfuhil mcuboot upgrade``: check, upload, test, reset, see it boot, confirm, re-check.

The seed workflow's script confirmed the new hash before the image had ever booted, so an update
that crashes at boot was made permanent (or, with overwrite-only, reported done while the board
looped). This procedure confirms only what it has seen: the application's banner after the reset
without a fault within the settle time (or, without a console, the SMP server answering again),
the new image hash active where the mode runs it (slot 0 for swaps and overwrite-only; in
direct-xip, whichever slot MCUboot chose), MCUboot's own "Image version" line agreeing. Then it
confirms where the mode needs it (the host, or waits for an application that confirms itself:
``confirm: app``), reads the state again, and, given a probe, reads the slots back over SWD
(:mod:`dfuhil.procedures.mcuboot_readback`). Anything else ends in an :class:`UpgradeResult`
that says what MCUboot did (reverted, erased, fault, serial recovery, no bootable image) with
the boot-log diagnosis.

Library only: the command line and the ``mcuboot`` fixture call :func:`upgrade`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from dfuhil.errors import DfuhilError, InfrastructureError, InputError, Problem, ProductError
from dfuhil.formats.mcuboot import ImageVersion
from dfuhil.formats.mcuboot_trailer import MODE_NUMBERS, Mode
from dfuhil.links.async_loop import Progress
from dfuhil.links.console import ExpectTimeout
from dfuhil.links.smp_link import SlotState, SmpLink, SmpRefused, UploadResult
from dfuhil.procedures.boot_diagnosis import Diagnosis, diagnose
from dfuhil.procedures.mcuboot_dfu import Boot, ImageInfo, describe_slots, image_info, wait_for_boot
from dfuhil.procedures.mcuboot_readback import SWAP_MODES, XIP_MODES, Readback, read_back

if TYPE_CHECKING:
    from dfuhil.farm.model import BoardSpec
    from dfuhil.formats.mcuboot_build import FlashGeometry
    from dfuhil.links.console import Console

__all__ = [
    "UpgradeResult",
    "UpgradeSettings",
    "Verdict",
    "no_boot_verdict",
    "not_running_verdict",
    "upgrade",
]

Say = Callable[[str], None]
Confirmer = Literal["host", "app"]
Verdict = Literal[
    "upgraded",
    "already-running",
    "reverted",
    "erased",
    "fault",
    "serial-recovery",
    "no-bootable-image",
    "not-applied",
    "not-confirmed",
    "no-answer",
    "contradiction",
]
# Device seconds: MCUboot validates (and may swap a 476 KiB slot, ~20 s on an nRF52840), then
# the application starts; an app that faults within SETTLE of its banner did not boot; an app
# that confirms itself does so early (nRF Desktop: at DFU backend init).
BOOT_DEVICE_S = 60.0
SETTLE_DEVICE_S = 2.0
CONFIRM_DEVICE_S = 5.0
RESET_GRACE_DEVICE_S = 1.0  # Zephyr resets 250 ms after answering; do not hear the old app
BOOT_MARGIN_S = 5.0  # wall seconds on top of the scaled device times
NOTHING_TO_CONFIRM: tuple[Mode, ...] = ("overwrite-only", "direct-xip", "single-slot")
RECOVERY = r"Enter the serial recovery mode|Entering serial recovery"


@dataclass(frozen=True)
class UpgradeSettings:
    """How the board's MCUboot was built and how long things take on its clock."""

    mode: Mode | None = None  # None: ask the board (bootloader info), else act generically
    confirm: Confirmer = "host"
    banner: str | None = None  # the application's banner regex (needs a console)
    time_scale: float = 1.0  # wall seconds per device second
    window: int | None = None
    resume: bool = True

    @classmethod
    def for_board(cls, board: BoardSpec, time_scale: float) -> UpgradeSettings:
        spec = board.mcuboot
        app = board.firmware.application if board.firmware else None
        return cls(
            mode=spec.mode if spec else None,
            confirm=spec.confirm if spec else "host",
            banner=app.banner if app is not None and app.banner else None,
            time_scale=time_scale,
        )

    def wall(self, device_s: float) -> float:
        return device_s * self.time_scale


@dataclass(frozen=True)
class UpgradeResult:
    """How the upgrade ended; ``ok`` only when the new image runs and stays."""

    verdict: Verdict
    who: str
    summary: str  # one sentence: what happened
    new: ImageInfo
    mode: Mode | None
    old_version: str | None = None
    upload: UploadResult | None = None
    boot: Boot | None = None
    slots: tuple[SlotState, ...] = ()
    readback: Readback | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.verdict in ("upgraded", "already-running")

    @property
    def diagnosis(self) -> Diagnosis | None:
        return self.boot.diagnosis if self.boot is not None else None

    def text(self) -> str:
        """The report a person reads: the verdict, the board's state, the diagnosis."""
        head = ("" if self.ok else "UPGRADE FAILED: ") + f"{self.who}: {self.summary}"
        parts = [head, *(f"note: {n}" for n in self.notes)]
        if self.slots:
            parts.append("image list:\n" + describe_slots(list(self.slots)))
        if self.readback is not None:
            parts.append(str(self.readback))
        diagnosis = self.diagnosis
        if diagnosis is not None and not (self.ok and diagnosis.ok):
            parts.append(_abridged(diagnosis))
        return "\n".join(parts)


def _abridged(diagnosis: Diagnosis, head: int = 8, tail: int = 4) -> str:
    """A boot loop repeats its findings a thousand times: keep the first and the last ones."""
    findings = diagnosis.findings
    if len(findings) <= head + tail + 1:
        return str(diagnosis)
    kept = replace(diagnosis, findings=(*findings[:head], *findings[-tail:]))
    lines = str(kept).split("\n")
    # Each finding is three lines (message, cause, fix) after the one-line heading.
    cut = 1 + 3 * head
    skipped = len(findings) - head - tail
    gap = f"[... {skipped} more findings like these; the board log has all ...]"
    return "\n".join([*lines[:cut], gap, *lines[cut:]])


class _Failed(Exception):
    """Ends the procedure with a failing verdict (carried to the result, never out)."""

    def __init__(self, verdict: Verdict, summary: str) -> None:
        super().__init__(summary)
        self.verdict: Verdict = verdict
        self.summary = summary


@dataclass
class _Upgrade:
    link: SmpLink
    data: bytes
    new: ImageInfo
    settings: UpgradeSettings
    who: str
    console: Console | None
    geometry: FlashGeometry | None
    read: Callable[[int, int], bytes] | None
    say: Say
    progress: Progress | None
    mode: Mode | None = None
    old_version: str | None = None
    uploaded: UploadResult | None = None
    boot: Boot | None = None
    slots: list[SlotState] = field(default_factory=list)
    readback: Readback | None = None
    notes: list[str] = field(default_factory=list)

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> UpgradeResult:
        try:
            verdict = self._steps()
        except _Failed as failed:
            if self.readback is None and self.read is not None and self.geometry is not None:
                try:
                    self.readback = read_back(self.read, self.geometry, self.data)  # evidence
                except DfuhilError as exc:  # the verdict stands; the evidence is missing
                    self.notes.append(f"the slots could not be read back over SWD: {exc}")
            return self._result(failed.verdict, failed.summary)
        summary = (
            f"v{self.new.version} ({self.new.image_hash.hex()[:16]}) runs from "
            f"{self._where()}"
            + (f", upgraded from v{self.old_version}" if verdict == "upgraded" else "")
            + f"; {self._kept_how()}"
        )
        return self._result(verdict, summary)

    def _steps(self) -> Verdict:
        self.mode = self.settings.mode or self._ask_mode()
        before = self.link.image_list()
        self.slots = before
        active = _active(before)
        self.old_version = active.version if active is not None else None
        if active is not None and active.hash == self.new.image_hash:
            self.say(f"{self.who}: v{self.new.version} already runs; nothing uploaded")
            self._confirm_and_recheck()
            return "already-running"
        if self.mode == "single-slot":
            self._upload_in_serial_recovery()
        else:
            self._upload(before)
            self._mark_for_test()
        self._reset_and_boot()
        self._verify_running()
        self._confirm_and_recheck()
        return "upgraded"

    def _ask_mode(self) -> Mode | None:
        try:
            number, _ = self.link.bootloader_mode()
        except ProductError:
            self.say(f"{self.who}: the server does not report MCUboot's mode; acting generically")
            return None
        for mode, value in MODE_NUMBERS.items():
            if value == number:
                self.say(f"{self.who}: MCUboot mode {mode} (bootloader info)")
                return mode
        return None

    def _upload(self, before: list[SlotState]) -> None:
        if any(s.hash == self.new.image_hash and not s.active for s in before):
            self.say(f"{self.who}: the board already holds v{self.new.version}; not uploaded again")
            return
        self._send()

    def _send(self) -> None:
        self.uploaded = self.link.upload(
            self.data,
            progress=self.progress,
            resume=self.settings.resume,
            window=self.settings.window,
        )
        self.say(f"{self.who}: upload done: {self.uploaded.summary()}")

    def _upload_in_serial_recovery(self) -> None:
        """Single slot: the app cannot hold an update; MCUboot's serial recovery writes the
        primary. The app reboots into it (``reset`` with ``boot_mode`` 1, GPREGRET)."""
        console = self.console
        if self.link.kind == "ble":
            from dfuhil.procedures.image_check import BLE_OTA_FIX, BLE_OTA_REASON

            why = "its MCUboot reports single-slot mode"
            raise InputError(
                Problem(
                    "",
                    None,
                    "transport",
                    f"{BLE_OTA_REASON.format(board=self.who, why=why)}; nothing was sent. Fix: "
                    + BLE_OTA_FIX.format(board=self.who),
                )
            )
        if console is None or self.link.console is None:
            raise InputError(
                Problem(
                    "",
                    None,
                    "transport",
                    f"{self.who}'s MCUboot is single-slot: updates go through its serial "
                    "recovery on the UART; use the serial transport. Nothing was sent",
                )
            )
        console.skip_to_end()
        self.link.reset(boot_mode=1)
        try:
            console.expect(RECOVERY, timeout=self.settings.wall(BOOT_DEVICE_S) + BOOT_MARGIN_S)
        except ExpectTimeout:
            raise _Failed(
                "not-applied",
                "the board did not enter MCUboot's serial recovery after `reset` with boot_mode "
                "1 (the application needs Zephyr's retention boot mode; else hold the recovery "
                "button at reset); nothing was written",
            ) from None
        self.link.renegotiate()
        self.say(f"{self.who}: in MCUboot's serial recovery; writing the primary slot")
        self._send()

    def _mark_for_test(self) -> None:
        slots = self.link.image_list()
        self.slots = slots
        held = [s for s in slots if s.hash == self.new.image_hash]
        if not held:
            raise _Failed(
                "not-applied",
                f"after the upload the board lists no slot with image hash "
                f"{self.new.image_hash.hex()[:16]}: it did not keep the image",
            )
        if self.mode == "direct-xip":
            return  # plain direct-xip has no test mark: the higher version simply runs
        try:
            self.slots = self.link.test(self.new.image_hash)
        except SmpRefused as refused:
            if self.mode is not None or refused.error != "ENOTSUP":
                raise
            # Mode unknown and no state write: Zephyr's plain direct-xip; the reset decides.
            self.say(f"{self.who}: the server has no image test (plain direct-xip?)")
            return
        marked = [s for s in self.slots if s.hash == self.new.image_hash and s.pending]
        if not marked:
            raise _Failed(
                "not-applied",
                "the board took `image test` but does not list the new image as pending",
            )
        self.say(f"{self.who}: v{self.new.version} marked for a test boot (pending)")

    def _reset_and_boot(self) -> None:
        console = self.console
        if console is not None:
            console.skip_to_end()
        self.link.reset()
        self.say(f"{self.who}: reset; waiting for the boot")
        timeout = self.settings.wall(BOOT_DEVICE_S) + BOOT_MARGIN_S
        if console is not None and self.settings.banner:
            self.boot = wait_for_boot(
                console,
                banner=self.settings.banner,
                timeout_s=timeout,
                settle_s=max(0.3, self.settings.wall(SETTLE_DEVICE_S)),
            )
            if not self.boot.booted:
                raise _Failed(*no_boot_verdict(self.boot, self.mode, self.new))
        else:
            time.sleep(self.settings.wall(RESET_GRACE_DEVICE_S))
        if not self._smp_answers(timeout):
            self._boot_log_so_far()
            raise _Failed(
                "no-answer",
                f"the SMP server did not answer within {timeout:.0f} s after the reset"
                + ("" if self.boot is not None else " (no console here to show the boot log)"),
            )
        if self.boot is None:
            time.sleep(max(0.3, self.settings.wall(SETTLE_DEVICE_S)))  # a late crash resets it
            self._boot_log_so_far()

    def _boot_log_so_far(self) -> None:
        """Without a banner to wait for, keep whatever the console showed since the reset."""
        if self.console is not None and self.boot is None:
            log = self.console.unread()
            self.boot = Boot(log, False, None, diagnose(log))

    def _smp_answers(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.link.renegotiate()
                return True
            except InfrastructureError:
                if time.monotonic() >= deadline:
                    return False

    def _verify_running(self) -> None:
        self.slots = slots = self.link.image_list()
        active = _active(slots)
        if active is None or active.hash != self.new.image_hash:
            raise _Failed(*not_running_verdict(active, slots, self.new, self.boot, self.mode))
        if self.mode not in XIP_MODES and active.slot != 0:
            raise _Failed(
                "contradiction",
                f"the new image reports active in slot {active.slot}; {self.mode} runs slot 0",
            )
        logged = self.boot.version if self.boot is not None else None
        if logged is not None and ImageVersion.parse(logged).key() != self.new.version.key():
            raise _Failed(
                "contradiction",
                f"SMP reports the new image active, but MCUboot's boot log says it started "
                f"v{logged}",
            )
        self.say(f"{self.who}: v{self.new.version} runs from slot {active.slot} after the reset")

    def _confirm_and_recheck(self) -> None:
        needs = self.mode not in NOTHING_TO_CONFIRM
        active = _active(self.slots)
        if needs and (active is None or not active.confirmed):
            if self.settings.confirm == "host":
                self.slots = self.link.confirm()
                self.say(f"{self.who}: confirmed v{self.new.version} (image confirm)")
            else:
                self._wait_for_app_confirm()
        self.slots = slots = self.link.image_list()
        active = _active(slots)
        if active is None or active.hash != self.new.image_hash or not active.confirmed:
            raise _Failed(
                "contradiction",
                "after the confirm the board no longer lists the new image as active and confirmed",
            )
        pending = [s for s in slots if s.pending]
        if pending:
            raise _Failed(
                "contradiction",
                f"slot {pending[0].slot} (v{pending[0].version}) is pending: the next reset "
                "would not keep the new image",
            )
        self._read_back()

    def _wait_for_app_confirm(self) -> None:
        wait = self.settings.wall(CONFIRM_DEVICE_S) + 1.0
        deadline = time.monotonic() + wait
        while True:
            self.slots = self.link.image_list()
            active = _active(self.slots)
            if active is not None and active.confirmed:
                self.say(f"{self.who}: the application confirmed itself (confirm: app)")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, wait / 10))
        revert = "erases it" if self.mode == "direct-xip-revert" else "reverts it"
        raise _Failed(
            "not-confirmed",
            f"v{self.new.version} booted but did not confirm itself within "
            f"{CONFIRM_DEVICE_S:.0f} s (confirm: app): the build does not call "
            f"boot_write_img_confirmed(); MCUboot {revert} at the next reset. Not confirmed by "
            "the host: that would make a build that never confirms look fine",
        )

    def _read_back(self) -> None:
        if self.read is None or self.geometry is None:
            self.notes.append(
                "the slots were not read back over SWD (no --board, or --no-readback): this "
                "rests on the SMP server's word"
            )
            return
        self.readback = read_back(self.read, self.geometry, self.data)
        if not self.readback.ok:
            raise _Failed(
                "contradiction",
                "the SMP server reports the new image running and confirmed, but the flash "
                "read over SWD says otherwise: " + "; ".join(self.readback.problems),
            )
        self.say(f"{self.who}: probe read-back agrees ({self._where()})")

    # -- the report ------------------------------------------------------------------------------

    def _where(self) -> str:
        active = _active(self.slots)
        if active is None:
            return "no slot"
        return f"slot {active.slot} ({'primary' if active.slot == 0 else 'secondary'})"

    def _kept_how(self) -> str:
        if self.mode == "overwrite-only":
            return "overwrite-only: nothing to confirm"
        if self.mode == "single-slot":
            return "single-slot: written by serial recovery, nothing to confirm"
        if self.mode == "direct-xip":
            return "direct-xip: the highest version runs, nothing to confirm"
        who = "the application" if self.settings.confirm == "app" else "the host"
        return f"confirmed by {who}"

    def _result(self, verdict: Verdict, summary: str) -> UpgradeResult:
        return UpgradeResult(
            verdict=verdict,
            who=self.who,
            summary=summary,
            new=self.new,
            mode=self.mode,
            old_version=self.old_version,
            upload=self.uploaded,
            boot=self.boot,
            slots=tuple(self.slots),
            readback=self.readback,
            notes=tuple(self.notes),
        )


# --- what MCUboot did instead ---------------------------------------------------------------------


def no_boot_verdict(boot: Boot, mode: Mode | None, new: ImageInfo) -> tuple[Verdict, str]:
    """No application stayed up after the reset: name what the boot log shows."""
    d = boot.diagnosis
    if d.has("serial-recovery"):
        return "serial-recovery", "MCUboot is stuck in serial recovery: no application runs"
    if d.has("no-bootable-image"):
        return "no-bootable-image", "MCUboot found no bootable image and halted"
    if d.has("zephyr-fatal") or d.has("cpu-fault"):
        cannot = (
            f"; {mode} cannot revert, the board now boot-loops"
            if mode in NOTHING_TO_CONFIRM
            else ""
        )
        return "fault", f"v{new.version} faults at boot and no image stays up{cannot}"
    if not boot.log.strip():
        return "no-answer", "the board printed nothing after the reset"
    return "no-answer", "no application banner after the reset"


def not_running_verdict(
    active: SlotState | None,
    slots: list[SlotState],
    new: ImageInfo,
    boot: Boot | None,
    mode: Mode | None,
) -> tuple[Verdict, str]:
    """An application is up, but not the new image: what became of the update."""
    running = f"v{active.version}" if active is not None else "no image"
    held = [s for s in slots if s.hash == new.image_hash]
    d = boot.diagnosis if boot is not None else None
    crashed = d is not None and (d.has("zephyr-fatal") or d.has("cpu-fault"))
    why = " after it crashed at boot" if crashed else ""
    if d is not None and d.has("revert"):
        return "reverted", f"MCUboot reverted the update{why}: {running} runs again"
    if d is not None and d.has("secondary-invalid"):
        return "erased", f"MCUboot found the update not valid and erased it; {running} runs"
    if d is not None and d.has("downgrade-refused"):
        return "erased", f"MCUboot erased the update (downgrade prevention); {running} runs"
    if d is not None and d.has("wrong-slot-address"):
        return "not-applied", f"MCUboot skipped the update (linked for another slot); {running}"
    if not held:
        return (
            "erased",
            f"the update is gone from the board{why} (MCUboot erased it); {running} runs",
        )
    if mode in SWAP_MODES and not held[0].pending:
        # The test mark is gone and the image is back in the secondary: swapped in and swapped
        # back (a swap MCUboot declined would have left the mark).
        return "reverted", f"the update was reverted{why}: {running} runs again"
    return (
        "not-applied",
        f"MCUboot did not boot the update (it is still in slot {held[0].slot}); {running} runs",
    )


def _active(slots: list[SlotState]) -> SlotState | None:
    return next((s for s in slots if s.active), None)


def upgrade(
    link: SmpLink,
    data: bytes,
    *,
    source: str = "image",
    settings: UpgradeSettings,
    board: BoardSpec | None = None,
    console: Console | None = None,
    read: Callable[[int, int], bytes] | None = None,
    say: Say = lambda _line: None,
    progress: Progress | None = None,
) -> UpgradeResult:
    """Upgrade the board behind ``link`` to the image ``data`` and say how it ended.

    With ``board`` the image is checked against it first (``dfuhil image check``: a refusal is an
    InputError, and nothing is sent); with ``read`` (a probe's ``read``) and the board's flash
    geometry the slots are read back at the end. ``console`` is where the boot log arrives
    (the SMP console itself, or the board's console while SMP runs over UDP).
    """
    new = image_info(data, source)  # an unparsable file: InputError before anything is sent
    geometry = None
    if board is not None and board.mcuboot is not None:
        from dfuhil.procedures.image_check import check_image, refuse_ble_ota
        from dfuhil.procedures.mcuboot_dfu import running_version

        if link.kind == "ble":
            refuse_ble_ota(board)  # one slot: BLE OTA cannot work; refused before any request
        current = running_version(link.image_list())
        report = check_image(data, board, source=source, current=current, transport=link.kind)
        if not report.ok:
            say(report.text())
            report.raise_if_refused()
        say(f"{board.name}: image check passed ({len(report.findings)} rules)")
        geometry = board.mcuboot.geometry(board.layout)
        if settings.mode is None:
            settings = replace(settings, mode=board.mcuboot.mode)
    procedure = _Upgrade(
        link=link,
        data=data,
        new=new,
        settings=settings,
        who=board.name if board is not None else link.name,
        console=console,
        geometry=geometry,
        read=read if geometry is not None else None,
        say=say,
        progress=progress,
    )
    return procedure.run()
