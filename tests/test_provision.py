"""Provisioning over the real debug port of a virtual farm running in its own process.

What is on a board is always read back through the probe; what a step cost is the virtual
board's own flash statistics (pages erased, bytes written), never a timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from provisionfarm import (
    BOOT_TIMEOUT_S,
    DFU_BOOTED,
    NRF51422,
    NRF52832,
    BoardEntry,
    FirmwareSpec,
    app_start,
    dfu_app_bytes,
    differing_pages,
    expected_flash,
    pages_needing_erase,
    read_flash,
    read_uicr,
    reset_stats,
    running_farm,
    sample_set,
    snapshot,
    stats,
    write_boards,
    write_hex,
)

from dfuhil.errors import InputError
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import UICR_BASE, UICR_BOOTLOADERADDR, UICR_PSELRESET0
from dfuhil.links.console import Console
from dfuhil.links.probe import Probe
from dfuhil.procedures.provision import STEPS, Provisioner, ProvisioningPlan, StepResult
from dfuhil.sim.firmware.generate import filler

BOARDS = [
    BoardEntry("fresh52", "dfu52"),
    BoardEntry("fresh51", "dfu51", chip=NRF51422),
    BoardEntry("rerun", "dfu52"),
    BoardEntry("appchange", "dfu52"),
    BoardEntry("clearbits", "dfu52"),
    BoardEntry("stale", "dfu52"),
    BoardEntry("foreign", "dfu52"),
    BoardEntry("uicrforeign", "dfu52"),
    BoardEntry("addr-clear", "dfu52"),
    BoardEntry("addr-erase", "dfu52"),
    BoardEntry("uicrkeep", "dfu52"),
    BoardEntry("refused", "dfu52"),
]
FREE_PAGE = 0x50000  # inside the nRF52832 application region, past the sample app
UICR_CUSTOMER0 = UICR_BASE + 0x80


@dataclass
class Lab:
    farm: Farm
    rig: Rig
    workdir: Path

    def spec(self, name: str) -> BoardSpec:
        return self.farm.board(name)

    def plan(self, name: str) -> ProvisioningPlan:
        return ProvisioningPlan.for_board(self.spec(name))

    @contextmanager
    def probe(self, name: str) -> Iterator[Probe]:
        with self.rig.probe(self.spec(name)) as probe:
            yield probe

    def console(self, name: str) -> Console:
        return self.rig.console(self.spec(name), self.workdir / "logs", open_timeout=5.0)

    def provision(self, probe: Probe, name: str) -> list[StepResult]:
        return Provisioner(self.plan(name), probe).run()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("provision-farm")
    sets = {
        "dfu52": FirmwareSpec(NRF52832, sample_set(NRF52832)),
        "dfu51": FirmwareSpec(NRF51422, sample_set(NRF51422)),
    }
    path, farm = write_boards(workdir / "boards.yaml", sets, BOARDS)
    with running_farm(path, workdir) as state:
        yield Lab(farm, Rig(farm, state), workdir)


def cpu_status(probe: Probe) -> str:
    """The virtual CPU's own account of what runs (it names the image and its version)."""
    status = probe.extension("sim_status")
    assert status is not None, "not a virtual board: no sim_status"
    return str(status()["cpu"])


def junk(seed: str, length: int) -> bytes:
    return filler(f"foreign/{seed}", length)


def actions(results: list[StepResult]) -> dict[str, str]:
    return {r.step: r.action for r in results}


def nonerased_bytes(data: bytes) -> int:
    """Bytes a programmer must write over erased flash: whole words that are not 0xFFFFFFFF."""
    return sum(4 for off in range(0, len(data), 4) if data[off : off + 4] != b"\xff" * 4)


# --- first and second provisioning ---------------------------------------------------------


@pytest.mark.parametrize("name", ["fresh52", "fresh51"])
def test_first_provisioning_writes_every_image_and_the_app_boots(lab: Lab, name: str) -> None:
    plan = lab.plan(name)
    app = plan.board.firmware.application if plan.board.firmware else None
    assert app is not None and app.boot_pattern
    with lab.console(name) as console, lab.probe(name) as probe:
        assert read_flash(probe) == b"\xff" * probe.chip.flash_size, "board is not erased"
        results = Provisioner(plan, probe).run()

        assert [r.step for r in results] == list(STEPS)
        assert actions(results) == {
            "chip_erase": "skipped",
            "softdevice": "done",
            "bootloader": "done",
            "application": "done",
            "device_page": "done",
            "reset": "done",
        }
        console.expect(app.boot_pattern, timeout=BOOT_TIMEOUT_S, not_matching=[r"(?i)hard ?fault"])
        assert read_flash(probe) == expected_flash(plan)
        uicr = plan.wanted_uicr()
        assert uicr, "the bootloader hex carries UICR words"
        assert {a: probe.read_u32(a) for a in uicr} == uicr
        cost = stats(probe)
    pages = [data for planned in plan.images.values() for data in planned.pages.values()]
    # An erased board needs no erase at all, and exactly its non-erased words written.
    assert cost["pages_erased"] == 0
    assert cost["erase_all"] == 0
    assert cost["bytes_written"] == sum(map(nonerased_bytes, pages)) + 4 * len(uicr)
    assert cost["bytes_written"] == sum(r.bytes_written for r in results)


