"""Nordic mesh DFU regression: the guide "Configuring and performing DFU over Mesh", end to end.

A serial root and at least two more nodes (roles ``mesh`` / ``mesh-root`` in boards.yaml) are
provisioned in the guide's order; packages are built from the root's own device page, checked
before any transfer, sent through the root's port, and the result is read back the way the
bootloader records it (device page VERSION + FLAGS) and the way a person sees it (LEDs).
Runs unchanged on a lab and on the virtual farm; only radio loss injection needs the latter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import allure
import pytest

from dfuhil.farm.model import BoardSpec
from dfuhil.formats.meshkeys import generate_key, public_key_bytes
from dfuhil.formats.meshpkg import MeshPackage
from dfuhil.procedures.bootloader_verify import VerifyReport, verify_bootloader
from dfuhil.procedures.mesh_dfu import TransferResult
from dfuhil.procedures.mesh_outcome import InstalledApp, Verdict, table
from fixtures.mesh import MeshUnderTest

# Device seconds a refused package is given to (wrongly) install before the nodes are read:
# the 30 s rampdown plus validation and a bank copy, with margin.
REFUSAL_SETTLE_S = 60.0
BLINKY = "blinking"
# The DFU example after a transfer ended without an install (examples/dfu main.c: DFU END ->
# all off, then LED 0 and LED 1 on); None: not checked (boards have 4 LEDs, some fewer).
DFU_END_LEDS = ["on", "on", "off", "off"]


def settle(mesh: MeshUnderTest, device_seconds: float) -> None:
    """Let device time pass on the rig (a refusal is proven by nothing happening for a while)."""
    time.sleep(device_seconds * mesh.time_scale)


def blinky_pattern(board: BoardSpec) -> list[str]:
    return [BLINKY] + ["off"] * (len(board.leds.pins) - 1)


def before_and_after(mesh: MeshUnderTest) -> dict[str, InstalledApp | None]:
    return {b.name: mesh.installed(b) for b in mesh.boards}


def assert_nothing_installed(mesh: MeshUnderTest, before: dict[str, InstalledApp | None]) -> None:
    settle(mesh, REFUSAL_SETTLE_S)
    after = before_and_after(mesh)
    changed = [f"{n}: {before[n]} -> {after[n]}" for n in before if after[n] != before[n]]
    assert not changed, "a refused package was installed:\n" + "\n".join(changed)
    for board in mesh.nodes:
        first_led = mesh.leds(board).sample(window_s=2.0)[0]
        assert first_led.state != BLINKY, f"{board.name} runs blinky, yet the package was refused"


@pytest.fixture
def bootloaders_verified(mesh: MeshUnderTest) -> list[VerifyReport]:
    """tools/dfu/bootloader_verify.py on every node, as the guide asks after flashing."""
    reports = []
    for board in mesh.nodes:
        with mesh.serial_link(board) as link:
            report = verify_bootloader(
                mesh.probe(board), link, time_scale=mesh.rig.time_scale(board)
            )
        allure.attach(str(report), name=f"{board.name} bootloader verification", extension="txt")
        reports.append(report)
    failed = [str(r) for r in reports if not r.ok]
    if failed:
        pytest.fail("bootloader verification failed:\n" + "\n\n".join(failed), pytrace=False)
    return reports


@pytest.fixture
def radio_loss(mesh: MeshUnderTest) -> Iterator[Callable[[], int]]:
    """20 % packet loss on the virtual farm's radio for one test (a lab cannot inject it).

    Yields a function counting the packets the radio has dropped since the loss was set.
    """
    control = mesh.probe(mesh.root).extension("sim_radio")
    if control is None:
        pytest.skip("radio loss can only be injected on the virtual farm")

    def lost() -> int:
        return sum(int(board["lost"]) for board in control()["stats"].values())

    before = float(control()["loss"])
    lost_before = lost()
    control(loss=0.2)
    try:
        yield lambda: lost() - lost_before
    finally:
        control(loss=before)


def assert_preflight_ok(mesh: MeshUnderTest, package: MeshPackage) -> None:
    problems = [f"{b.name}: {m}" for b in mesh.nodes for m in mesh.check(package, b)]
    assert not problems, "pre-flight check refused the package:\n" + "\n".join(problems)


def assert_installed_everywhere(
    mesh: MeshUnderTest, result: TransferResult, package: MeshPackage
) -> None:
    """Every node confirmed by its device page (the table `dfuhil mesh dfu --board` prints)."""
    rows = mesh.confirm(result, package)
    unconfirmed = [row for row in rows if not row.confirmed]
    assert not unconfirmed, "mesh DFU not confirmed on every node:\n" + "\n".join(table(rows))


# --- the guide's happy path -------------------------------------------------------------------


def test_guide_happy_path_ends_with_one_led_blinking_on_every_node(
    mesh: MeshUnderTest, bootloaders_verified: list[VerifyReport]
) -> None:
    package = mesh.package()
    assert_preflight_ok(mesh, package)
    relays_before = {b.name: mesh.installed(b) for b in mesh.relays}
    result = mesh.transfer(package)
    assert result.segments == package.init.segments
    assert_installed_everywhere(mesh, result, package)
    for board in mesh.nodes:
        mesh.leds(board).wait_for(blinky_pattern(board), timeout_s=10.0, window_s=2.0)
    for board in mesh.relays:
        assert mesh.installed(board) == relays_before[board.name], f"relay {board.name} changed"


def test_same_package_sent_twice_is_installed_once(mesh: MeshUnderTest) -> None:
    """Sent with the DFU example itself, so the nodes can still hear the second transfer."""
    firmware = mesh.root.firmware
    assert firmware is not None and firmware.application is not None
    current = mesh.installed(mesh.root)
    assert current is not None
    package = mesh.package(image=firmware.application.file, name="dfu_app")
    assert package.init.application_version == current.app_version + 1
    assert_installed_everywhere(mesh, mesh.transfer(package), package)

    mismatches = mesh.check(package, mesh.root)
    assert [m.field for m in mismatches] == ["application_version"], mismatches
    assert "strictly higher" in str(mismatches[0])
    before = before_and_after(mesh)
    mesh.transfer(package)
    assert_nothing_installed(mesh, before)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version_delta": -1}, "application_version"),
        ({"company_id": 0x0000_0D15}, "company_id"),
        ({"app_id": 0x7A}, "application_id"),
    ],
    ids=["lower-version", "other-company", "other-application"],
)
def test_package_for_another_firmware_is_not_installed(
    mesh: MeshUnderTest, change: dict[str, int], field: str
) -> None:
    current = mesh.installed(mesh.root)
    assert current is not None
    delta = change.pop("version_delta", 1)
    package = mesh.package(version=max(current.app_version + delta, 0), **change)
    mismatches = mesh.check(package, mesh.root)
    assert field in [m.field for m in mismatches], mismatches
    before = before_and_after(mesh)
    mesh.transfer(package)
    assert_nothing_installed(mesh, before)


# --- signatures -------------------------------------------------------------------------------


@pytest.fixture
def keyed_mesh(mesh: MeshUnderTest) -> MeshUnderTest:
    """Every node's device page carries the public key of a fresh signing key."""
    key = generate_key()
    for board in mesh.boards:
        mesh.flash_device_page(board, public_key_bytes(key))
    mesh.signing_key = key
    return mesh


