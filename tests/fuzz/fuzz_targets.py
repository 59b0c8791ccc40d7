"""Every fuzz target by name: the files dfuhil reads and the bytes it takes from the wire."""

from __future__ import annotations

import fuzz_files
import fuzz_wire
from fuzz_harness import FuzzTarget

TARGETS: dict[str, FuzzTarget] = {**fuzz_files.TARGETS, **fuzz_wire.TARGETS}