def test_second_provisioning_skips_every_step_and_touches_nothing(lab: Lab) -> None:
    with lab.probe("rerun") as probe:
        lab.provision(probe, "rerun")
        before = snapshot(probe)
        reset_stats(probe)
        again = Provisioner(lab.plan("rerun"), probe).run(
            [s for s in STEPS if s != "reset"]  # a reset is no flash operation; keep it out
        )
        cost = stats(probe)
        after = snapshot(probe)
    assert {r.action for r in again} == {"skipped"}, [str(r) for r in again]
    assert all(r.bytes_written == r.pages_erased == 0 for r in again)
    assert cost["bytes_written"] == cost["bytes_erased"] == cost["pages_erased"] == 0
    assert cost["operations"] == 0
    assert after == before


# --- changing content ----------------------------------------------------------------------


def test_new_application_rewrites_only_its_differing_pages(lab: Lab, tmp_path: Path) -> None:
    chip = NRF52832
    v2 = write_hex(tmp_path / "dfu_app_v2.hex", (app_start(chip), dfu_app_bytes(chip, "2.0.0")))
    files = {**sample_set(chip), "application": v2}
    sets = {"dfu52-v2": FirmwareSpec(chip, files)}
    _, farm_v2 = write_boards(
        tmp_path / "boards-v2.yaml", sets, [BoardEntry("appchange", "dfu52-v2")]
    )
    plan_v2 = ProvisioningPlan.for_board(farm_v2.board("appchange"))
    app_pages = plan_v2.images["application"].pages
    app_region = plan_v2.board.layout.region("application")

    with lab.console("appchange") as console, lab.probe("appchange") as probe:
        lab.provision(probe, "appchange")  # version 1.0.0 of the shipped boards file
        before = read_flash(probe)
        uicr_before = read_uicr(probe)
        assert differing_pages(before, app_pages), "v2 must differ from v1 somewhere"
        assert len(differing_pages(before, app_pages)) < len(app_pages), "v2 too different"
        reset_stats(probe)
        console.skip_to_end()
        results = Provisioner(plan_v2, probe).run()
        cost = stats(probe)
        after = read_flash(probe)
        console.expect(DFU_BOOTED, timeout=BOOT_TIMEOUT_S)
        assert cpu_status(probe).startswith("running dfu example 2.0.0")  # v2 is what booted
        assert read_uicr(probe) == uicr_before

    assert actions(results) == {
        "chip_erase": "skipped",
        "softdevice": "skipped",
        "bootloader": "skipped",
        "application": "partial",
        "device_page": "skipped",
        "reset": "done",
    }
    changed = differing_pages(before, app_pages)
    assert cost["pages_erased"] == len(pages_needing_erase(before, app_pages))
    assert cost["pages_erased"] <= len(changed) <= len(app_pages)
    assert 0 < cost["bytes_written"] <= len(changed) * NRF52832.page_size
    assert cost["erase_all"] == 0
    assert after == expected_flash(plan_v2)
    # Not one byte outside the application region moved (SoftDevice, bootloader, device page).
    start, end = app_region.start, app_region.end
    assert after[:start] == before[:start]
    assert after[end:] == before[end:]


def test_page_reachable_by_clearing_bits_is_written_without_erase(lab: Lab) -> None:
    plan = lab.plan("clearbits")
    page = app_start(NRF52832) + NRF52832.page_size
    wanted = plan.images["application"].pages[page]
    half = len(wanted) // 2
    with lab.probe("clearbits") as probe:
        lab.provision(probe, "clearbits")
        # An interrupted programming: the page was erased and only its first half written.
        probe.erase_page(page)
        probe.write_flash(page, wanted[:half])
        assert probe.read(page, len(wanted)) != wanted
        reset_stats(probe)
        (result,) = Provisioner(plan, probe).run(["application"])
        cost = stats(probe)
        assert probe.read(page, len(wanted)) == wanted
    assert result.action == "partial" and result.pages_erased == 0
    assert cost["pages_erased"] == 0 and cost["bytes_erased"] == 0
    assert cost["bytes_written"] == nonerased_bytes(wanted[half:]) > 0


