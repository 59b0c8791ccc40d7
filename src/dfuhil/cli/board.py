"""Verbs for one board at the rig: ``provision``, ``leds``, ``console``.

They take the same boards file as pytest, so what a QA engineer checks by hand at 2 a.m. is
what the nightly suite checked.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from dfuhil.cli.options import add_board_options, open_rig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from dfuhil.procedures.provision import STEPS

    provision = subparsers.add_parser(
        "provision", help="flash a board's firmware set over SWD, skipping what is already there"
    )
    add_board_options(provision)
    provision.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated subset of {','.join(STEPS)} (default: all, in that order)",
    )
    provision.set_defaults(func=run_provision)

    leds = subparsers.add_parser("leds", help="show each LED as on, off or blinking")
    add_board_options(leds)
    leds.add_argument("--window", type=float, default=2.0, help="device seconds to sample")
    leds.add_argument("--watch", action="store_true", help="keep sampling until Ctrl-C")
    leds.set_defaults(func=run_leds)

    console = subparsers.add_parser("console", help="print the board's console until Ctrl-C")
    add_board_options(console)
    console.set_defaults(func=run_console)


def run_provision(args: argparse.Namespace) -> int:
    from rich.progress import Progress, TaskID

    from dfuhil.procedures.provision import Provisioner, ProvisioningPlan

    rig, board = open_rig(args)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    plan = ProvisioningPlan.for_board(board)  # refuses bad images before touching the board
    with (
        Progress(transient=True, disable=not sys.stderr.isatty()) as bar,
        rig.probe(board) as probe,
    ):
        tasks: dict[str, TaskID] = {}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(f"{board.name} {step}", total=total)
            bar.update(tasks[step], completed=done)

        for result in Provisioner(plan, probe, progress).run(steps):
            print(result)
    return 0


def run_leds(args: argparse.Namespace) -> int:
    from dfuhil.procedures.leds import LedObserver, describe

    rig, board = open_rig(args)
    with rig.probe(board) as probe:
        observer = LedObserver(
            probe.read_u32,
            board.chip,
            board.leds.pins,
            board.leds.active_low,
            probe.time_scale,
            read=probe.read,
        )
        while True:
            print(f"{board.name}: {describe(observer.sample(window_s=args.window))}", flush=True)
            if not args.watch:
                return 0


def run_console(args: argparse.Namespace) -> int:
    from dfuhil.links.console import follow

    rig, board = open_rig(args)
    with rig.console(board, open_timeout=2.0) as console:
        print(
            f"--- {board.name} on {console.url} at {board.serial.baud} baud; Ctrl-C quits ---",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            follow(console, sys.stdout)
    return 0
