"""VirtualLowLevelAPI against the real ``pynrfjprog.LowLevel.API`` installed here.

The real class loads pynrfjprog's own nrfjprog library (shipped in the wheel) but, without
SEGGER's J-Link library, cannot open a session. That is enough to compare signatures, argument
checks (made before any library call) and the error of a call before ``open()`` side by side.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import serial
from pynrfjprog import LowLevel, Parameters
from pynrfjprog.APIError import APIError, NrfjprogdllErr
from simfarm import WAIT_S, RunningFarm, SimBoard, running_farm

from dfuhil.formats.chips import CHIPS, FICR_CODEPAGESIZE
from dfuhil.links.probe import LowLevelLike
from dfuhil.sim.lowlevel import VirtualLowLevelAPI

REAL = LowLevel.API
VIRTUAL = VirtualLowLevelAPI
NOWHERE = "unix:/nonexistent/dfuhil-debug.sock"


def public_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and name[0] != "_"}


SHARED = sorted(name for name in public_methods(VIRTUAL) if hasattr(REAL, name))
PROBE_USES = sorted(public_methods(LowLevelLike))

Shape = list[tuple[str, Any, Any]]


def shape(function: Callable[..., Any]) -> Shape:
    """Parameter names, kinds and defaults, in order (annotations do not matter)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.fixture
def real() -> LowLevel.API:
    try:
        return REAL("NRF52")
    except (RuntimeError, OSError) as exc:  # pynrfjprog's own library missing for this CPU
        pytest.skip(f"pynrfjprog cannot load its nrfjprog library here: {exc}")


@pytest.fixture
def virtual() -> VirtualLowLevelAPI:
    return VIRTUAL("NRF52", endpoint=NOWHERE)


# --- signatures --------------------------------------------------------------------------------