def test_chip_erase_removes_stale_pages_outside_the_set_page_by_page(lab: Lab) -> None:
    plan = lab.plan("stale")
    stale_pages = [FREE_PAGE, plan.board.layout.region("device_page_backup").start]
    with lab.probe("stale") as probe:
        lab.provision(probe, "stale")
        for page in stale_pages:
            probe.write_flash(page, junk(str(page), 256))
        assert read_flash(probe) != expected_flash(plan)
        reset_stats(probe)
        results = Provisioner(plan, probe).run()
        cost = stats(probe)
        after = read_flash(probe)
    assert actions(results)["chip_erase"] == "partial"
    assert results[0].pages_erased == len(stale_pages)
    assert {actions(results)[s] for s in ("softdevice", "bootloader", "application")} == {"skipped"}
    assert cost["pages_erased"] == len(stale_pages)
    assert cost["erase_all"] == 0
    assert cost["bytes_written"] == 0
    assert after == expected_flash(plan)


def test_board_full_of_foreign_content_gets_eraseall(lab: Lab) -> None:
    plan = lab.plan("foreign")
    app = plan.board.firmware.application if plan.board.firmware else None
    assert app is not None and app.boot_pattern
    with lab.console("foreign") as console, lab.probe("foreign") as probe:
        size = probe.chip.flash_size
        for start in range(0, size, 0x10000):
            probe.write_flash(start, junk(f"full{start}", 0x10000))
        probe.write_flash(UICR_CUSTOMER0, (0x0BADC0DE).to_bytes(4, "little"))
        reset_stats(probe)
        results = Provisioner(plan, probe).run()
        cost = stats(probe)
        console.expect(app.boot_pattern, timeout=BOOT_TIMEOUT_S)
        assert read_flash(probe) == expected_flash(plan)
        assert probe.read_u32(UICR_CUSTOMER0) == 0xFFFFFFFF
    assert results[0].action == "done" and "ERASEALL" in results[0].detail
    assert cost["erase_all"] == 1
    # After ERASEALL every image is written over erased flash: no page needs its own erase.
    assert cost["pages_erased"] == 0


# --- UICR ------------------------------------------------------------------------------------


def test_chip_erase_removes_foreign_uicr_word_and_bootloader_restores_its_own(lab: Lab) -> None:
    plan = lab.plan("uicrforeign")
    wanted = plan.wanted_uicr()
    with lab.probe("uicrforeign") as probe:
        lab.provision(probe, "uicrforeign")
        flash_before = read_flash(probe)
        probe.write_flash(UICR_CUSTOMER0, (0x12345678).to_bytes(4, "little"))
        reset_stats(probe)
        results = Provisioner(plan, probe).run()
        cost = stats(probe)
        assert probe.read_u32(UICR_CUSTOMER0) == 0xFFFFFFFF
        assert {a: probe.read_u32(a) for a in wanted} == wanted
        assert read_flash(probe) == flash_before
    assert actions(results)["chip_erase"] == "partial"
    assert "UICR" in results[0].detail
    assert actions(results)["bootloader"] == "partial"  # flash pages match, UICR rewritten
    assert cost["pages_erased"] == 0  # code flash untouched; only UICR was erased


@pytest.mark.parametrize(
    ("name", "stored", "uicr_erased"),
    [
        ("addr-clear", 0x0007F000, False),  # 0x78000 is reachable by clearing bits
        ("addr-erase", 0x00070000, True),  # 0x78000 needs bits set: UICR must be erased
    ],
)
def test_bootloader_address_that_differs_is_rewritten(
    lab: Lab, name: str, stored: int, uicr_erased: bool
) -> None:
    plan = lab.plan(name)
    wanted = plan.wanted_uicr()
    assert wanted[UICR_BOOTLOADERADDR] == NRF52832.mesh_bootloader_start
    with lab.probe(name) as probe:
        lab.provision(probe, name)
        flash_before = read_flash(probe)
        probe.erase_uicr()
        for address, value in {**wanted, UICR_BOOTLOADERADDR: stored}.items():
            probe.write_flash(address, value.to_bytes(4, "little"))
        reset_stats(probe)
        results = Provisioner(plan, probe).run()
        cost = stats(probe)
        assert {a: probe.read_u32(a) for a in wanted} == wanted
        assert read_flash(probe) == flash_before
    assert actions(results)["chip_erase"] == "skipped"
    assert actions(results)["bootloader"] == "partial"
    assert "UICR" in next(r for r in results if r.step == "bootloader").detail
    assert cost["pages_erased"] == 0
    assert cost["bytes_erased"] == (NRF52832.uicr_size if uicr_erased else 0)


