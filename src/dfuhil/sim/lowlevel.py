"""``pynrfjprog.LowLevel.API``'s surface, backed by the virtual farm's debug port.

Same method names and arguments (including the required ``control`` flag on writes), same return
shapes (``read()`` gives a list of ints, ``enum_emu_snr()`` gives None when there is no probe),
same argument checks (ValueError) and the same ``pynrfjprog.APIError.APIError`` codes. The
probe adapter (dfuhil.links.probe) therefore drives a virtual board with exactly the code that
drives a J-Link. Methods prefixed ``sim_`` exist only here and are for the farm's own tooling.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from pynrfjprog import Parameters
from pynrfjprog.APIError import APIError, NrfjprogdllErr
from pynrfjprog.LowLevel import ConfigFile

from dfuhil.sim.wire import (
    connect_debug_port,
    debug_port_address,
    decode_bytes,
    encode_bytes,
    recv_message,
    send_message,
)

_U32 = 0xFFFFFFFF
DEFAULT_SPEED_KHZ = 2000


def _check_u32(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U32:
        raise ValueError(f"The {name} parameter must be an unsigned 32-bit value.")
    return value


def _check_bool(name: str, value: object) -> bool:
    # pynrfjprog's is_bool(): a bool, or a number from 0 to 1 (control=1 works on a J-Link).
    if not isinstance(value, bool) and not (isinstance(value, int | float) and 0 <= value <= 1):
        raise ValueError(f"The {name} parameter must be a boolean value.")
    return bool(value)


def _check_buf(value: object) -> bytes:
    # pynrfjprog's is_valid_buf(): a non-empty sequence of unsigned 8-bit values.
    if (
        not isinstance(value, bytes | bytearray | list | tuple)
        or len(value) == 0
        or not all(isinstance(b, int) and 0 <= b <= 0xFF for b in value)
    ):
        raise ValueError("The data parameter must be a sequence type with at least one item.")
    return bytes(value)


def _family_name(family: object) -> str:
    if isinstance(family, Parameters.DeviceFamily):
        return str(family.name)
    if isinstance(family, str):
        return str(Parameters.DeviceFamily[family.upper()].name)
    if isinstance(family, int):
        return str(Parameters.DeviceFamily(family).name)
    raise ValueError(
        "Parameter device_family must be of type int, str or DeviceFamily enumeration."
    )


class VirtualLowLevelAPI:
    """Drop-in for ``pynrfjprog.LowLevel.API`` talking to ``dfuhil sim serve``."""

    def __init__(
        self,
        device_family: object = Parameters.DeviceFamily.AUTO,
        jlink_arm_dll_path: str | None = None,
        log_str_cb: object = None,
        log: bool = False,
        log_str: str | None = None,
        log_file_path: str | None = None,
        log_stringio: object = None,
        *,
        endpoint: str,
    ) -> None:
        self._family = _family_name(device_family)
        self._address = debug_port_address(endpoint)
        self._path = endpoint.removeprefix("unix:").removeprefix("tcp:")  # for messages
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._snr: int | None = None
        self._device_connected = False
        self.configuration: dict[str, Any] = {}

    # --- session ------------------------------------------------------------------------------

    def version(self) -> tuple[int, int, int]:
        return (10, 24, 2)

    def dll_version(self) -> tuple[int, int, str]:
        self._require_open()
        return (10, 24, "virtual")

    def is_open(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        if self._sock is not None:
            raise RuntimeError("API instance is already opened.")
        try:
            sock = connect_debug_port(self._address)
        except OSError as exc:
            raise APIError(
                NrfjprogdllErr.JLINKARM_DLL_ERROR,
                f"virtual farm debug port {self._path} not reachable: {exc.strerror or exc}",
            ) from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._snr = None
        self._device_connected = False

    def configure(
        self,
        configuration: object = ConfigFile,
        config_type: object = Parameters.FileInputType.FILE_INPUT_PATH,
    ) -> None:
        self._require_open()
        if isinstance(configuration, dict):
            self.configuration.update(configuration)

    def __enter__(self) -> VirtualLowLevelAPI:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- probes -------------------------------------------------------------------------------

    def enum_emu_snr(self) -> list[int] | None:
        snrs: list[int] = self._call("enum", None)
        return snrs or None

    def enum_emu_com_ports(self, serial_number: int) -> list[Parameters.ComPortInfo]:
        _check_u32("serial_number", serial_number)
        path = self._call("device", serial_number)["serial"]
        info = Parameters.ComPortInfoStruct(path.encode(), 0, serial_number)
        return [Parameters.ComPortInfo(info)]

    def is_connected_to_emu(self) -> bool:
        self._require_open()
        return self._snr is not None

    def connect_to_emu_with_snr(
        self, serial_number: int, jlink_speed_khz: int = DEFAULT_SPEED_KHZ
    ) -> None:
        _check_u32("serial_number", serial_number)
        _check_u32("jlink_speed_khz", jlink_speed_khz)
        if serial_number not in (self.enum_emu_snr() or []):
            raise APIError(
                NrfjprogdllErr.EMULATOR_NOT_CONNECTED,
                f"no virtual probe with serial number {serial_number}",
            )
        self._snr = serial_number

    def connect_to_emu_with_ip(
        self,
        hostname: str = "",
        port: int = 0,
        serial_number: int = 0,
        jlink_speed_khz: int = DEFAULT_SPEED_KHZ,
    ) -> None:
        self._require_open()
        raise APIError(NrfjprogdllErr.CANNOT_CONNECT, "virtual probes are not reachable over IP")

    def connect_to_emu_without_snr(self, jlink_speed_khz: int = DEFAULT_SPEED_KHZ) -> None:
        snrs = self.enum_emu_snr()
        if not snrs:
            raise APIError(NrfjprogdllErr.NO_EMULATOR_CONNECTED)
        self._snr = snrs[0]

    def read_connected_emu_snr(self) -> int:
        return self._require_emu()

    def disconnect_from_emu(self) -> None:
        self._require_open()
        self._snr = None
        self._device_connected = False

    # --- device -------------------------------------------------------------------------------

    def select_family(self, family: object) -> None:
        self._require_open()
        self._family = _family_name(family)

    def connect_to_device(self) -> None:
        device = self._call("device", self._require_emu())
        if self._family not in ("AUTO", device["family"]):
            raise APIError(
                NrfjprogdllErr.WRONG_FAMILY_FOR_DEVICE,
                f"API opened for {self._family}, device is {device['family']}",
            )
        self._device_connected = True

    def is_connected_to_device(self) -> bool:
        self._require_open()
        return self._device_connected

    def disconnect_from_device(self) -> None:
        self._require_open()
        self._device_connected = False

    def read_device_family(self) -> str:
        family: str = self._call("device", self._require_emu())["family"]
        return family

    def read_device_version(self) -> str:
        version: str = self._call("device", self._require_emu())["device_version"]
        return version

    def read_device_info(
        self,
    ) -> tuple[
        Parameters.DeviceVersion,
        Parameters.DeviceName,
        Parameters.DeviceMemory,
        Parameters.DeviceRevision,
    ]:
        version_name = self.read_device_version()
        chip, rest = version_name.split("_", 1)  # "NRF52832", "xxAA_REV2"
        memory, revision = rest.removeprefix("xx").split("_", 1)
        name = (
            Parameters.DeviceName[chip]
            if chip in Parameters.DeviceName.__members__
            else (Parameters.DeviceName.NRF51xxx)
        )
        return (
            Parameters.DeviceVersion[version_name],
            name,
            Parameters.DeviceMemory[memory],
            Parameters.DeviceRevision[revision],
        )

    # --- memory -------------------------------------------------------------------------------

    def read(self, addr: int, data_len: int) -> list[int]:
        _check_u32("addr", addr)
        _check_u32("data_len", data_len)
        raw = decode_bytes(self._device_call("read", address=addr, length=data_len))
        return list(raw)

    def read_u32(self, addr: int) -> int:
        _check_u32("addr", addr)
        raw = decode_bytes(self._device_call("read", address=addr, length=4))
        return int.from_bytes(raw, "little")

    def write(self, addr: int, data: object, control: bool) -> None:
        _check_u32("addr", addr)
        payload = _check_buf(data)
        control = _check_bool("control", control)
        self._device_call("write", address=addr, data=encode_bytes(payload), control=control)

    def write_u32(self, addr: int, data: int, control: bool) -> None:
        _check_u32("addr", addr)
        _check_u32("data", data)
        control = _check_bool("control", control)
        raw = data.to_bytes(4, "little")
        self._device_call("write", address=addr, data=encode_bytes(raw), control=control)

    def erase_all(self) -> None:
        self._device_call("erase_all")

    def erase_page(self, addr: int) -> None:
        _check_u32("addr", addr)
        self._device_call("erase_page", address=addr)

    def erase_range(self, addr: int, length: int) -> tuple[int, int]:
        _check_u32("addr", addr)
        _check_u32("length", length)
        device = self._call("device", self._require_emu())
        page = 1024 if device["family"] == "NRF51" else 4096
        start = addr - addr % page
        end = addr + length
        for page_addr in range(start, end, page):
            self._device_call("erase_page", address=page_addr)
        erased = (end - start + page - 1) // page * page
        return (start, erased)

    def erase_uicr(self) -> None:
        self._device_call("erase_uicr")

    def recover(self) -> None:
        self._device_call("erase_all")

    # --- core ---------------------------------------------------------------------------------

    def sys_reset(self) -> None:
        self._device_call("sys_reset")

    def debug_reset(self) -> None:
        self._device_call("debug_reset")

    def pin_reset(self) -> None:
        self._device_call("pin_reset")

    def hard_reset(self) -> None:
        self._device_call("hard_reset")

    def halt(self) -> None:
        self._device_call("halt")

    def go(self) -> None:
        self._device_call("go")

    def run(self, pc: int, sp: int) -> None:
        _check_u32("pc", pc)
        _check_u32("sp", sp)
        self._device_call("go")

    def is_halted(self) -> bool:
        halted: bool = self._device_call("is_halted")
        return halted

    # --- virtual farm extensions --------------------------------------------------------------

    def sim_time_scale(self) -> float:
        scale: float = self._call("time_scale", None)
        return scale

    def sim_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._call("status", self._require_emu())
        return status

    def sim_stats(self) -> dict[str, float]:
        stats: dict[str, float] = self._call("stats", self._require_emu())
        return stats

    def sim_reset_stats(self) -> None:
        self._call("reset_stats", self._require_emu())

    def sim_radio(self, loss: float | None = None) -> dict[str, Any]:
        """The farm's radio: set the per-receiver loss probability when ``loss`` is given;
        always answer ``{"loss": float, "stats": {board: {sent, delivered, lost, overflow}}}``."""
        if loss is not None and (
            isinstance(loss, bool) or not isinstance(loss, int | float) or not 0 <= loss <= 1
        ):
            raise ValueError("The loss parameter must be a number from 0 to 1.")
        radio: dict[str, Any] = self._call("radio", self._require_emu(), loss=loss)
        return radio

    # --- plumbing -----------------------------------------------------------------------------

    def _require_open(self) -> socket.socket:
        if self._sock is None:
            raise APIError(NrfjprogdllErr.INVALID_SESSION)
        return self._sock

    def _require_emu(self) -> int:
        self._require_open()
        if self._snr is None:
            raise APIError(NrfjprogdllErr.NO_EMULATOR_CONNECTED)
        return self._snr

    def _device_call(self, method: str, **args: Any) -> Any:
        return self._call(method, self._require_emu(), **args)

    def _call(self, method: str, snr: int | None, **args: Any) -> Any:
        sock = self._require_open()
        with self._lock:
            try:
                send_message(sock, {"method": method, "snr": snr, "args": args})
                answer = recv_message(sock)
            except OSError as exc:
                answer = None
                reason = exc.strerror
            else:
                reason = "connection closed"
        if answer is None:
            raise APIError(
                NrfjprogdllErr.JLINKARM_DLL_ERROR,
                f"virtual farm debug port {self._path}: {reason} (did `dfuhil sim serve` stop?)",
            )
        if "err" in answer:
            raise APIError(int(answer["err"]), str(answer.get("msg", "")))
        return answer["ok"]
