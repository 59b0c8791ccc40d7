"""The error taxonomy: who has to act when something goes wrong.

A QA engineer reading a nightly report must tell at a glance whether the product failed or the
rig did. Every error dfuhil raises on purpose is a :class:`DfuhilError` whose message names the
thing (file, field, board, port) and the fix; the command line prints it without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class DfuhilError(Exception):
    """Base of every error dfuhil raises on purpose; ``str()`` is the whole user-facing message."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One problem in an input file, located for a human: ``FILE:LINE: field: message``."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class InputError(DfuhilError):
    """Bad input (boards.yaml, hex, zip, key, image). Raised before any board is touched."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(file="", line=None, field="", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(str(p).lstrip(": ") for p in problems))


class InfrastructureError(DfuhilError):
    """The rig failed, not the product: probe unplugged, port gone, J-Link library missing.

    The message always carries the remedy, because at 2 a.m. nobody wants to read a stack.
    """

    exit_code = 3

    def __init__(self, message: str, remedy: str, *, board: str | None = None) -> None:
        self.board = board
        self.remedy = remedy
        prefix = f"[infrastructure] board {board}: " if board else "[infrastructure] "
        super().__init__(f"{prefix}{message}\n  remedy: {remedy}")


class ProductError(DfuhilError):
    """The device under test did something wrong (verify mismatch, wrong boot, refused image)."""

    exit_code = 1
