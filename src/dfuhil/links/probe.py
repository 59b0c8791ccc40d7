"""The SWD probe: one adapter over anything with ``pynrfjprog.LowLevel.API``'s surface.

The J-Link backend is ``pynrfjprog.LowLevel.API`` itself; the virtual backend is
``dfuhil.sim.lowlevel.VirtualLowLevelAPI``. This module is the only place that calls either, so
the code path a lab exercises is the one the framework's own tests exercise. It also turns
pynrfjprog's error codes into the taxonomy a nightly report needs: rig problems are
:class:`InfrastructureError` with a remedy, everything else names the board and the operation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pynrfjprog.APIError import APIError

from dfuhil.errors import DfuhilError, InfrastructureError, ProductError
from dfuhil.formats.chips import Chip

log = logging.getLogger(__name__)


class LowLevelLike(Protocol):
    """The subset of pynrfjprog.LowLevel.API that dfuhil uses."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def configure(self, configuration: Any = ..., config_type: Any = ...) -> None: ...
    def enum_emu_snr(self) -> list[int] | None: ...
    def connect_to_emu_with_snr(self, serial_number: int, jlink_speed_khz: int = ...) -> None: ...
    def connect_to_emu_with_ip(
        self,
        hostname: str = ...,
        port: int = ...,
        serial_number: int = ...,
        jlink_speed_khz: int = ...,
    ) -> None: ...
    def connect_to_device(self) -> None: ...
    def read_device_version(self) -> str: ...
    def read(self, addr: int, data_len: int) -> list[int]: ...
    def read_u32(self, addr: int) -> int: ...
    def write(self, addr: int, data: Any, control: bool) -> None: ...
    def write_u32(self, addr: int, data: int, control: bool) -> None: ...
    def erase_all(self) -> None: ...
    def erase_page(self, addr: int) -> None: ...
    def erase_uicr(self) -> None: ...
    def sys_reset(self) -> None: ...
    def pin_reset(self) -> None: ...
    def go(self) -> None: ...
    def halt(self) -> None: ...


ApiFactory = Callable[[str], LowLevelLike]

# pynrfjprog codes that mean "the rig", with what to do about it.
_INFRA_REMEDIES: dict[range | tuple[int, ...], str] = {
    (-100, -101, -103): (
        "install SEGGER's J-Link Software and Documentation Pack (it provides libjlinkarm.so; "
        "pynrfjprog does not ship it), then check `JLinkExe` runs"
    ),
    (-102, -104, -105): "unplug and replug the J-Link, then check the USB cable and hub power",
    (-10, -11, -13): (
        "check the J-Link is plugged in and not held by another program (nrfjprog, "
        "JLinkExe, an IDE); `nrfjprog --ids` lists the probes this host sees"
    ),
    (-12,): "the target has no power: check the board's power switch and supply",
    (-90,): "the chip is read-back protected (APPROTECT): recover it with `nrfjprog --recover`",
    (-150, -151, -152, -153): (
        "pynrfjprog's own libraries failed to load (libusb-1.0 missing?): "
        "`apt-get install libusb-1.0-0` and reinstall pynrfjprog"
    ),
    (-254,): "the nrfjprog DLL failed internally: power-cycle the J-Link and retry",
}


def _remedy_for(code: int) -> str | None:
    for codes, remedy in _INFRA_REMEDIES.items():
        if code in codes:
            return remedy
    return None


class ProbeError(DfuhilError):
    """A probe operation failed for a reason that is not the rig's (bad address, NVMC error)."""


@dataclass(frozen=True)
class ProbeTarget:
    """Which board a probe session is for."""

    board: str
    chip: Chip
    snr: int
    ip: str | None = None
    speed_khz: int = 2000
    port: int | None = None  # J-Link Remote Server port (None: its default)
    allow_recover: bool = False  # boards.yaml lets dfuhil mass-erase a protected chip

    @property
    def remote(self) -> str | None:
        """``HOST:PORT`` of the J-Link Remote Server, or None for a local probe."""
        if self.ip is None:
            return None
        return f"{self.ip}:{self.port}" if self.port else self.ip


