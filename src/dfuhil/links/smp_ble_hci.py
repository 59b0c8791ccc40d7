"""Which Bluetooth controller (bumble HCI transport name) and which board a ``--ble`` run uses.

``--hci`` wins. Otherwise a virtual board is reached through the running virtual farm's radio
(its state file's ``ble_hci``), a real one through the lab's controller (boards.yaml top-level
``ble_hci``); with neither, the error says to give ``--hci``. A bare ``--ble NAME`` is matched to
the farm's boards by their ``ble.name``/``ble.address``, so errors name the board and a virtual
one finds the farm's radio by itself.
"""

from __future__ import annotations

from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.remote import RemoteEndpoints
from dfuhil.sim.state import SimState

__all__ = ["ble_target", "board_advertising", "resolve_hci"]

HCI_EXAMPLES = "usb:0 (a dongle with HCI firmware), serial:/dev/ttyACM0,1000000 (an HCI UART)"


def board_advertising(farm: Farm, target: str) -> BoardSpec | None:
    """The farm's board whose ble name or address is ``target``, if one is."""
    wanted = target.strip()
    for board in farm.boards:
        ble = board.ble
        if ble is None:
            continue
        address = (ble.address or "").upper()
        if ble.name == wanted or (address and address.removesuffix("/P") == wanted.upper()):
            return board
    return None


def ble_target(farm: Farm, board: BoardSpec) -> str:
    """What to scan for: the board's address when boards.yaml knows it, else its name.

    A board whose firmware set has no ble transport is refused here, before any radio use.
    """
    if board.ble is None:
        raise InputError(
            Problem(
                str(farm.path),
                board.line,
                f"boards[{board.name}].firmware",
                "the board's firmware set has no ble among its mcuboot transports (and the "
                "board no ble: {name: ...}); nothing was sent. Use --transport serial, or "
                "build the firmware with CONFIG_MCUMGR_TRANSPORT_BT and list ble",
            )
        )
    return board.ble.address or board.ble.name


def resolve_hci(
    hci: str | None,
    *,
    farm: Farm | None,
    board: BoardSpec | None,
    sim: SimState | None,
    remote: RemoteEndpoints | None = None,
) -> str:
    """The bumble HCI transport name to open (see the module docstring). ``remote``: the
    board's leased place, whose lab host may publish its virtual farm's radio (``ble-hci``)."""
    if hci:
        return hci
    if board is not None and board.is_virtual and remote is not None:
        if remote.ble_hci:
            return remote.ble_hci
        raise InfrastructureError(
            f"the board's lab host publishes no Bluetooth radio ({remote.where}: no ble-hci "
            "resource)",
            "re-export that host with this dfuhil (dfuhil farm export writes ble-hci for a "
            "board with ble) and restart its exporter, or give --hci",
            board=board.name,
        )
    if board is not None and board.is_virtual:
        if sim is None:
            raise InfrastructureError(
                "the board is virtual but no virtual farm is running",
                "start one: dfuhil sim serve --boards FILE (pytest starts its own), or give --hci",
                board=board.name,
            )
        if not sim.ble_hci:
            raise InfrastructureError(
                "the running virtual farm reports no Bluetooth radio (state file: no ble_hci)",
                "restart it from this dfuhil: dfuhil sim serve --boards FILE, or give --hci",
                board=board.name,
            )
        return sim.ble_hci
    if farm is not None and farm.ble_hci:
        return farm.ble_hci
    where = str(farm.path) if farm is not None else "--hci"
    who = f"board {board.name}: " if board is not None else ""
    raise InputError(
        Problem(
            where,
            None,
            "ble_hci",
            f"{who}no Bluetooth controller is named: give --hci ({HCI_EXAMPLES}), or the "
            "lab's controller as ble_hci: in boards.yaml",
        )
    )
