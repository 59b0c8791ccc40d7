# mypy: ignore-errors
"""dfuhil's agent inside labgrid's venv: labgrid's client API, spoken as JSON lines.

dfuhil never imports labgrid (its ``serial`` package collides with pyserial), so
:mod:`dfuhil.farm.labgrid_client` runs this file with ``.venv-labgrid/bin/python``. It keeps
one client session to the coordinator open (a lease then costs a gRPC round trip, not a Python
start plus a grpc import per ``labgrid-client`` call) and answers one request per stdin line:

    {"id": 1, "op": "acquire", "place": "dk-a"}  ->  {"id": 1, "ok": true, "result": null}

An error is ``{"id": 1, "ok": false, "error": "..."}``. End of stdin (dfuhil exited, even by
kill -9) ends the agent. This file imports only the standard library and labgrid.
"""

import asyncio
import json
import sys

import grpc
from labgrid.remote.client import ClientSession
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
from labgrid.util.proxy import proxymanager

TIMEOUT_S = 5.0


def place_json(place):
    return {
        "name": place.name,
        "acquired": place.acquired or None,
        "tags": dict(place.tags),
        "comment": place.comment,
        "matches": [repr(m) for m in place.matches],
    }


def resources_json(session):
    found = []
    for exporter, groups in session.resources.items():
        for group, resources in groups.items():
            for name, entry in resources.items():
                if "cls" not in entry.data:
                    # A deleted resource (its exporter left): labgrid's session keeps it with
                    # empty data; it is gone, and must not break the listing of the others.
                    continue
                found.append(
                    {
                        "path": [exporter, group, entry.cls, name],
                        "cls": entry.cls,
                        "params": entry.params,
                        "avail": bool(entry.avail),
                        "acquired": entry.acquired or None,
                    }
                )
    return found


class Lost(Exception):
    """The stream to the coordinator ended: what the session caches is no longer news."""


async def sync(session):
    # sync_with_coordinator returns False (it does not raise) when the stream has ended, and
    # the session's places and resources would then be a dead coordinator's last word.
    if not await session.sync_with_coordinator():
        raise Lost("the connection was lost")


async def handle(session, request):
    op = request["op"]
    stub = session.stub
    if op == "whoami":
        return f"{session.gethostname()}/{session.getuser()}"
    if op == "places":
        await sync(session)
        return {name: place_json(p) for name, p in session.places.items()}
    if op == "resources":
        await sync(session)
        return resources_json(session)
    place = request.get("place", "")
    if op == "add_place":
        await stub.AddPlace(pb2.AddPlaceRequest(name=place))
    elif op == "add_match":
        await stub.AddPlaceMatch(
            pb2.AddPlaceMatchRequest(placename=place, pattern=request["pattern"])
        )
    elif op == "delete_match":
        await stub.DeletePlaceMatch(
            pb2.DeletePlaceMatchRequest(placename=place, pattern=request["pattern"])
        )
    elif op == "set_tags":
        await stub.SetPlaceTags(pb2.SetPlaceTagsRequest(placename=place, tags=request["tags"]))
    elif op == "set_comment":
        await stub.SetPlaceComment(
            pb2.SetPlaceCommentRequest(placename=place, comment=request["comment"])
        )
    elif op == "acquire":
        await stub.AcquirePlace(pb2.AcquirePlaceRequest(placename=place))
    elif op == "release":
        # With fromuser the coordinator releases only if that user still holds the place: a
        # compare-and-release, so two runs kicking one stale holder cannot kick each other.
        await stub.ReleasePlace(
            pb2.ReleasePlaceRequest(placename=place, fromuser=request["fromuser"])
        )
    else:
        raise ValueError(f"unknown op {op!r}")
    await sync(session)
    return None


def answer(request_id, **fields):
    sys.stdout.write(json.dumps({"id": request_id, **fields}) + "\n")
    sys.stdout.flush()


async def serve(address):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    session = ClientSession(proxymanager.get_grpc_address(address, default_port=20408), loop)
    try:
        await asyncio.wait_for(session.start(), TIMEOUT_S)
    except Exception as exc:  # any failure to connect is the same answer
        answer(0, ok=False, error=str(exc) or type(exc).__name__, lost=True)
        return
    answer(0, ok=True, result=f"{session.gethostname()}/{session.getuser()}")
    while line := await reader.readline():
        request = json.loads(line)
        if session.stopping.is_set():
            answer(request["id"], ok=False, error="the connection was lost", lost=True)
            continue
        try:
            result = await asyncio.wait_for(handle(session, request), TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            lost = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            answer(request["id"], ok=False, error=exc.details() or str(exc.code()), lost=lost)
        except Lost as exc:
            answer(request["id"], ok=False, error=str(exc), lost=True)
        except TimeoutError:
            answer(request["id"], ok=False, error=f"no reply within {TIMEOUT_S:.0f} s", lost=True)
        except Exception as exc:  # reported to dfuhil, which decides
            answer(request["id"], ok=False, error=f"{type(exc).__name__}: {exc}")
        else:
            answer(request["id"], ok=True, result=result)


def main():
    asyncio.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