def test_the_virtual_api_shares_the_core_of_pynrfjprogs_surface() -> None:
    assert {"read", "write", "erase_all", "sys_reset", "enum_emu_snr"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_shared_method_has_pynrfjprogs_parameters_order_and_defaults(name: str) -> None:
    assert shape(getattr(VIRTUAL, name)) == shape(getattr(REAL, name))


def test_constructor_matches_pynrfjprog_plus_keyword_only_endpoint() -> None:
    virtual = shape(VIRTUAL.__init__)
    extra = [p for p in virtual if p[0] == "endpoint"]
    assert extra == [("endpoint", inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty)]
    assert [p for p in virtual if p[0] != "endpoint"] == shape(REAL.__init__)


def test_methods_only_the_virtual_api_has_are_sim_extensions() -> None:
    only_virtual = public_methods(VIRTUAL) - set(dir(REAL))
    assert only_virtual
    assert all(name.startswith("sim_") for name in only_virtual), sorted(only_virtual)


@pytest.mark.parametrize("name", PROBE_USES)
def test_method_the_probe_adapter_uses_exists_on_both_backends(name: str) -> None:
    protocol = [p[0] for p in shape(getattr(LowLevelLike, name))]
    assert [p[0] for p in shape(getattr(REAL, name))] == protocol
    assert [p[0] for p in shape(getattr(VIRTUAL, name))] == protocol


@pytest.mark.parametrize("chip_name", sorted(CHIPS))
def test_every_catalogue_chip_reports_a_real_pynrfjprog_device_version(chip_name: str) -> None:
    assert CHIPS[chip_name].device_version in Parameters.DeviceVersion.__members__


# --- argument checks and sessions, side by side with the real class ----------------------------

BAD_ARGUMENTS: list[tuple[str, tuple[Any, ...]]] = [
    ("read", (-1, 4)),
    ("read", (2**32, 4)),
    ("read", ("0x0", 4)),
    ("read", (0, -1)),
    ("read_u32", (1.5,)),
    ("write", (0, [1], 2)),
    ("write", (0, [1], -1)),
    ("write", (0, [], True)),
    ("write", (0, None, True)),
    ("write", (0, "ab", True)),
    ("write", (0, [256], True)),
    ("write", (0, [1.5], True)),
    ("write_u32", (-4, 0, True)),
    ("write_u32", (0, 2**32, True)),
    ("write_u32", (0, 0, 2)),
    ("erase_page", (-1,)),
    ("erase_range", (0, -1)),
    ("enum_emu_com_ports", (-1,)),
    ("connect_to_emu_with_snr", (-1,)),
    ("connect_to_emu_with_snr", (1, -5)),
    ("run", (-1, 0)),
]


@pytest.mark.parametrize(("name", "args"), BAD_ARGUMENTS, ids=lambda v: repr(v))
def test_bad_argument_is_a_value_error_like_pynrfjprog(
    real: LowLevel.API, virtual: VirtualLowLevelAPI, name: str, args: tuple[Any, ...]
) -> None:
    with pytest.raises(ValueError):
        getattr(real, name)(*args)
    with pytest.raises(ValueError):
        getattr(virtual, name)(*args)


# Valid arguments for the shared methods that take some; these include pynrfjprog's lenient
# spellings (control=1, bytes, tuples), which must pass the checks on both sides.
VALID_ARGUMENTS: list[tuple[str, tuple[Any, ...]]] = [
    ("read", (0, 4)),
    ("read", (0xFFFFFFFF, 0)),
    ("read_u32", (0x10000010,)),
    ("write", (0, [1, 2, 3, 4], True)),
    ("write", (0, [1], 1)),
    ("write", (0, [1], 0)),
    ("write", (0, b"\x01\x02", True)),
    ("write", (0, (1, 2), False)),
    ("write_u32", (0, 0xFFFFFFFF, 1)),
    ("erase_page", (0x1000,)),
    ("erase_range", (0, 0x2000)),
    ("enum_emu_com_ports", (1,)),
    ("connect_to_emu_with_snr", (1,)),
    ("connect_to_emu_with_ip", ()),
    ("run", (0, 0x20000000)),
    ("select_family", ("NRF52",)),
    ("configure", ({"jlink": {"auto_update_fw": False}},)),
]
_WITH_ARGUMENTS = {name for name, _ in VALID_ARGUMENTS}
NEED_A_SESSION = VALID_ARGUMENTS + [
    (name, ())
    for name in SHARED
    if name not in _WITH_ARGUMENTS and name not in {"open", "close", "is_open", "version"}
]


@pytest.mark.parametrize(("name", "args"), NEED_A_SESSION, ids=lambda v: repr(v))
def test_call_before_open_is_invalid_session_like_pynrfjprog(
    real: LowLevel.API, virtual: VirtualLowLevelAPI, name: str, args: tuple[Any, ...]
) -> None:
    with pytest.raises(APIError) as real_error:
        getattr(real, name)(*args)
    with pytest.raises(APIError) as virtual_error:
        getattr(virtual, name)(*args)
    assert real_error.value.err_code == NrfjprogdllErr.INVALID_SESSION == -7
    assert virtual_error.value.err_code == real_error.value.err_code


def test_unreachable_debug_port_fails_open_with_an_api_error(virtual: VirtualLowLevelAPI) -> None:
    with pytest.raises(APIError) as caught:
        virtual.open()
    assert caught.value.err_code == NrfjprogdllErr.JLINKARM_DLL_ERROR
    assert "nonexistent" in str(caught.value)
    assert not virtual.is_open()


# --- against a farm ----------------------------------------------------------------------------

BOARD = SimBoard("vparity", "nRF52832_xxAA", "PCA10040", 910000201)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory.mktemp("sim-parity"), [BOARD]) as farm:
        yield farm


@pytest.fixture
def session(sim: RunningFarm) -> Iterator[VirtualLowLevelAPI]:
    with sim.api(BOARD.name) as api:
        yield api


def test_enum_emu_snr_lists_the_farms_probes(sim: RunningFarm) -> None:
    with VIRTUAL(endpoint=sim.endpoint) as api:
        assert api.enum_emu_snr() == [BOARD.snr]


