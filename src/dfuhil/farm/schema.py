"""Pydantic models of boards.yaml exactly as written, before any cross-reference is resolved.

These models only check what one value can tell on its own (types, ranges, spellings); whatever
needs the chip catalogue or another part of the file (page alignment, references, duplicates) is
the loader's job, because only there can the message name both places. Unknown keys are refused
everywhere: a misspelt ``flow_contol`` silently ignored would cost a night of failed runs.

Validation is strict (no ``"123"`` -> 123 coercion) except that region ``start``/``size`` also
take strings such as ``"0x26000"``, the form people copy from linker scripts.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from dfuhil.formats.mcuboot_trailer import Mode

SUPPORTED_VERSION = 1

# Rates the nRF5 UART(E) BAUDRATE register supports, which is what a DK's VCOM can carry.
STANDARD_BAUDS: tuple[int, ...] = (
    1200,
    2400,
    4800,
    9600,
    14400,
    19200,
    28800,
    31250,
    38400,
    56000,
    57600,
    76800,
    115200,
    230400,
    250000,
    460800,
    921600,
    1000000,
)

VIRTUAL_PORT = "virtual"
BOARD_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_PORT_URL_RE = re.compile(r"^(?:rfc2217|socket)://(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_BLE_ADDRESS_RE = re.compile(r"^(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}(?:/P)?$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

# Tags of the "name or inline mapping" unions; the loader drops them from error locations.
TAG_REF = "@ref"
TAG_INLINE = "@inline"
UNION_TAGS = frozenset({TAG_REF, TAG_INLINE})


def _parse_int(value: Any) -> Any:
    """Accept ``"0x26000"``/``"4096"`` strings for addresses; leave everything else to pydantic."""
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a number; write an integer such as 0x26000 or '0x26000'"
            ) from None
    return value


Address = Annotated[int, BeforeValidator(_parse_int), Field(ge=0)]
Size = Annotated[int, BeforeValidator(_parse_int), Field(gt=0)]


def _ref_or_inline(value: Any) -> str | None:
    """Discriminate a reference by name from an inline mapping, so errors come from one branch."""
    if isinstance(value, str):
        return TAG_REF
    if isinstance(value, dict):
        return TAG_INLINE
    return None


def is_valid_host(host: str) -> bool:
    """A dotted IPv4 address or an RFC 1123 host name (what a networked J-Link answers on)."""
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_HOST_LABEL_RE.match(label) for label in labels)


class _Strict(BaseModel):
    """Every model refuses unknown keys and silent type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RadioSchema(_Strict):
    """The virtual farm's radio medium: every virtual board is one node of one mesh."""

    loss: float = Field(default=0.0, ge=0, lt=1)
    # board -> boards that hear it; omitted = everyone hears everyone. Links are symmetric.
    neighbours: dict[str, list[str]] = Field(default_factory=dict)
    seed: int = 1


class LineFaultsSchema(_Strict):
    """Faults on one virtual board's serial line (see dfuhil.farm.model.LineFaults)."""

    bit_error_rate: float = Field(default=0.0, ge=0, le=0.1)
    drop_rate: float = Field(default=0.0, ge=0, le=0.5)
    duplicate_rate: float = Field(default=0.0, ge=0, le=0.5)
    garbage_rate: float = Field(default=0.0, ge=0, le=0.5)
    garbage_len: int = Field(default=16, ge=1, le=4096)
    stall_rate: float = Field(default=0.0, ge=0, le=0.5)
    stall_s: float = Field(default=0.5, gt=0, le=60)
    vanish_rate: float = Field(default=0.0, ge=0, le=0.5)
    vanish_after_bytes: int | None = Field(default=None, ge=1)
    vanish_s: float = Field(default=1.0, ge=0, le=60)
    direction: Literal["both", "to_board", "to_host"] = "both"
    seed: int = 1


class VirtualFarmSchema(_Strict):
    """Settings of the virtual farm process."""

    time_scale: float = Field(default=1.0, gt=0, le=10)
    radio: RadioSchema = Field(default_factory=RadioSchema)
    # board name -> faults on its serial line (a noisy cable, a USB hub that re-enumerates)
    line_faults: dict[str, LineFaultsSchema] = Field(default_factory=dict)


class RegionSchema(_Strict):
    """One named flash region, in bytes."""

    start: Address
    size: Size


