"""labgrid places for the boards of a farm file: create them, check them, resolve them.

One place per board that has ``place``. It matches ``<lab_host or *>/<board name>/*`` (the
exporter publishes one resource group per board, named after it) and carries tags that say
what the board is, so ``labgrid-client places`` / reservations can filter on them:

    chip=nRF52840_xxAA   board_type=PCA10056   roles=mcuboot,dfu-target

labgrid 26's coordinator checks a tag key against ``[a-z][a-z0-9_]+`` and (by a prefix match)
accepts any value, so values are the names boards.yaml uses, unchanged; ``roles`` is
comma-joined in file order. Keys ``dfuhil_*`` belong to the lease (farm/place_lease.py).

Before any board is touched a run checks its places (:func:`check_places`): the place exists,
matches resources (an exporter for that lab host is up and publishes the board's group), and
its tags agree with boards.yaml. Each problem names the board, the place and the fix.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from dfuhil.errors import InfrastructureError, InputError, Problem
from dfuhil.farm.labgrid_client import LabgridClient, PlaceRefused
from dfuhil.farm.model import BoardSpec, Farm
from dfuhil.farm.remote import RemoteEndpoints

TAG_KEYS = ("chip", "board_type", "roles")
CHECKED_TAGS = ("chip", "roles")  # what a test relies on; board_type is informational
PLACES_FIX = "run `dfuhil farm places {file}`"


def placed_boards(farm: Farm, boards: list[BoardSpec] | None = None) -> list[BoardSpec]:
    """The boards (of ``boards``, default all) reached through a labgrid place."""
    return [b for b in (farm.boards if boards is None else boards) if b.place]


def place_match(board: BoardSpec) -> str:
    """The one resource match of a board's place: its group on its lab host (any if unset)."""
    return f"{board.lab_host or '*'}/{board.name}/*"


def place_tags(board: BoardSpec) -> dict[str, str]:
    """The tags a board's place carries; an empty value deletes the tag on the coordinator."""
    return {
        "chip": board.chip.name,
        "board_type": board.board_type.pca if board.board_type else "",
        "roles": ",".join(board.roles),
    }


def sync_places(farm: Farm, client: LabgridClient) -> list[str]:
    """Create or update one place per placed board; what was done, one line per change."""
    done: list[str] = []
    places: dict[str, Any] = client.call("places")
    for board in placed_boards(farm):
        name = board.place
        assert name is not None
        place = places.get(name)
        if place is None:
            client.call("add_place", place=name)
            done.append(f"{name}: created (board {board.name})")
            place = {"matches": [], "tags": {}}
        want = place_match(board)
        for old in place["matches"]:
            if old != want:
                client.call("delete_match", place=name, pattern=old)
                done.append(f"{name}: match {old} removed")
        if want not in place["matches"]:
            client.call("add_match", place=name, pattern=want)
            done.append(f"{name}: matches {want}")
        tags = place_tags(board)
        changed = {k: v for k, v in tags.items() if place["tags"].get(k, "") != v}
        if changed:
            client.call("set_tags", place=name, tags=changed)
            shown = " ".join(f"{k}={v}" if v else f"{k} removed" for k, v in changed.items())
            done.append(f"{name}: tags {shown}")
    return done


def _matches(pattern: str, path: list[str]) -> bool:
    """labgrid's ResourceMatch.ismatch: exporter/group/cls[/name], fnmatch on each part."""
    parts = pattern.split("/")
    if len(parts) == 3:
        parts.append("")
    exporter, group, cls, name = parts
    return (
        fnmatchcase(path[0], exporter)
        and fnmatchcase(path[1], group)
        and fnmatchcase(path[2], cls)
        and (not name or fnmatchcase(path[3], name))
    )


def place_resources(place: dict[str, Any], resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The resources a place matches (as the agent lists them)."""
    return [r for r in resources if any(_matches(m, r["path"]) for m in place["matches"])]


def check_places(farm: Farm, boards: list[BoardSpec], client: LabgridClient) -> None:
    """InputError listing every placed board whose place is missing, matches nothing or
    whose tags disagree with boards.yaml; nothing is touched."""
    placed = placed_boards(farm, boards)
    if not placed:
        return
    places: dict[str, Any] = client.call("places")
    resources: list[dict[str, Any]] = client.call("resources")
    fix = PLACES_FIX.format(file=farm.path)
    problems: list[Problem] = []

    def problem(board: BoardSpec, message: str) -> None:
        problems.append(Problem(str(farm.path), board.line, f"boards[{board.name}].place", message))

    for board in placed:
        name = board.place
        place = places.get(name or "")
        if place is None:
            problem(board, f"labgrid place {name!r} does not exist on {client.address}: {fix}")
            continue
        if not place_resources(place, resources):
            host = f"lab host {board.lab_host!r}" if board.lab_host else "any lab host"
            matches = ", ".join(place["matches"]) or "no matches"
            problem(
                board,
                f"labgrid place {name!r} matches no resources ({matches}): "
                f"no exporter of {host} publishes group {board.name!r}; start "
                f"`labgrid-exporter` there with the file `dfuhil farm export` writes",
            )
        want = place_tags(board)
        wrong = [
            f"{k}={place['tags'].get(k, '')!r} (boards.yaml: {want[k]!r})"
            for k in CHECKED_TAGS
            if place["tags"].get(k, "") != want[k]
        ]
        if wrong:
            problem(
                board,
                f"labgrid place {name!r} tags disagree with boards.yaml: {', '.join(wrong)}: "
                f"{fix} (or fix the board's entry)",
            )
    if problems:
        raise InputError(problems)


def resolve_endpoints(board: BoardSpec, client: LabgridClient) -> RemoteEndpoints:
    """Where a leased board's console, probe and SMP UDP are, from its place's resources."""
    name = board.place
    assert name is not None
    places: dict[str, Any] = client.call("places")
    place = places.get(name)
    if place is None:
        raise PlaceRefused(f"Place {name} does not exist")
    found = place_resources(place, client.call("resources"))
    by_name = {r["path"][3]: r for r in found}
    console = by_name.get("console") or next(
        (r for r in found if r["cls"] == "NetworkSerialPort"), None
    )
    probe = by_name.get("probe")
    if console is None or probe is None:
        have = ", ".join("/".join(r["path"]) for r in found) or "none"
        host = f"lab host {board.lab_host}" if board.lab_host else "its lab host"
        raise InfrastructureError(
            f"labgrid place {name} has no {'console serial port' if console is None else 'probe'}"
            f" resource on {host} (resources: {have})",
            f"check that the exporter of {host} runs (a stopped one publishes nothing) with the "
            "file `dfuhil farm export` writes for this board, and restart it",
            board=board.name,
        )
    smp = by_name.get("smp-udp")
    ble = by_name.get("ble-hci")
    return RemoteEndpoints(
        host=console["path"][0],
        place=name,
        serial_url=f"rfc2217://{console['params']['host']}:{console['params']['port']}",
        probe=_address(probe),
        smp_udp=_address(smp) if smp is not None else None,
        ble_hci=f"tcp-client:{_address(ble)}" if ble is not None else None,
    )


def _address(resource: dict[str, Any]) -> str:
    params = resource["params"]
    return f"{params['address']}:{params.get('port', 22)}"
