"""``--plot FILE`` for the transfer verbs: the same picture a test attaches, as a PNG file."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from dfuhil.errors import InputError
from dfuhil.report import traces


def plot_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help=f"write a picture of the transfer: {what}"
    )


@contextlib.contextmanager
def recording(path: Path | None) -> Iterator[traces.Recorder | None]:
    """Record while the block runs and write the picture, also when the transfer failed (the
    picture shows where it stopped). Nothing at all without ``path``."""
    if path is None:
        yield None
        return
    if not path.parent.is_dir():
        raise InputError(f"--plot {path}: folder {path.parent} does not exist: create it first")
    with traces.recording() as recorder:
        try:
            yield recorder
        finally:
            from dfuhil.report.plots import save

            if not recorder.empty:
                for written in save(recorder, path):
                    print(f"picture: {written}", file=sys.stderr)