class FlashLayoutSchema(_Strict):
    """How one chip's flash is carved up; region names are free, later code looks some up.

    The regions are written here, or read from a Nordic Partition Manager file (``pm_static``,
    path relative to the farm file) so the farm and the firmware build share one layout.
    """

    chip: str
    regions: Annotated[dict[str, RegionSchema], Field(min_length=1)] | None = None
    pm_static: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> FlashLayoutSchema:
        if (self.regions is None) == (self.pm_static is None):
            raise ValueError(
                "give exactly one of 'regions' (addresses written here) or 'pm_static' (a "
                "Partition Manager file such as pm_static.yml)"
            )
        return self


class ImageSchema(_Strict):
    """One image of a firmware set; how to tell it booted depends on what its UART speaks.

    ``protocol: text`` (default): ``banner`` is the regex the console must print after boot.
    ``protocol: mesh-serial``: the nRF5 SDK for Mesh binary serial; boot shows as its
    DEVICE_STARTED event, so a text banner makes no sense there.
    """

    file: str = Field(min_length=1)
    banner: str | None = None
    protocol: Literal["text", "mesh-serial"] = "text"

    @model_validator(mode="after")
    def _banner_needs_text(self) -> ImageSchema:
        if self.banner is not None and self.protocol != "text":
            raise ValueError(
                f"a {self.protocol} firmware prints no text banner; remove 'banner' (its boot "
                "is checked by the DEVICE_STARTED event)"
            )
        return self

    @field_validator("banner")
    @classmethod
    def _banner_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid Python regex ({exc})") from None
        return value


class SerialRecoverySchema(_Strict):
    """MCUboot's serial recovery (CONFIG_MCUBOOT_SERIAL): an SMP server in the bootloader."""

    wait_ms: int = Field(default=0, ge=0, le=60_000)  # BOOT_SERIAL_WAIT_FOR_DFU; 0: off


class SmpUartSchema(_Strict):
    """The application's SMP UART transport as built (Zephyr Kconfig; the defaults are stock).

    MCUmgr params do not report these, so the host sizes its requests from them; a virtual
    board's UART delivers the way ``delivery`` says (paced: a hardware UART; burst: USB
    CDC-ACM, a request arrives in one piece).
    """

    rx_buf_count: int = Field(default=2, ge=1, le=64)  # CONFIG_UART_MCUMGR_RX_BUF_COUNT
    rx_buf_size: int = Field(default=128, ge=64, le=4096)  # CONFIG_UART_MCUMGR_RX_BUF_SIZE
    mtu: int = Field(default=256, ge=16, le=65535)  # CONFIG_MCUMGR_TRANSPORT_UART_MTU
    delivery: Literal["paced", "burst"] = "burst"


class BleLinkSchema(_Strict):
    """The application's Bluetooth LE link as built (Zephyr Kconfig; the defaults are stock,
    dfuhil.formats.ble_link). Intervals in 1.25 ms units, timeouts in 10 ms units."""

    att_mtu: int = Field(default=498, ge=23, le=517)  # L2CAP TX MTU / ACL RX size - 4
    data_length: int = Field(default=251, ge=27, le=251)  # CONFIG_BT_CTLR_DATA_LENGTH_MAX
    pref_min_interval: int = Field(default=24, ge=6, le=3200)  # CONFIG_BT_PERIPHERAL_PREF_*
    pref_max_interval: int = Field(default=40, ge=6, le=3200)
    pref_latency: int = Field(default=0, ge=0, le=499)
    pref_timeout: int = Field(default=42, ge=10, le=3200)
    auto_update: bool = True  # CONFIG_BT_GAP_AUTO_UPDATE_CONN_PARAMS
    smp_conn_param_control: bool = True  # CONFIG_MCUMGR_TRANSPORT_BT_CONN_PARAM_CONTROL
    smp_min_interval: int = Field(default=6, ge=6, le=3200)
    smp_max_interval: int = Field(default=9, ge=6, le=3200)
    smp_latency: int = Field(default=0, ge=0, le=499)
    smp_restore_ms: int = Field(default=5000, ge=1000, le=65535)
    event_length_us: int = Field(default=7500, ge=1250, le=4_000_000)
    reassembly: bool = True  # CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY
    latency_request: bool = False  # nRF Desktop: lower latency while an SMP transfer runs
    default_latency: int = Field(default=0, ge=0, le=499)  # what it raises the latency to

    @model_validator(mode="after")
    def _ranges(self) -> BleLinkSchema:
        if self.pref_min_interval > self.pref_max_interval:
            raise ValueError("pref_min_interval is above pref_max_interval; swap them")
        if self.smp_min_interval > self.smp_max_interval:
            raise ValueError("smp_min_interval is above smp_max_interval; swap them")
        return self


