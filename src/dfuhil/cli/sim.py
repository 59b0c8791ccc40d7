"""``dfuhil sim serve``: run the virtual farm described by a boards file."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfuhil.farm.loader import load_farm
from dfuhil.sim.state import DEFAULT_STATE_FILE


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = subparsers.add_parser("sim", help="the virtual farm")
    commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="host every virtual board of the boards file until SIGINT/SIGTERM"
    )
    serve.add_argument("--boards", type=Path, default=Path("boards.yaml"), metavar="FILE")
    serve.add_argument(
        "--state-file",
        type=Path,
        default=DEFAULT_STATE_FILE,
        metavar="STATE.json",
        help=f"where to publish ptys and probe endpoints (default: {DEFAULT_STATE_FILE})",
    )
    serve.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="wall seconds per device second (overrides virtual_farm.time_scale)",
    )
    serve.add_argument(
        "--log-dir", type=Path, default=None, help="write one <board>.sim.log per board here"
    )
    serve.add_argument(
        "--watch-pid",
        type=int,
        default=None,
        metavar="PID",
        help="stop when this process is gone (the test run that started the farm)",
    )
    serve.set_defaults(func=run_serve)
    pdu = commands.add_parser(
        "pdu",
        help="a virtual network PDU (labgrid's simplerest protocol on 127.0.0.1) whose outlets "
        "switch virtual boards' power; runs until SIGTERM",
    )
    pdu.add_argument(
        "--state-file",
        type=Path,
        default=DEFAULT_STATE_FILE,
        metavar="STATE.json",
        help=f"the running virtual farm's state file (default: {DEFAULT_STATE_FILE})",
    )
    pdu.add_argument(
        "--outlet",
        action="append",
        default=[],
        required=True,
        metavar="INDEX=BOARD",
        help="wire outlet INDEX to the virtual board BOARD (repeat per outlet)",
    )
    pdu.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free)")
    pdu.add_argument(
        "--url-file", type=Path, default=None, help="also write the URL template to this file"
    )
    pdu.set_defaults(func=run_pdu)


def run_serve(args: argparse.Namespace) -> int:
    from dfuhil.sim.nrfutil import install_shim
    from dfuhil.sim.server import serve

    farm = load_farm(args.boards)
    if not farm.virtual_boards():
        print(f"{args.boards}: no board has `probe: {{backend: virtual}}`; nothing to serve")
        return 2
    # The farm's own `nrfutil device` for its boards: put this folder first on PATH.
    install_shim(args.state_file)
    return serve(
        farm,
        args.state_file,
        time_scale=args.time_scale,
        log_dir=args.log_dir,
        watch_pid=args.watch_pid,
    )


def run_pdu(args: argparse.Namespace) -> int:
    from dfuhil.sim.pdu import parse_outlets, serve

    return serve(parse_outlets(args.outlet, args.state_file), args.port, args.url_file)
