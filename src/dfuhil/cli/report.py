"""``dfuhil report build``: the HTML report a QA lead opens in the morning (``make report``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HISTORY_ENV = "DFUHIL_REPORT_HISTORY"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = commands.add_parser("report", help="build the HTML report (Allure 3)")
    verbs = report.add_subparsers(dest="verb", metavar="VERB", required=True)
    build = verbs.add_parser(
        "build", help="build reports/report.html and the site from reports/allure-results"
    )
    build.add_argument("--results", type=Path, default=Path("reports/allure-results"))
    build.add_argument("--out", type=Path, default=Path("reports"), help="where the report goes")
    build.add_argument(
        "--history",
        type=Path,
        default=Path(os.environ[HISTORY_ENV]) if os.environ.get(HISTORY_ENV) else None,
        help=f"Allure history file kept between runs (default OUT/history.jsonl; ${HISTORY_ENV})",
    )
    build.add_argument("--name", default="dfuhil nightly", help="the report's title")
    build.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from dfuhil.report.build import build

    built = build(args.results, args.out, history=args.history, name=args.name)
    for warning in built.warnings:
        print(f"dfuhil: warning: {warning}", file=sys.stderr)
    print(f"report: {built.report} (one file); site: {built.site}; history: {built.history}")
    return 0
