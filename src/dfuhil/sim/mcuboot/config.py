"""What a virtual MCUboot and a virtual Zephyr SMP app were "built" with.

A real MCUboot has its partition layout, upgrade mode and trusted key compiled in; a Zephyr app
knows its partitions from devicetree and its SMP buffer sizes from Kconfig. The virtual farm's
images carry the same facts as behaviour descriptor parameters (dfuhil.sim.descriptor). The
firmware generator writes them with ``to_params()`` and the plug-ins read them with
``from_params()``, so the two can never disagree about a key name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

from dfuhil.formats.mcuboot_build import FlashGeometry, SerialRecovery

Fault = Literal["crash-at-boot", "never-confirm"]


@dataclass(frozen=True)
class McubootBuild:
    """Descriptor params of kind ``mcuboot``."""

    geometry: FlashGeometry
    key_type: str  # dfuhil.formats.mcuboot.KEY_TYPES
    key_der: bytes  # PublicKey.der: the key this MCUboot verifies with
    downgrade_prevention: bool = False
    validate_primary: bool = True
    serial_recovery: SerialRecovery | None = None
    mcuboot_version: str = "v2.1.0"
    zephyr_version: str = "v3.7.99-ncs1"

    def to_params(self) -> dict[str, Any]:
        sr = self.serial_recovery
        return {
            **self.geometry.to_params(),
            "key_type": self.key_type,
            "key": self.key_der.hex(),
            "downgrade_prevention": self.downgrade_prevention,
            "validate_primary": self.validate_primary,
            "serial_recovery": None if sr is None else dict(sr.__dict__),
            "mcuboot_version": self.mcuboot_version,
            "zephyr_version": self.zephyr_version,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> McubootBuild:
        sr = p.get("serial_recovery")
        return cls(
            geometry=FlashGeometry.from_params(p),
            key_type=str(p["key_type"]),
            key_der=bytes.fromhex(str(p["key"])),
            downgrade_prevention=bool(p.get("downgrade_prevention", False)),
            validate_primary=bool(p.get("validate_primary", True)),
            serial_recovery=None if sr is None else SerialRecovery(**sr),
            mcuboot_version=str(p.get("mcuboot_version", "v2.1.0")),
            zephyr_version=str(p.get("zephyr_version", "v3.7.99-ncs1")),
        )


# CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE as Zephyr's smp_svr sets it in overlay-bt.conf (with
# CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY): one SMP packet in five Write Commands at its 498-byte
# ATT MTU. A build with the Bluetooth transport is that overlay's build; without it the Kconfig
# default stands (384, or 2048 with the UDP transport).
BT_OVERLAY_NETBUF_SIZE = 2475


def stock_netbufs(*, udp: bool, ble: bool) -> tuple[int, int]:
    """(CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE, _COUNT) of an smp_svr build with these transports:
    Zephyr's defaults (subsys/mgmt/mcumgr/transport/Kconfig: 2048 and 2 with the UDP transport,
    else 384 and 4), the size as the Bluetooth overlay sets it. A build with UDP keeps one
    request in flight on every transport (dfuhil.sim.netbufs)."""
    size = BT_OVERLAY_NETBUF_SIZE if ble else 2048 if udp else 384
    return size, 2 if udp else 4


@dataclass(frozen=True)
class SmpAppBuild:
    """Descriptor params of kind ``smp_app``: a Zephyr app with an SMP server (smp_svr-like)."""

    geometry: FlashGeometry
    buf_size: int = 384  # CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE (stock without UDP)
    buf_count: int = 4  # CONFIG_MCUMGR_TRANSPORT_NETBUF_COUNT (stock without UDP)
    uart_rx_buf_count: int = 2  # CONFIG_UART_MCUMGR_RX_BUF_COUNT (stock)
    uart_rx_buf_size: int = 128  # CONFIG_UART_MCUMGR_RX_BUF_SIZE (stock)
    uart_mtu: int = 256  # CONFIG_MCUMGR_TRANSPORT_UART_MTU (stock)
    confirm_at_boot: bool = False  # nRF Desktop style: the app confirms itself once it runs
    fault: Fault | None = None  # a broken build: crashes at boot, or never confirms
    udp: bool = False  # an SMP server on UDP too (the board's network port)
    ble: bool = False  # and on Bluetooth LE (CONFIG_MCUMGR_TRANSPORT_BT; the board's radio)
    dfu_lock_timeout_ms: int = 0  # nRF Desktop DFU lock across transports; 0: no lock
    led: int = 0  # the LED this build blinks
    period_ms: int = 500
    name: str = "smp_svr"

    def to_params(self) -> dict[str, Any]:
        return {
            **self.geometry.to_params(),
            "buf_size": self.buf_size,
            "buf_count": self.buf_count,
            "uart_rx_buf_count": self.uart_rx_buf_count,
            "uart_rx_buf_size": self.uart_rx_buf_size,
            "uart_mtu": self.uart_mtu,
            "confirm_at_boot": self.confirm_at_boot,
            "fault": self.fault,
            "udp": self.udp,
            "ble": self.ble,
            "dfu_lock_timeout_ms": self.dfu_lock_timeout_ms,
            "led": self.led,
            "period_ms": self.period_ms,
            "name": self.name,
        }

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> SmpAppBuild:
        fault = p.get("fault")
        if fault not in (None, "crash-at-boot", "never-confirm"):
            raise ValueError(f"unknown smp_app fault {fault!r}")
        return cls(
            geometry=FlashGeometry.from_params(p),
            buf_size=int(p.get("buf_size", 384)),
            buf_count=int(p.get("buf_count", 4)),
            uart_rx_buf_count=int(p.get("uart_rx_buf_count", 2)),
            uart_rx_buf_size=int(p.get("uart_rx_buf_size", 128)),
            uart_mtu=int(p.get("uart_mtu", 256)),
            confirm_at_boot=bool(p.get("confirm_at_boot", False)),
            fault=cast(Fault | None, fault),
            udp=bool(p.get("udp", False)),
            ble=bool(p.get("ble", False)),
            dfu_lock_timeout_ms=int(p.get("dfu_lock_timeout_ms", 0)),
            led=int(p.get("led", 0)),
            period_ms=int(p.get("period_ms", 500)),
            name=str(p.get("name", "smp_svr")),
        )