def test_uicr_erase_for_bootloader_address_keeps_other_uicr_words(lab: Lab) -> None:
    plan = lab.plan("uicrkeep")
    wanted = plan.wanted_uicr()
    reset_pin = 21  # PSELRESET: P0.21, connected
    with lab.probe("uicrkeep") as probe:
        lab.provision(probe, "uicrkeep")
        probe.erase_uicr()
        for address, value in {**wanted, UICR_BOOTLOADERADDR: 0x70000}.items():
            probe.write_flash(address, value.to_bytes(4, "little"))
        probe.write_flash(UICR_PSELRESET0, reset_pin.to_bytes(4, "little"))
        Provisioner(plan, probe).run(["bootloader"])
        assert probe.read_u32(UICR_BOOTLOADERADDR) == wanted[UICR_BOOTLOADERADDR]
        assert probe.read_u32(UICR_PSELRESET0) == reset_pin


# --- bad input is refused before anything is touched ----------------------------------------


@pytest.fixture
def refused_board(lab: Lab) -> str:
    """A provisioned board with stale content a started provisioning would erase at once."""
    with lab.probe("refused") as probe:
        lab.provision(probe, "refused")
        probe.write_flash(FREE_PAGE, junk("refused", 256))
    return "refused"


def corrupt_copy(source: Path, target: Path) -> Path:
    lines = source.read_text().splitlines(keepends=True)
    record = lines[2]
    flipped = "0" if record[12] != "0" else "1"  # one data digit: the checksum no longer fits
    lines[2] = record[:12] + flipped + record[13:]
    target.write_text("".join(lines))
    return target


def bad_application(case: str, tmp_path: Path) -> tuple[Path, str]:
    """An application hex that must be refused, and what the refusal has to say."""
    chip = NRF52832
    if case == "overlaps-softdevice":
        start = app_start(chip) - 0x1000
        path = write_hex(tmp_path / "early_app.hex", (start, dfu_app_bytes(chip, start=start)))
        return path, "overlaps softdevice"
    if case == "past-flash-end":
        start = chip.flash_size - 0x2000
        path = write_hex(tmp_path / "late_app.hex", (start, dfu_app_bytes(chip, start=start)))
        return path, "runs past the end of nRF52832_xxAA flash"
    if case == "corrupt-hex":
        path = corrupt_copy(sample_set(chip)["application"], tmp_path / "corrupt.hex")
        return path, "not a valid Intel HEX file"
    assert case == "missing-file"
    return tmp_path / "no_such_app.hex", "file not found"


@pytest.mark.parametrize(
    "case", ["overlaps-softdevice", "past-flash-end", "corrupt-hex", "missing-file"]
)
def test_bad_application_is_refused_before_the_board_is_touched(
    lab: Lab, refused_board: str, tmp_path: Path, case: str
) -> None:
    bad, says = bad_application(case, tmp_path)
    files = {**sample_set(NRF52832), "application": bad}
    _, farm = write_boards(
        tmp_path / "boards-bad.yaml",
        {"bad": FirmwareSpec(NRF52832, files)},
        [BoardEntry(refused_board, "bad")],
    )
    with lab.probe(refused_board) as probe:
        before = snapshot(probe)
        reset_stats(probe)
        with pytest.raises(InputError) as refused:
            Provisioner(ProvisioningPlan.for_board(farm.board(refused_board)), probe).run()
        assert stats(probe)["operations"] == 0
        assert snapshot(probe) == before
    (problem,) = refused.value.problems
    assert problem.file == str(bad)
    assert problem.field == "firmware_sets.bad.application"
    assert says in problem.message
    assert str(bad) in str(refused.value) and "firmware_sets.bad.application" in str(refused.value)


def test_every_bad_image_of_a_set_is_reported_at_once(lab: Lab, tmp_path: Path) -> None:
    early = app_start(NRF52832) - 0x1000
    app = write_hex(tmp_path / "early.hex", (early, dfu_app_bytes(NRF52832, start=early)))
    files = {**sample_set(NRF52832), "bootloader": tmp_path / "gone.hex", "application": app}
    _, farm = write_boards(
        tmp_path / "boards-bad.yaml",
        {"bad": FirmwareSpec(NRF52832, files)},
        [BoardEntry("refused", "bad")],
    )
    with pytest.raises(InputError) as refused:
        ProvisioningPlan.for_board(farm.board("refused"))
    fields = sorted(p.field for p in refused.value.problems)
    assert fields == ["firmware_sets.bad.application", "firmware_sets.bad.bootloader"]