@pytest.mark.parametrize("signer", ["unsigned", "another-key"])
def test_keyed_device_page_refuses_unsigned_or_wrongly_signed_packages(
    keyed_mesh: MeshUnderTest, signer: str
) -> None:
    mesh = keyed_mesh
    key = generate_key() if signer == "another-key" else None
    package = mesh.package(key=key)
    mismatches = mesh.check(package, mesh.root)
    assert [m.field for m in mismatches] == ["signature"], mismatches
    before = before_and_after(mesh)
    root = mesh.transfer(package).serial_outcome(mesh.root.name)
    assert root.verdict is Verdict.REFUSED, root  # the root said so, and the host heard it
    assert "ERROR_UNAUTHORIZED" in root.evidence
    assert_nothing_installed(mesh, before)
    for board in mesh.nodes:  # the DFU example still runs and shows the END of the transfer
        mesh.leds(board).wait_for(DFU_END_LEDS, timeout_s=10.0, window_s=1.0)


def test_keyed_device_page_accepts_a_package_signed_with_its_key(
    keyed_mesh: MeshUnderTest,
) -> None:
    mesh = keyed_mesh
    package = mesh.package(key=mesh.signing_key)
    assert_preflight_ok(mesh, package)
    assert_installed_everywhere(mesh, mesh.transfer(package), package)


# --- the radio and the boards -----------------------------------------------------------------


def test_radio_loss_is_repaired(mesh: MeshUnderTest, radio_loss: Callable[[], int]) -> None:
    """20 % of packets lost per receiver; DATA_REQ / DATA_RSP between nodes repair it."""
    package = mesh.package()
    assert_installed_everywhere(mesh, mesh.transfer(package), package)
    assert radio_loss() > 0, "no packet was lost: the loss was not injected"


def test_board_without_device_page_is_reported_before_any_transfer(mesh: MeshUnderTest) -> None:
    victim = next(b for b in mesh.nodes if b != mesh.root)
    mesh.erase_device_page(victim)
    mismatches = mesh.check(mesh.package(), victim)
    assert [m.field for m in mismatches] == ["device_page"], mismatches
    assert "dfuhil provision" in mismatches[0].fix