Transport = Literal["serial", "udp", "ble"]


def _serial_only() -> list[Transport]:
    return ["serial"]


class McubootSchema(_Strict):
    """What the board's MCUboot was built with, as far as a DFU test has to know.

    ``key`` is the PEM of the key MCUboot trusts: a private key lets suites sign updates, a
    public one only lets dfuhil check images. ``builds`` are unsigned application builds (.bin)
    the suites sign at test time (e.g. ``update``, ``crash-at-boot``, ``never-confirm``).
    """

    mode: Mode
    key: str = Field(min_length=1)
    header_size: Annotated[int, BeforeValidator(_parse_int), Field(ge=32, le=0xFFFF)] = 0x200
    max_align: Literal[8, 16, 32] = 8  # BOOT_MAX_ALIGN
    write_size: Literal[1, 2, 4, 8, 16, 32] = 4  # flash program unit; imgtool --align
    max_sectors: int = Field(default=128, ge=1, le=8192)  # BOOT_MAX_IMG_SECTORS
    downgrade_prevention: bool = False
    allow_sample_keys: bool = False
    confirm: Literal["host", "app"] = "host"  # who confirms a test image after it booted
    transports: list[Transport] = Field(default_factory=_serial_only)
    dfu_lock_timeout_ms: int = Field(default=0, ge=0, le=3_600_000)  # nRF Desktop DFU lock
    serial_recovery: SerialRecoverySchema | None = None
    smp_uart: SmpUartSchema | None = None  # the app's SMP UART buffers; None: stock, burst
    ble_link: BleLinkSchema | None = None  # the app's Bluetooth LE link; None: stock
    builds: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> McubootSchema:
        if not self.transports or len(set(self.transports)) != len(self.transports):
            raise ValueError("transports: list each of serial, udp, ble at most once, at least one")
        if self.dfu_lock_timeout_ms and len(self.transports) < 2:
            raise ValueError(
                "dfu_lock_timeout_ms: the DFU lock is shared between transports; with one "
                "transport there is nothing to lock, remove it (or add udp to transports)"
            )
        if self.ble_link is not None and "ble" not in self.transports:
            raise ValueError("ble_link: the build has no ble transport; add ble to transports")
        if self.downgrade_prevention and self.mode in ("direct-xip", "direct-xip-revert"):
            raise ValueError(
                f"downgrade_prevention: MCUboot does not allow it with {self.mode} (the highest "
                "version boots anyway); remove it"
            )
        if self.mode == "single-slot" and self.serial_recovery is None:
            raise ValueError(
                "a single-slot MCUboot has no secondary slot to upload to, only serial recovery "
                "can update it; add serial_recovery: {wait_ms: 0}"
            )
        return self


class FirmwareSetSchema(_Strict):
    """The images a board is provisioned with; every one optional."""

    chip: str
    softdevice: ImageSchema | None = None
    bootloader: ImageSchema | None = None
    application: ImageSchema | None = None
    device_page: ImageSchema | None = None
    dfu_update: ImageSchema | None = None  # sent by the DFU suites, never flashed over SWD
    mcuboot: McubootSchema | None = None  # the bootloader is MCUboot: its build settings


# How a real J-Link is driven: nRF Util's `nrfutil device` (today's tool), or pynrfjprog (archived
# by Nordic; "jlink" is its former spelling here). "virtual" is a board of the virtual farm.
ProbeBackend = Literal["nrfutil", "pynrfjprog", "jlink", "virtual"]
# The farm-wide default for boards that name no backend; "auto" is nrfutil when its executable
# is on PATH, else pynrfjprog.
DefaultBackend = Literal["auto", "nrfutil", "pynrfjprog"]


def _check_remote(value: str | None) -> str | None:
    """``HOST:PORT`` (or ``HOST``) of a SEGGER J-Link Remote Server."""
    if value is None:
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "19020"
    if is_valid_host(host) and port.isdigit() and 1 <= int(port) <= 65535:
        return value
    raise ValueError(
        f"{value!r} is not a J-Link Remote Server address; write HOST:PORT (e.g. 192.0.2.7:19020)"
    )