class Probe:
    """An open SWD session to one board."""

    def __init__(self, target: ProbeTarget, api_factory: ApiFactory, *, time_scale: float = 1.0):
        self.target = target
        self.time_scale = time_scale  # wall seconds per device second (virtual farms run faster)
        self._factory = api_factory
        self._api: LowLevelLike | None = None

    @property
    def board(self) -> str:
        return self.target.board

    @property
    def chip(self) -> Chip:
        return self.target.chip

    @property
    def api(self) -> LowLevelLike:
        if self._api is None:
            raise ProbeError(f"probe for board {self.board} is not open")
        return self._api

    # --- session ------------------------------------------------------------------------------

    def open(self) -> Probe:
        t = self.target
        with self._errors("open the probe library"):
            api = self._factory(t.chip.family)
            api.open()
        self._api = api
        try:
            with self._errors("configure the probe library"):
                # A lab must be reproducible: never let the DLL rewrite probe firmware silently.
                api.configure({"jlink": {"auto_update_fw": False}})
            if t.ip is None:
                with self._errors("enumerate probes"):
                    seen = api.enum_emu_snr() or []
                if t.snr not in seen:
                    listed = ", ".join(str(s) for s in seen) or "none"
                    raise InfrastructureError(
                        f"J-Link {t.snr} is not connected (this host sees: {listed})",
                        "plug the probe in, or correct probe.snr in boards.yaml "
                        "(`nrfjprog --ids` lists the probes)",
                        board=t.board,
                    )
                with self._errors(f"connect to J-Link {t.snr}"):
                    api.connect_to_emu_with_snr(t.snr, t.speed_khz)
            else:
                with self._errors(f"connect to J-Link {t.snr} at {t.remote}"):
                    if t.port:
                        api.connect_to_emu_with_ip(
                            hostname=t.ip,
                            port=t.port,
                            serial_number=t.snr,
                            jlink_speed_khz=t.speed_khz,
                        )
                    else:
                        api.connect_to_emu_with_ip(
                            hostname=t.ip, serial_number=t.snr, jlink_speed_khz=t.speed_khz
                        )
            with self._errors("connect to the device"):
                api.connect_to_device()
                version = api.read_device_version()
            self._check_chip(version)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._api is not None:
            try:
                self._api.close()
            except Exception:  # closing a dead probe must not mask the original error
                log.debug("closing probe for %s failed", self.board, exc_info=True)
            self._api = None

    def __enter__(self) -> Probe:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_chip(self, version: str) -> None:
        expected = self.chip.device_version.split("_REV")[0].upper()
        if not str(version).upper().startswith(expected):
            raise InfrastructureError(
                f"boards.yaml says {self.chip.name}, but the probe reports {version}",
                "correct the board's chip in boards.yaml, or check the probe is wired to the "
                "right board",
                board=self.board,
            )

    # --- memory -------------------------------------------------------------------------------

    def read(self, address: int, length: int) -> bytes:
        if length == 0:
            return b""
        with self._errors(f"read {length} bytes at 0x{address:08X}"):
            return bytes(self.api.read(address, length))

    def read_u32(self, address: int) -> int:
        with self._errors(f"read 0x{address:08X}"):
            return int(self.api.read_u32(address))

    def write_flash(self, address: int, data: bytes) -> None:
        """Program flash or UICR through the NVMC (whole words)."""
        with self._errors(f"program {len(data)} bytes at 0x{address:08X}"):
            self.api.write(address, data, True)

    def write_u32(self, address: int, value: int, *, nvmc: bool = False) -> None:
        with self._errors(f"write 0x{address:08X}"):
            self.api.write_u32(address, value, nvmc)

    def erase_all(self) -> None:
        with self._errors("erase all"):
            self.api.erase_all()

    def erase_page(self, address: int) -> None:
        with self._errors(f"erase page 0x{address:08X}"):
            self.api.erase_page(address)

    def erase_uicr(self) -> None:
        with self._errors("erase UICR"):
            self.api.erase_uicr()

    # --- core ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """System reset and run (pynrfjprog leaves the core halted after sys_reset)."""
        with self._errors("reset"):
            self.api.sys_reset()
            self.api.go()

    def pin_reset(self) -> None:
        with self._errors("pin reset"):
            self.api.pin_reset()

    def halt(self) -> None:
        with self._errors("halt"):
            self.api.halt()

    def go(self) -> None:
        with self._errors("run"):
            self.api.go()

    def core_halted(self) -> bool | None:
        """Whether a debugger holds the core halted (pynrfjprog's ``is_halted``); None where
        the backend cannot tell. A halted core prints nothing: the rig's doing, not the app's."""
        is_halted = getattr(self.api, "is_halted", None)
        if is_halted is None:
            return None
        with self._errors("read the core state"):
            return bool(is_halted())

    @contextmanager
    def read_ahead(self, ranges: Sequence[tuple[int, int]]) -> Iterator[None]:
        """A hint that ``ranges`` (address, length) will be read soon and that calls until the
        end of the block may be batched. pynrfjprog reads cheaply where it stands: nothing to do.
        """
        yield

    def extension(self, name: str) -> Callable[..., Any] | None:
        """A backend-specific extra (the virtual farm's ``sim_*`` calls), if this backend has it."""
        method = getattr(self._api, name, None)
        return method if callable(method) else None

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except APIError as exc:
            raise self._translate(exc, doing) from None
        except (ValueError, TypeError) as exc:
            raise ProbeError(f"board {self.board}: cannot {doing}: {exc}") from None

    def _translate(self, exc: APIError, doing: str) -> DfuhilError:
        code = int(exc.err_code)
        detail = f"{exc.error_enum.name} ({code})" + (f": {exc.err_msg}" if exc.err_msg else "")
        remedy = _remedy_for(code)
        if remedy is not None:
            t = self.target  # which probe: the board's name alone does not say which J-Link
            where = f"J-Link {t.snr}" + (f" at {t.ip}" if t.ip else "")
            return InfrastructureError(
                f"{where}: cannot {doing}: {detail}", remedy, board=self.board
            )
        if code == -160:
            return ProductError(f"board {self.board}: verify failed while trying to {doing}")
        return ProbeError(f"board {self.board}: cannot {doing}: {detail}")


def jlink_factory(family: str) -> LowLevelLike:
    """The real thing: a pynrfjprog LowLevel API instance for the chip family."""
    from pynrfjprog import LowLevel

    api: LowLevelLike = LowLevel.API(family)
    return api


def virtual_factory(endpoint: str) -> ApiFactory:
    """A factory of VirtualLowLevelAPI instances that reach a virtual farm's debug port."""
    from dfuhil.sim.lowlevel import VirtualLowLevelAPI

    def make(family: str) -> LowLevelLike:
        return VirtualLowLevelAPI(family, endpoint=endpoint)

    return make
