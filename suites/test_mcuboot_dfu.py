"""MCUboot DFU over SMP, the Zephyr flow, on every upgrade mode the farm has.

Each test runs on the boards with role ``mcuboot`` whose mode it applies to (``modes`` mark)
and is skipped on the others with the reason; it runs over serial on every board and again over
Bluetooth LE on boards whose firmware set lists ``ble`` (the test id ends in ``-serial`` or
``-ble``; ``smp_transports`` narrows it). The flow is the one users type: sign, ``mcumgr
image upload``, ``image list``, ``image test <hash>``, reset, ``image confirm``; the outcome is
read the way a person checks it: what the board reports over SMP, what MCUboot printed, which
LED blinks. Runs unchanged on a lab; power cuts need the virtual farm's lever or a board's
power switch (power: in boards.yaml, through its labgrid place).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import allure
import pytest

from dfuhil.errors import InfrastructureError
from dfuhil.formats.mcuboot_holes import explain_brick
from dfuhil.formats.mcuboot_trailer import MODE_NUMBERS
from dfuhil.links.smp_link import SmpRefused
from dfuhil.procedures.image_sign import SignParams, sign_image
from dfuhil.procedures.mcuboot_dfu import Boot
from dfuhil.report import traces
from fixtures.mcuboot import McubootUnderTest, SignedImage

pytestmark = pytest.mark.roles("mcuboot")

OLD = "1.0.0"  # the version of the application the firmware sets ship
NEW = "1.1.0"
SWAP_MODES = ("swap-move", "swap-scratch")
REVERTING = (*SWAP_MODES, "direct-xip-revert")
TWO_SLOTS = (*REVERTING, "overwrite-only")
EXTRA_RESETS = 2


def assert_running(mcuboot: McubootUnderTest, version: str) -> None:
    active = mcuboot.active()
    assert active.version.startswith(version), (
        f"{mcuboot.name} runs {active.version}, expected {version}\n{mcuboot.diagnose()}"
    )


def boot(mcuboot: McubootUnderTest) -> None:
    """Reset over SMP; the application must come up (and stay up)."""
    result = mcuboot.reset_and_wait_boot()
    assert result.booted, f"{mcuboot.name} did not boot:\n{result.diagnosis}"


def upgrade_to(mcuboot: McubootUnderTest, image: SignedImage) -> None:
    """Upload, mark for test where the mode has test marks, reset into it."""
    mcuboot.upload(image)
    if mcuboot.mode != "direct-xip":  # plain direct-xip simply runs the higher version
        mcuboot.test(image)
    boot(mcuboot)


# --- the happy path -----------------------------------------------------------------------------


@pytest.mark.modes(*TWO_SLOTS)
def test_upgrade_then_confirm_keeps_the_new_version_over_more_resets(
    mcuboot: McubootUnderTest,
) -> None:
    assert_running(mcuboot, OLD)
    assert mcuboot.smp.bootloader_info() == "MCUboot"
    assert mcuboot.smp.bootloader_mode()[0] == MODE_NUMBERS[mcuboot.mode]  # type: ignore[index]
    image = mcuboot.sign("update", NEW)
    slots = mcuboot.list()
    assert image.image_hash not in [s.hash for s in slots]
    upgrade_to(mcuboot, image)
    assert_running(mcuboot, NEW)
    if mcuboot.spec.confirm == "host":
        after = mcuboot.confirm()
        assert [s for s in after if s.active and s.confirmed], after
    for _ in range(EXTRA_RESETS):
        boot(mcuboot)
        assert_running(mcuboot, NEW)
    if image.led is not None:
        assert mcuboot.blinking() == [image.led], "the update build's LED should blink alone"
    assert mcuboot.diagnose().ok


@pytest.mark.modes(*REVERTING)
def test_test_only_is_reverted_at_the_second_reset(mcuboot: McubootUnderTest) -> None:
    # A board whose application confirms itself needs a build that does not.
    build = "update" if mcuboot.spec.confirm == "host" else "never-confirm"
    image = mcuboot.sign(build, NEW)
    upgrade_to(mcuboot, image)
    assert_running(mcuboot, NEW)  # first reset: the test image runs
    boot(mcuboot)  # second reset: not confirmed, so MCUboot reverts
    assert_running(mcuboot, OLD)
    log = mcuboot.boots[-1].log
    if mcuboot.mode in SWAP_MODES:
        assert "Swap type: revert" in log, log
        assert mcuboot.diagnose().has("revert")
    else:
        assert "loaded from the primary slot" in log, log
    boot(mcuboot)
    assert_running(mcuboot, OLD)


@pytest.mark.modes("direct-xip")
def test_direct_xip_boots_the_higher_version_without_confirm(mcuboot: McubootUnderTest) -> None:
    image = mcuboot.sign("update", NEW)  # linked for the slot not running
    mcuboot.upload(image)
    boot(mcuboot)
    assert_running(mcuboot, NEW)
    assert mcuboot.active().slot == 1
    assert "Image 0 loaded from the secondary slot" in mcuboot.boots[-1].log
    for _ in range(EXTRA_RESETS):
        boot(mcuboot)
        assert_running(mcuboot, NEW)


@pytest.mark.modes("overwrite-only")
def test_overwrite_only_cannot_revert(mcuboot: McubootUnderTest) -> None:
    image = mcuboot.sign("never-confirm", NEW)
    upgrade_to(mcuboot, image)
    assert_running(mcuboot, NEW)
    assert "copying the secondary slot to the primary slot" in mcuboot.boots[-1].log
    for _ in range(EXTRA_RESETS):
        boot(mcuboot)
        assert_running(mcuboot, NEW)
    assert OLD not in [s.version for s in mcuboot.list()], "the old image should be gone"


class Interrupted(Exception):
    """Ctrl-C, as far as the upload can tell."""


@pytest.mark.modes("swap-move", "overwrite-only")
def test_an_interrupted_upload_resumes_and_a_reset_mid_upload_recovers(
    mcuboot: McubootUnderTest,
) -> None:
    image = mcuboot.sign("update", NEW)

    def stop_at_a_third(done: int, total: int) -> None:
        if done > total // 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        mcuboot.upload(image, progress=stop_at_a_third)
    resumed = mcuboot.upload(image)  # the same file: the server continues where it stopped
    assert 0 < resumed.start_offset < len(image.data), resumed.summary()

    mcuboot.provision()  # start over, then pull the reset pin in the middle of an upload
    mcuboot.console.skip_to_end()

    def reset_at_a_third(done: int, total: int) -> None:
        if done > total // 3:
            mcuboot.probe.reset()
            raise Interrupted

    with pytest.raises(Interrupted):
        mcuboot.upload(image, progress=reset_at_a_third)
    assert mcuboot.wait_boot().booted
    mcuboot.upload(image)  # wherever the server says it stands, the image ends up whole
    mcuboot.test(image)
    boot(mcuboot)
    assert_running(mcuboot, NEW)


@pytest.mark.modes(*TWO_SLOTS)
@pytest.mark.smp_transports("ble")
def test_an_upload_whose_connection_drops_resumes_from_the_device_offset(
    mcuboot: McubootUnderTest,
) -> None:
    """The board's link drops a third of the way (the farm's lever: a phone walking away); the
    host says the link was lost, and the next upload connects again and goes on from where the
    board stands; the image then boots."""
    faults = mcuboot.faults()
    image = mcuboot.sign("update", NEW)
    faults.drop_ble(after_bytes=len(image.data) // 3)
    with pytest.raises(InfrastructureError, match="lost"):
        mcuboot.upload(image)
    resumed = mcuboot.upload(image)
    assert 0 < resumed.start_offset < len(image.data), resumed.summary()
    mcuboot.test(image)
    boot(mcuboot)
    assert_running(mcuboot, NEW)


# --- refused images -----------------------------------------------------------------------------


def bad_image(mcuboot: McubootUnderTest, kind: str) -> bytes:
    if kind == "unsigned":
        return mcuboot.unsigned("update")
    if kind == "wrongly-signed":
        rogue = mcuboot.spec.key.parent / "rogue-p256.pem"
        if not rogue.is_file():
            pytest.skip(f"no rogue key next to {mcuboot.spec.key} to sign with")
        return mcuboot.sign("update", NEW, key=rogue, name="wrong-key").data
    if kind == "corrupted":
        data = bytearray(mcuboot.sign("update", NEW).data)
        data[mcuboot.spec.header_size + 0x100] ^= 0xFF  # one body byte: the hash no longer holds
        return bytes(data)
    assert kind == "too-large"
    slots = mcuboot.board.layout.mcuboot_slots()
    slot = slots.secondary or slots.primary
    body = mcuboot.unsigned("update")
    body += bytes(slot.size - len(body) + 4096)  # a header and TLVs more than the slot holds
    params = SignParams(header_size=mcuboot.spec.header_size)
    return sign_image(body, mcuboot.spec.key, NEW, params=params)


@pytest.mark.modes(*TWO_SLOTS, "direct-xip")
@pytest.mark.parametrize("kind", ["unsigned", "wrongly-signed", "corrupted", "too-large"])
def test_bad_images_are_refused_and_the_old_image_keeps_running(
    mcuboot: McubootUnderTest, kind: str
) -> None:
    data = bad_image(mcuboot, kind)
    saved = mcuboot.save(kind, data)
    report = mcuboot.check(data)
    assert not report.ok, f"the host check should refuse a {kind} image:\n{report.text()}"
    # Past the host check (as `mcumgr` would send it): the board must refuse it too.
    try:
        mcuboot.upload(data)
    except SmpRefused as refused:
        assert kind in ("unsigned", "too-large"), f"the server refused a {kind} image: {refused}"
    else:
        assert kind in ("wrongly-signed", "corrupted"), f"the server took a {kind} image"
        if mcuboot.mode != "direct-xip":
            mcuboot.test(saved)  # the hash its SHA TLV claims, as `image list` shows it
        boot(mcuboot)
        assert "Image in the secondary slot is not valid!" in mcuboot.boots[-1].log
        assert mcuboot.diagnose().has("secondary-invalid")
    assert_running(mcuboot, OLD)
    assert mcuboot.active().slot == 0


@pytest.mark.modes(*TWO_SLOTS)
def test_downgrade_is_refused_where_the_board_prevents_it(mcuboot: McubootUnderTest) -> None:
    if not mcuboot.spec.downgrade_prevention:
        pytest.skip(f"{mcuboot.name}'s MCUboot allows downgrades (downgrade_prevention: false)")
    older = mcuboot.sign("update", "0.9.0", name="downgrade")
    report = mcuboot.check(older)
    assert not report.ok, report.text()
    mcuboot.upload(older)
    mcuboot.test(older)
    boot(mcuboot)
    assert mcuboot.diagnose().has("downgrade-refused"), mcuboot.boots[-1].log
    assert_running(mcuboot, OLD)


# --- serial recovery, transports ----------------------------------------------------------------


@pytest.mark.modes("single-slot")
@pytest.mark.smp_transports("serial")
def test_serial_recovery_writes_the_single_slot(mcuboot: McubootUnderTest) -> None:
    if mcuboot.spec.serial_recovery is None:
        pytest.skip(f"{mcuboot.name}'s MCUboot has no serial recovery")
    image = mcuboot.sign("update", NEW)
    mcuboot.console.skip_to_end()
    mcuboot.smp.reset(boot_mode=1)  # the app reboots into MCUboot's serial recovery
    mcuboot.expect("Enter the serial recovery mode")
    mcuboot.smp.renegotiate()
    mcuboot.upload(image)
    slots = mcuboot.list()
    assert [(s.slot, s.version) for s in slots] == [(0, NEW)], slots
    boot(mcuboot)
    assert_running(mcuboot, NEW)
    if image.led is not None:
        assert mcuboot.blinking() == [image.led]


def _dfu_lock_ms(mcuboot: McubootUnderTest) -> int:
    if mcuboot.spec.dfu_lock_timeout_ms <= 0:
        pytest.skip(f"{mcuboot.name} has no DFU lock (mcuboot.dfu_lock_timeout_ms)")
    return mcuboot.spec.dfu_lock_timeout_ms


@pytest.mark.roles("dfu-lock")
def test_second_transport_is_refused_while_the_first_holds_the_dfu_lock(
    mcuboot: McubootUnderTest,
) -> None:
    """nRF Desktop's DFU lock: the transport that sent an image command holds it, another is
    refused until it expires (serial holds, UDP is refused; BLE holds, serial is refused)."""
    lock_ms = _dfu_lock_ms(mcuboot)
    other = mcuboot.other_transport()
    image = mcuboot.sign("update", NEW)
    mcuboot.upload(image)  # over the test's transport: it now holds the lock
    with pytest.raises(SmpRefused) as refused:
        other.upload(image.data)
    assert refused.value.error == "EACCESSDENIED", refused.value
    assert "DFU lock" in str(refused.value)
    mcuboot.settle(lock_ms / 1000 * 1.2)  # no image command from the holder: the lock expires
    result = other.upload(image.data)
    assert result.size == len(image.data)
    assert image.image_hash in [s.hash for s in other.image_list()]


# --- power cuts -----------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.modes(*SWAP_MODES, "overwrite-only")
@pytest.mark.smp_transports("serial")  # the cuts are in MCUboot's swap: the transport is moot
@pytest.mark.parametrize("cut", ["whole", "torn"])
def test_power_cuts_during_a_swap_leave_old_or_new_never_neither(
    mcuboot: McubootUnderTest, cut: str
) -> None:
    """A cut before a flash operation (MCUboot's simulator's kind) or inside one (``torn``: the
    page left partly written or erased). A board that then finds no bootable image fails as
    bricked, naming MCUboot v2.1.0's own hole when its boot log shows one."""
    faults = mcuboot.flash_op_lever()
    image = mcuboot.sign("update", NEW)
    _stage(mcuboot, image)
    faults.reset_stats()
    boot(mcuboot)
    assert_running(mcuboot, NEW)
    total = faults.flash_ops()
    assert total > 4, f"a swap with only {total} flash operations?"
    points = sorted({1, total // 4, total // 2, 3 * total // 4, total - 1})
    outcomes: list[str] = []
    for point in points:
        _stage(mcuboot, image)
        faults.cut_power_after(point, torn_seed=point if cut == "torn" else None)
        mcuboot.console.skip_to_end()
        mcuboot.smp.reset()
        _wait(lambda: not mcuboot.powered(), f"no power cut at flash operation {point}")
        where = f"{cut} cut {point}/{total}: {mcuboot.cpu_status()}"
        faults.power_on()
        record = partial(traces.power_cut, mcuboot.name, point, total)
        _old_or_new(mcuboot, mcuboot.wait_boot(), where, outcomes, record)
    allure.attach("\n".join(outcomes), name=f"{mcuboot.name} power cuts", extension="txt")


# Device seconds a board stays without power after a cut through its switch: its rails drain.
SWITCH_OFF_DEVICE_S = 1.0


@pytest.mark.modes(*SWAP_MODES, "overwrite-only")
@pytest.mark.smp_transports("serial")  # the cuts are in MCUboot's swap: the transport is moot
def test_power_cuts_through_the_switch_during_a_swap_leave_old_or_new_never_neither(
    mcuboot: McubootUnderTest,
) -> None:
    """The real rig's power-cut test: the board's supply switch (a PDU outlet through its
    labgrid place) cuts it at a few points in time during the swap, as fractions of the time
    from reset to the new image's banner on one uncut run, less the switch's own latency
    (measured). Sampled, not swept: every cut mid-swap wears the board's flash (MCUboot
    docs/design.md), so ``--power-cuts N`` bounds them. The board must then start afresh and
    boot the old or the new image, never neither; an old one must finish the swap. A run in
    which no cut came before the application was up tested nothing and fails."""
    switch = mcuboot.power_switch()
    count = mcuboot.power_cut_count
    if count < 1:
        pytest.skip("--power-cuts 0: no power cut asked for")
    started = time.monotonic()
    assert switch.state(), f"{mcuboot.name}: its switch reports the outlet off before any cut"
    latency_s = time.monotonic() - started  # asking the switch: what an off() takes to land
    image = mcuboot.sign("update", NEW)
    _stage(mcuboot, image)
    mcuboot.console.skip_to_end()
    started = time.monotonic()
    mcuboot.smp.reset()
    uncut = mcuboot.wait_boot(settle=False)
    window_s = time.monotonic() - started  # reset to the new image's banner
    assert uncut.booted, f"{mcuboot.name} did not boot the update uncut:\n{uncut.diagnosis}"
    assert_running(mcuboot, NEW)
    outcomes = [f"uncut: reset to banner {window_s:.2f} s; the switch answers in {latency_s:.2f} s"]
    early = 0
    for index in range(count):
        fraction = (index + 1) / (count + 1)  # evenly inside the window, never at its ends
        _stage(mcuboot, image)
        mcuboot.console.skip_to_end()
        mark = len(mcuboot.console.text())
        started = time.monotonic()
        mcuboot.smp.reset()
        time.sleep(max(0.0, fraction * window_s - latency_s))
        switch.off()
        cut_s = time.monotonic() - started
        app_up = mcuboot.banner in mcuboot.console.text()[mark:]
        early += not app_up
        assert not switch.state(), f"{mcuboot.name}: the switch still reports power after off"
        mcuboot.console.skip_to_end()  # unpowered: whatever comes next is a boot after the cut
        time.sleep(mcuboot.wall(SWITCH_OFF_DEVICE_S))
        switch.on()
        where = (
            f"switch cut {cut_s:.2f} s after reset (aimed at {fraction:.0%} of the window), "
            + ("the application already up" if app_up else "before the application was up")
        )
        result = mcuboot.wait_boot()
        if result.diagnosis.boots < 1:  # no fresh MCUboot start: the cut never reached it
            raise InfrastructureError(
                f"{where}: the switch reported the outlet off, yet MCUboot never started "
                f"again after it came back on; console since the cut:\n{result.log[-2000:]}",
                f"check that {mcuboot.board.power} really feeds {mcuboot.name}",
                board=mcuboot.name,
            )
        _old_or_new(mcuboot, result, where, outcomes)
    allure.attach("\n".join(outcomes), name=f"{mcuboot.name} power cuts", extension="txt")
    assert early, (
        f"{mcuboot.name}: none of {count} cuts came before the application was up (window "
        f"{window_s:.2f} s, switch latency {latency_s:.2f} s): nothing was interrupted\n"
        + "\n".join(outcomes)
    )


def _stage(mcuboot: McubootUnderTest, image: SignedImage) -> None:
    """The old image running, ``image`` uploaded and confirmed: permanent, so no revert
    muddles the outcome of a cut."""
    mcuboot.provision()
    mcuboot.upload(image)
    mcuboot.smp.confirm(image.image_hash)


def _old_or_new(
    mcuboot: McubootUnderTest,
    result: Boot,
    where: str,
    outcomes: list[str],
    record: Callable[[str], None] = lambda booted: None,
) -> None:
    """After power came back: the old or the new image boots (an old one then completes the
    swap on the next boot), or the test fails as bricked. ``record`` hears what booted."""
    if not result.booted:
        record("bricked")
        allure.attach("\n".join(outcomes), name=f"{mcuboot.name} power cuts", extension="txt")
        verdict, known = _bricked(mcuboot, where, result.log)
        if known:
            # MCUboot's own hole, named with its source line: reported on every run as an
            # expected failure (XFAIL with the reason), so a new brick stays a red result.
            pytest.xfail(verdict)
        pytest.fail(verdict, pytrace=False)
    version = mcuboot.active().version
    record(f"v{version}")
    outcomes.append(f"{where}: boots v{version}")
    assert version.startswith((OLD, NEW)), outcomes[-1]
    if version.startswith(OLD):  # an interrupted swap must still complete on the next boot
        boot(mcuboot)
    assert_running(mcuboot, NEW)


def _bricked(mcuboot: McubootUnderTest, where: str, log: str) -> tuple[str, bool]:
    """The verdict for a board left without a bootable image, and whether a known hole of
    MCUboot v2.1.0 (formats/mcuboot_holes.py, with its source lines) explains it."""
    hole = explain_brick(mcuboot.mode, log.splitlines())
    cause = hole.describe() if hole else "no known MCUboot v2.1.0 hole explains it"
    verdict = (
        f"bricked: {mcuboot.name} ({mcuboot.mode}) found no bootable image after a power cut "
        f"({where})\n{cause}\n{mcuboot.diagnose()}"
    )
    return verdict, hole is not None


# --- diagnosis in the report -------------------------------------------------------------------


@pytest.mark.modes(*SWAP_MODES)
def test_a_crashing_update_is_reverted_and_diagnosed(mcuboot: McubootUnderTest) -> None:
    image = mcuboot.sign("crash-at-boot", NEW)
    mcuboot.upload(image)
    mcuboot.test(image)
    result = mcuboot.reset_and_wait_boot()  # it crashes, resets, MCUboot reverts it
    assert result.booted
    assert_running(mcuboot, OLD)
    diagnosis = mcuboot.diagnose()
    assert diagnosis.has("zephyr-fatal") and diagnosis.has("revert"), str(diagnosis)
    assert any("never confirmed" in note for note in diagnosis.notes), str(diagnosis)
    written = mcuboot.log_dir / f"{mcuboot.name}.diagnosis.txt"
    assert "ZEPHYR FATAL ERROR" in written.read_text()