class ProbeSchema(_Strict):
    """The debug probe: a J-Link (local, or behind a J-Link Remote Server) or a virtual probe.

    ``backend`` omitted: the farm's ``probe_backend``. ``remote`` is the J-Link Remote Server
    (``nrfutil --remote-jlink``, pynrfjprog ``connect_to_emu_with_ip``); ``ip`` is its older
    spelling (host only, default port). ``allow_recover`` lets dfuhil mass-erase a protected
    chip (never implicit: a false APPROTECT detection would wipe a board).
    """

    backend: ProbeBackend | None = None
    snr: int | None = Field(default=None, ge=1, le=2**32 - 1)
    ip: str | None = None
    remote: str | None = None
    speed_khz: int = Field(default=2000, ge=1, le=50000)
    allow_recover: bool = False

    @field_validator("ip")
    @classmethod
    def _ip_is_host(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_host(value):
            raise ValueError(f"{value!r} is neither an IPv4 address nor a host name")
        return value

    @field_validator("remote")
    @classmethod
    def _remote_form(cls, value: str | None) -> str | None:
        return _check_remote(value)

    @model_validator(mode="after")
    def _one_address(self) -> ProbeSchema:
        if self.ip is not None and self.remote is not None:
            raise ValueError("give either remote (HOST:PORT) or ip (its older form), not both")
        return self


class SerialSchema(_Strict):
    """The board's console UART as the test host reaches it."""

    port: str
    baud: int = 115200
    flow_control: Literal["none", "rtscts"] = "none"

    @field_validator("port")
    @classmethod
    def _port_form(cls, value: str) -> str:
        if value == VIRTUAL_PORT or (value.startswith("/dev/") and len(value) > 5):
            return value
        match = _PORT_URL_RE.match(value)
        if match and 1 <= int(match["port"]) <= 65535:
            return value
        raise ValueError(
            f"{value!r} is not a port; use 'virtual', a device path (/dev/ttyACM0, "
            "/dev/serial/by-id/...), rfc2217://host:port or socket://host:port"
        )

    @field_validator("baud")
    @classmethod
    def _standard_baud(cls, value: int) -> int:
        if value not in STANDARD_BAUDS:
            rates = ", ".join(str(b) for b in STANDARD_BAUDS)
            raise ValueError(f"{value} is not a standard baud rate; use one of {rates}")
        return value


class LedSchema(_Strict):
    """LED pins as flat GPIO numbers (P1.03 = 35); ``pins`` defaults to the board type's."""

    pins: list[int] | None = None
    active_low: bool = True


FirmwareField = Annotated[
    Annotated[str, Tag(TAG_REF)] | Annotated[FirmwareSetSchema, Tag(TAG_INLINE)],
    Discriminator(
        _ref_or_inline,
        custom_error_type="ref_or_mapping",
        custom_error_message="expected the name of a firmware set or an inline mapping",
    ),
]
LayoutField = Annotated[
    Annotated[str, Tag(TAG_REF)] | Annotated[FlashLayoutSchema, Tag(TAG_INLINE)],
    Discriminator(
        _ref_or_inline,
        custom_error_type="ref_or_mapping",
        custom_error_message="expected the name of a flash layout or an inline mapping",
    ),
]


class BleSchema(_Strict):
    """How a host finds the board on the air: its CONFIG_BT_DEVICE_NAME, optionally its address."""

    name: str = Field(min_length=1, max_length=248)  # BT_DEVICE_NAME_MAX
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        if value is not None and not _BLE_ADDRESS_RE.match(value):
            raise ValueError(
                f"{value!r} is not a Bluetooth address; write it as AA:BB:CC:DD:EE:FF "
                "(add /P for a public address)"
            )
        return value


# labgrid 26.0.1's network power switch models (labgrid/driver/power/*.py): the ``model`` of a
# NetworkPowerPort names the module its NetworkPowerDriver imports.
POWER_MODELS = (
    "apc", "digipower", "digitalloggers_http", "digitalloggers_restapi", "eaton",
    "eg_pms2_network", "eth008", "gude", "gude24", "gude8031", "gude8225", "gude8316",
    "mfi_mpower", "netio", "netio_kshell", "pe6216", "poe_mib", "poe_netgear_plus", "raritan",
    "rest", "sentry", "shelly_gen1", "shelly_gen2", "siglent", "simplerest", "tinycontrol",
    "tinycontrol_tcpdu", "tplink", "ubus",
)  # fmt: skip
# Models whose ``host`` is a URL template the driver fills with {index} and {value}.
URL_POWER_MODELS = ("rest", "simplerest")


class PowerSchema(_Strict):
    """The board's supply switch, as labgrid's exporter describes a ``NetworkPowerPort``:
    the switch's model (labgrid's driver module), its host (an address, or the URL template of
    the ``rest``/``simplerest`` models) and the outlet index. labgrid's driver does the talking.
    """

    model: str
    host: str = Field(min_length=1)
    index: int = Field(ge=0)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in POWER_MODELS:
            raise ValueError(
                f"{value!r} is no power switch model of labgrid 26.0.1; use one of "
                + ", ".join(POWER_MODELS)
            )
        return value

    @model_validator(mode="after")
    def _url_template(self) -> PowerSchema:
        if self.model in URL_POWER_MODELS and (
            not self.host.startswith(("http://", "https://")) or "{value}" not in self.host
        ):
            raise ValueError(
                f"model {self.model} takes host as a URL template with {{value}} (0 or 1) and "
                "optionally {index}, e.g. http://192.0.2.9/relay/{index}/{value}"
            )
        return self


class BoardSchema(_Strict):
    """One board of the farm as written."""

    name: str
    chip: str
    board_type: str | None = None
    probe: ProbeSchema
    serial: SerialSchema | None = None
    leds: LedSchema | None = None
    roles: list[str] = Field(default_factory=list)
    firmware: FirmwareField | None = None
    flash_layout: LayoutField
    # SMP over UDP (MCUboot boards with a network transport): "virtual" or "host:port".
    smp_udp: str | None = None
    # Boards on another lab host: the labgrid place that holds the board's resources, and the
    # lab host whose exporter publishes them (`dfuhil farm export --host NAME`).
    place: str | None = None
    lab_host: str | None = None
    # Its supply switch (a network PDU or USB hub port), reached through the labgrid place.
    power: PowerSchema | None = None
    # SMP over Bluetooth LE (firmware sets whose mcuboot.transports lists ble).
    ble: BleSchema | None = None

    @field_validator("place", "lab_host")
    @classmethod
    def _lab_name_form(cls, value: str | None) -> str | None:
        if value is not None and not BOARD_NAME_RE.match(value):
            raise ValueError(
                f"{value!r}: use only letters, digits, '_', '.' and '-' (labgrid names)"
            )
        return value

    @field_validator("smp_udp")
    @classmethod
    def _udp_form(cls, value: str | None) -> str | None:
        if value is None or value == VIRTUAL_PORT:
            return value
        host, sep, port = value.rpartition(":")
        if sep and is_valid_host(host) and port.isdigit() and 1 <= int(port) <= 65535:
            return value
        raise ValueError(
            f"{value!r} is not a UDP endpoint; use 'virtual' or host:port (e.g. 192.0.2.7:1337)"
        )

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not BOARD_NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a board name; use only letters, digits, '_', '.' and '-' "
                "(names become pytest ids and file names)"
            )
        return value


