"""Every fuzz target by name: the files dfuhil reads and the bytes it takes from the wire."""

from __future__ import annotations

from typing import Any

import fuzz_files
import fuzz_wire

TARGETS: dict[str, Any] = {**fuzz_files.TARGETS, **fuzz_wire.TARGETS}
