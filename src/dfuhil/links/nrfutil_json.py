"""Reading ``nrfutil --json`` output: JSON Lines of task_begin/task_progress/task_end/info/log.

Nordic documents the stream ("Managing command output for scripting", nRF Util docs): one JSON
object per line, ``{"type": ..., "data": {...}}``, semantic versioning on the stream. Inside a
``task_end``, ``data.result`` is ``success`` or ``fail``, ``data.error`` null or ``{code,
description}``, ``data.data`` the task's payload; ``task_progress`` carries
``data.progress.progressPercentage`` and ``.description`` (as Zephyr's nrfutil runner reads
them). Anything else on stdout (a line that is not JSON, a truncated line, an object without
``type``) means the installed nrfutil does not speak the stream this code was written for: an
:class:`InfrastructureError` naming the line, never a traceback and never a silent pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dfuhil.errors import InfrastructureError

MESSAGE_TYPES = ("task_begin", "task_progress", "task_end", "info", "log")


@dataclass(frozen=True)
class TaskEnd:
    """One finished task: what it was, whether it worked, and its payload."""

    name: str
    description: str
    ok: bool
    message: str
    error_code: int | None
    error: str
    data: dict[str, Any]


@dataclass
class NrfutilOutput:
    """Everything one ``nrfutil --json`` run printed, sorted by message type."""

    tasks: list[TaskEnd] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    progress: list[tuple[int, str]] = field(default_factory=list)  # (percent, description)

    @property
    def failed(self) -> TaskEnd | None:
        """The first task that ended in failure, if any."""
        return next((t for t in self.tasks if not t.ok), None)


def _bad(command: str, number: int, line: str, why: str) -> InfrastructureError:
    shown = line if len(line) <= 120 else line[:117] + "..."
    return InfrastructureError(
        f"`{command}` printed line {number} that is not nrfutil's JSON Lines ({why}): {shown!r}",
        "check `nrfutil device --version` is a release dfuhil supports, and that nothing else "
        "(a wrapper script, a shell profile) writes to its standard output",
    )


def parse_output(text: str, command: str) -> NrfutilOutput:
    """Parse a whole run's stdout; ``command`` is only for messages."""
    out = NrfutilOutput()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _bad(command, number, line, f"not JSON: {exc.msg}") from None
        if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
            raise _bad(command, number, line, "no known 'type'")
        data = message.get("data")
        if not isinstance(data, dict):
            raise _bad(command, number, line, "'data' is not an object")
        kind = message["type"]
        if kind == "task_end":
            out.tasks.append(_task_end(data, command, number, line))
        elif kind == "task_progress":
            progress = data.get("progress")
            if isinstance(progress, dict):
                percent = progress.get("progressPercentage")
                out.progress.append(
                    (
                        int(percent) if isinstance(percent, int | float) else 0,
                        str(progress.get("description", "")),
                    )
                )
        elif kind == "info":
            out.infos.append(data)
        elif kind == "log":
            out.logs.append(data)
    return out


def _task_end(data: dict[str, Any], command: str, number: int, line: str) -> TaskEnd:
    task = data.get("task")
    result = data.get("result")
    if not isinstance(task, dict) or result not in ("success", "fail"):
        raise _bad(command, number, line, "a task_end without task or result")
    error = data.get("error")
    code: int | None = None
    text = ""
    if isinstance(error, dict):
        raw = error.get("code")
        code = raw if isinstance(raw, int) else None
        text = str(error.get("description", ""))
    payload = data.get("data")
    return TaskEnd(
        name=str(task.get("name", "")),
        description=str(task.get("description", "")),
        ok=result == "success" and not error,
        message=str(data.get("message", "")),
        error_code=code,
        error=text,
        data=payload if isinstance(payload, dict) else {},
    )