class FarmSchema(_Strict):
    """The whole file. The loader validates the sections' items one by one (see loader.py)."""

    version: int
    probe_backend: DefaultBackend = "auto"
    # labgrid's coordinator for boards with a `place` (LG_COORDINATOR is used when absent).
    coordinator: str | None = None
    # The Bluetooth controller the host uses on a lab, a bumble transport name (usb:0,
    # serial:/dev/ttyACM0,1000000); the virtual farm's own radio link when absent.
    ble_hci: str | None = Field(default=None, min_length=1)

    @field_validator("coordinator")
    @classmethod
    def _coordinator_form(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if sep and is_valid_host(host) and port.isdigit() and 1 <= int(port) <= 65535:
            return value
        raise ValueError(
            f"{value!r} is not a coordinator address; write host:port (labgrid's default port "
            "is 20408, e.g. 192.0.2.10:20408)"
        )

    virtual_farm: VirtualFarmSchema = Field(default_factory=VirtualFarmSchema)
    flash_layouts: dict[str, FlashLayoutSchema] = Field(default_factory=dict)
    firmware_sets: dict[str, FirmwareSetSchema] = Field(default_factory=dict)
    boards: list[BoardSchema]

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SUPPORTED_VERSION:
            raise ValueError(
                f"unsupported version {value}; this dfuhil reads version {SUPPORTED_VERSION} "
                "(see boards.lab.example.yaml)"
            )
        return value