@pytest.fixture
def empty_debug_port() -> Iterator[str]:
    """The farm's debug port server, in a process of its own, serving no board at all."""
    directory = tempfile.mkdtemp(prefix="dfuhil-t")  # short: Unix socket paths are limited
    path = os.path.join(directory, "debug.sock")
    script = (
        "import sys\n"
        "from dfuhil.sim.debugport import DebugPortServer\n"
        "server = DebugPortServer(sys.argv[1], {}, 1.0)\n"
        "server.start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "server.close()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        yield f"unix:{path}"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=WAIT_S)
        os.rmdir(directory)


def test_enum_emu_snr_is_none_when_no_probe_is_served(empty_debug_port: str) -> None:
    with VIRTUAL(endpoint=empty_debug_port) as api:
        assert api.enum_emu_snr() is None
        with pytest.raises(APIError) as no_probe:
            api.connect_to_emu_without_snr()
        assert no_probe.value.err_code == NrfjprogdllErr.NO_EMULATOR_CONNECTED
        with pytest.raises(APIError) as not_there:
            api.connect_to_emu_with_snr(BOARD.snr)
        assert not_there.value.err_code == NrfjprogdllErr.EMULATOR_NOT_CONNECTED


def test_enum_emu_com_ports_gives_pynrfjprog_comportinfo_for_the_boards_pty(
    sim: RunningFarm,
) -> None:
    with VIRTUAL(endpoint=sim.endpoint) as api:
        ports = api.enum_emu_com_ports(BOARD.snr)
    assert len(ports) == 1
    port = ports[0]
    assert type(port) is Parameters.ComPortInfo
    assert port.path == sim.serial(BOARD.name)
    assert (port.serial_number, port.vcom) == (BOARD.snr, 0)
    with serial.Serial(port.path, 115200, timeout=0) as tty:  # it is a real, openable tty
        assert tty.is_open


def test_read_returns_a_list_of_ints(session: VirtualLowLevelAPI) -> None:
    data = session.read(FICR_CODEPAGESIZE, 8)
    assert type(data) is list
    assert all(type(b) is int for b in data)
    assert data == list((0x1000).to_bytes(4, "little") + (128).to_bytes(4, "little"))
    assert session.read_u32(FICR_CODEPAGESIZE) == 0x1000


def test_read_device_info_gives_pynrfjprog_enums(session: VirtualLowLevelAPI) -> None:
    assert session.read_device_version() == "NRF52832_xxAA_REV2"
    assert session.read_device_family() == "NRF52"
    assert session.read_device_info() == (
        Parameters.DeviceVersion.NRF52832_xxAA_REV2,
        Parameters.DeviceName.NRF52832,
        Parameters.DeviceMemory.AA,
        Parameters.DeviceRevision.REV2,
    )


def test_connect_to_device_of_another_family_is_refused(sim: RunningFarm) -> None:
    with VIRTUAL(Parameters.DeviceFamily.NRF51, endpoint=sim.endpoint) as api:
        api.connect_to_emu_with_snr(BOARD.snr)
        with pytest.raises(APIError) as caught:
            api.connect_to_device()
    assert caught.value.err_code == NrfjprogdllErr.WRONG_FAMILY_FOR_DEVICE


def test_device_call_before_connecting_to_a_probe_is_no_emulator_connected(
    sim: RunningFarm,
) -> None:
    with VIRTUAL(endpoint=sim.endpoint) as api, pytest.raises(APIError) as caught:
        api.read_u32(FICR_CODEPAGESIZE)
    assert caught.value.err_code == NrfjprogdllErr.NO_EMULATOR_CONNECTED


def test_close_ends_the_session(sim: RunningFarm) -> None:
    api = VIRTUAL(endpoint=sim.endpoint)
    api.open()
    api.connect_to_emu_with_snr(BOARD.snr)
    api.close()
    assert not api.is_open()
    with pytest.raises(APIError) as caught:
        api.read_u32(FICR_CODEPAGESIZE)
    assert caught.value.err_code == NrfjprogdllErr.INVALID_SESSION
