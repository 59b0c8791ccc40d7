"""The probe adapter (dfuhil.links.probe.Probe) on both backends it exists for: the real
pynrfjprog on this machine (no SEGGER J-Link library installed) and virtual boards served by a
``dfuhil sim serve`` process, reached through the Rig exactly as the suites reach them."""

from __future__ import annotations

import ctypes.util
import dataclasses
import glob
from collections.abc import Iterator

import pytest
from simfarm import WAIT_S, RunningFarm, SimBoard, chip, running_farm

from dfuhil.errors import InfrastructureError
from dfuhil.farm.model import BoardSpec
from dfuhil.farm.rig import Rig
from dfuhil.formats.chips import FICR_CODEPAGESIZE, FICR_CODESIZE, FICR_INFO_PART
from dfuhil.links.probe import Probe, ProbeError, ProbeTarget, jlink_factory, virtual_factory
from dfuhil.sim.descriptor import Behaviour
from dfuhil.sim.firmware.generate import ram_end, sample_image

NRF52832 = chip("nRF52832_xxAA")
NRF52840 = chip("nRF52840_xxAA")
BOARD = SimBoard("vprobe", "nRF52832_xxAA", "PCA10040", 910000301)
OTHER = SimBoard("vprobe2", "nRF52832_xxAA", "PCA10040", 910000302)
BANNER = "probe test app 1.0.0 started"


def segger_installed() -> bool:
    return bool(
        ctypes.util.find_library("jlinkarm") or glob.glob("/opt/SEGGER/JLink*/libjlinkarm.so*")
    )


# --- the real pynrfjprog, with no J-Link library ---------------------------------------------


@pytest.mark.skipif(segger_installed(), reason="SEGGER's J-Link library is installed here")
def test_real_pynrfjprog_without_the_jlink_library_is_an_infrastructure_error() -> None:
    target = ProbeTarget(board="lab-dk1", chip=NRF52832, snr=683000001)
    probe = Probe(target, jlink_factory)
    with pytest.raises(InfrastructureError) as caught:
        probe.open()
    error = caught.value
    message = str(error)
    assert error.board == "lab-dk1"
    assert "board lab-dk1" in message
    assert "J-Link 683000001: cannot" in message  # which probe, not only which board
    assert "JLINKARM_DLL_COULD_NOT_BE_OPENED (-101)" in message
    assert "SEGGER's J-Link Software and Documentation Pack" in error.remedy
    assert "install" in error.remedy
    # No pynrfjprog internals leak: no chained APIError, no traceback text.
    assert error.__cause__ is None
    assert error.__suppress_context__
    assert "Traceback" not in message
    assert "APIError" not in message
    with pytest.raises(ProbeError, match="not open"):
        _ = probe.api


# --- virtual boards ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory.mktemp("sim-probe"), [BOARD, OTHER]) as farm:
        yield farm


@pytest.fixture(scope="module")
def rig(sim: RunningFarm) -> Rig:
    return Rig(sim.farm(), sim.state)


@pytest.fixture(scope="module")
def spec(rig: Rig) -> BoardSpec:
    return rig.farm.board(BOARD.name)


def test_probe_opens_a_virtual_board_and_reads_its_ficr(rig: Rig, spec: BoardSpec) -> None:
    with rig.probe(spec) as probe:
        assert probe.read_u32(FICR_CODEPAGESIZE) == NRF52832.page_size
        assert probe.read_u32(FICR_CODESIZE) == NRF52832.pages
        assert probe.read_u32(FICR_INFO_PART) == 0x52832
        assert probe.read(FICR_CODEPAGESIZE, 4) == NRF52832.page_size.to_bytes(4, "little")
        assert probe.time_scale == pytest.approx(sim_scale(rig))


def sim_scale(rig: Rig) -> float:
    assert rig.sim is not None
    return rig.sim.time_scale


def test_probe_refuses_a_board_whose_chip_is_not_the_one_in_boards_yaml(
    rig: Rig, spec: BoardSpec
) -> None:
    wrong = dataclasses.replace(spec, chip=NRF52840)
    probe = rig.probe(wrong)
    with pytest.raises(InfrastructureError) as caught:
        probe.open()
    message = str(caught.value)
    assert caught.value.board == BOARD.name
    assert "nRF52840_xxAA" in message
    assert "NRF52832_xxAA" in message
    with pytest.raises(ProbeError, match="not open"):
        _ = probe.api  # the failed open left no session behind


def test_probe_for_a_serial_number_not_in_the_farm_lists_the_probes_seen(
    sim: RunningFarm,
) -> None:
    target = ProbeTarget(board="ghost", chip=NRF52832, snr=123456789)
    probe = Probe(target, virtual_factory(sim.endpoint))
    with pytest.raises(InfrastructureError) as caught:
        probe.open()
    message = str(caught.value)
    assert "123456789" in message
    assert str(BOARD.snr) in message
    assert str(OTHER.snr) in message
    assert caught.value.board == "ghost"


def test_probe_reset_leaves_the_core_running_so_the_banner_appears(
    sim: RunningFarm, rig: Rig, spec: BoardSpec
) -> None:
    app = Behaviour("blinky", "probe test app", "1.0.0", BANNER)
    image = sample_image(0, 0x2000, app, "probe test app", ram_end(NRF52832))
    with rig.probe(spec) as probe, rig.console(spec) as console:
        probe.erase_all()
        probe.write_flash(0, image)
        assert probe.read(0, 16) == image[:16]
        probe.reset()
        console.expect(BANNER, timeout=WAIT_S)
        assert not probe.api.is_halted()


@pytest.mark.timeout(60)  # a hang would be the bug: fail instead of waiting forever
def test_farm_stopping_mid_session_is_an_infrastructure_error_not_a_hang(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with running_farm(tmp_path_factory.mktemp("sim-dies"), [BOARD]) as farm:
        rig = Rig(farm.farm(), farm.state)
        probe = rig.probe(rig.farm.board(BOARD.name)).open()
        try:
            assert probe.read_u32(FICR_CODEPAGESIZE) == NRF52832.page_size
            farm.stop()
            for _ in range(2):  # the first call after the loss and any later one
                with pytest.raises(InfrastructureError) as caught:
                    probe.read_u32(FICR_CODEPAGESIZE)
                assert caught.value.board == BOARD.name
                assert "sim serve" in str(caught.value)
                assert caught.value.__cause__ is None
        finally:
            probe.close()
