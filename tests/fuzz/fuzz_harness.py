"""How a fuzz input ends: handled, refused with a named error, a traceback, or a hang.

Every parser and wire decoder of dfuhil must end each input in one of the first two. The
harness runs one call under a deadline (SIGALRM on the main thread, so a decoder that loops
forever is stopped and counted instead of blocking the run), sorts the outcome, and renders a
refusal as a short key (numbers and hex blanked out) so a campaign can count distinct refusals.

The command-line check runs the real ``dfuhil`` entry function in-process: exit 0 (the mutated
file happened to be valid) or exit 2 with ``dfuhil: FILE...`` on the first line of stderr and no
traceback; anything else is a failure.
"""

from __future__ import annotations

import contextlib
import io
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dfuhil.cli import main as dfuhil_main
from dfuhil.errors import DfuhilError

Kind = Literal["ok", "refused", "traceback", "hang"]


class Hang(BaseException):
    """Raised by the deadline alarm; a BaseException so no ``except Exception`` swallows it."""


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    detail: str = ""  # the refusal's message, or the traceback / hang description

    @property
    def key(self) -> str:
        """The refusal without its numbers: 'distinct refusals' counts these."""
        first = self.detail.splitlines()[0] if self.detail else ""
        first = re.sub(r"/\S*/", "", first)  # temporary paths
        first = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first)  # names and values quoted from input
        first = re.sub(r"0x[0-9A-Fa-f]+|[0-9A-Fa-f]{8,}|\d+", "#", first)
        return first[:160]


class FuzzFailure(AssertionError):
    """A traceback or a hang: the bug the fuzzer exists to find."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds``; restores an outer alarm
    (pytest-timeout's) with what was left of it."""

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no answer within {seconds:.1f} s")

    started = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, fire)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def run(
    call: Callable[[], object],
    *,
    named: tuple[type[BaseException], ...] = (),
    seconds: float = 5.0,
) -> Outcome:
    """One call: ``ok``, ``refused`` (a DfuhilError or one of ``named``), or a failure kind."""
    try:
        with deadline(seconds):
            call()
    except Hang as exc:
        return Outcome("hang", str(exc))
    except DfuhilError as exc:
        return Outcome("refused", str(exc))
    except named as exc:
        return Outcome("refused", str(exc))
    except Exception:
        return Outcome("traceback", traceback.format_exc())
    return Outcome("ok")


def run_cli(
    argv: Sequence[str],
    *,
    names: tuple[str, ...],
    seconds: float = 10.0,
    codes: tuple[int, ...] = (2,),
) -> Outcome:
    """``dfuhil ARGV`` in-process: exit 0, or an exit in ``codes`` (2, bad input, for files)
    with a located error: the first line mentions one of ``names`` (the file, the port).
    """
    err, out = io.StringIO(), io.StringIO()
    try:
        with (
            deadline(seconds),
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            code = dfuhil_main(list(argv))
    except Hang as exc:
        return Outcome("hang", f"dfuhil {' '.join(argv)}: {exc}")
    except SystemExit as exc:  # argparse: only for bad arguments, which the targets never pass
        return Outcome(
            "traceback", f"dfuhil {' '.join(argv)}: SystemExit {exc.code}\n{err.getvalue()}"
        )
    except Exception:
        return Outcome("traceback", f"dfuhil {' '.join(argv)}:\n{traceback.format_exc()}")
    # Errors go to stderr as "dfuhil: ..."; `boards check` prints its report on stdout.
    text = err.getvalue() or out.getvalue()
    if caught:  # a Python warning would reach the user's terminal with a source excerpt
        shown = "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)
        return Outcome("traceback", f"dfuhil {' '.join(argv)}: printed a Python warning:\n{shown}")
    if code == 0:
        return Outcome("ok")
    lines = text.splitlines()
    if code not in codes or "Traceback" in err.getvalue() + out.getvalue() or not lines:
        return Outcome("traceback", f"dfuhil {' '.join(argv)}: exit {code}\n{text}")
    if not any(n in lines[0] for n in names):
        return Outcome(
            "traceback", f"dfuhil {' '.join(argv)}: exit {code} without naming {names}:\n{text}"
        )
    return Outcome("refused", lines[0].removeprefix("dfuhil: "))


def check(outcomes: Outcome | list[Outcome]) -> None:
    """In tests: a traceback or a hang fails the example (hypothesis then shrinks it)."""
    for outcome in outcomes if isinstance(outcomes, list) else [outcomes]:
        if outcome.kind in ("traceback", "hang"):
            raise FuzzFailure(f"{outcome.kind}:\n{outcome.detail}")


@dataclass(frozen=True)
class FuzzTarget:
    """A named input strategy and what runs each input (one outcome, or one per operation)."""

    name: str
    strategy: st.SearchStrategy[Any]
    runner: Callable[[Any], Outcome | list[Outcome]]


def fuzz_test(target: FuzzTarget, max_examples: int, *examples: Any) -> Callable[[], None]:
    """A pytest test: ``target`` for ``max_examples`` derandomized inputs, plus ``examples``
    (inputs that once crashed or hung dfuhil, kept so the bug stays fixed)."""

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(target.strategy)
    def test(data: Any) -> None:
        check(target.runner(data))

    for data in examples:
        test = example(data)(test)
    test.__doc__ = f"fuzz target {target.name!r}: no traceback, no hang"
    return test
