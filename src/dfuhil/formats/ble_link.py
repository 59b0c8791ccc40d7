"""A build's Bluetooth LE link settings (boards.yaml ``mcuboot.ble_link``); defaults are stock.

Zephyr's smp_svr ``overlay-bt.conf`` and Kconfig defaults: CONFIG_BT_L2CAP_TX_MTU=498 with
CONFIG_BT_BUF_ACL_RX_SIZE=502 (ATT MTU 498), CONFIG_BT_CTLR_DATA_LENGTH_MAX=251,
CONFIG_BT_PERIPHERAL_PREF_MIN_INT=24, MAX_INT=40, LATENCY=0, TIMEOUT=42 (asked for 5000 ms
after connecting: CONFIG_BT_GAP_AUTO_UPDATE_CONN_PARAMS, CONFIG_BT_CONN_PARAM_UPDATE_TIMEOUT),
CONFIG_MCUMGR_TRANSPORT_BT_CONN_PARAM_CONTROL=y (MIN_INT 6, MAX_INT 9, LATENCY 0, RESTORE_TIME
5000 ms), CONFIG_MCUMGR_TRANSPORT_BT_REASSEMBLY=y; the SoftDevice Controller's default connection
event length (7500 us). ``latency_request`` is nRF Desktop's Bluetooth LE latency module (off in
smp_svr), ``default_latency`` the latency it returns to (nRF Desktop sets
CONFIG_BT_PERIPHERAL_PREF_LATENCY=99).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinkConfig:
    """What the board's Bluetooth stack was built with (boards.yaml ``mcuboot.ble_link``)."""

    att_mtu: int = 498
    data_length: int = 251
    pref_min_interval: int = 24
    pref_max_interval: int = 40
    pref_latency: int = 0
    pref_timeout: int = 42
    auto_update: bool = True  # CONFIG_BT_GAP_AUTO_UPDATE_CONN_PARAMS: ask for pref_* after 5 s
    smp_conn_param_control: bool = True
    smp_min_interval: int = 6
    smp_max_interval: int = 9
    smp_latency: int = 0
    smp_restore_ms: int = 5000
    event_length_us: int = 7500
    reassembly: bool = True
    latency_request: bool = False  # nRF Desktop's ble_latency module
    default_latency: int = 0  # what the latency request restores (nRF Desktop: 99)


STOCK_LINK = LinkConfig()
