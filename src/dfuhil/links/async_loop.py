"""A private asyncio event loop on its own thread, for blocking callers of asyncio libraries.

smpclient is asyncio; dfuhil's procedures, fixtures and CLI are not. ``LoopThread.run()``
blocks the caller until a coroutine finishes on the loop thread, and a Ctrl-C in the caller
cancels that coroutine instead of leaving it running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Interrupted", "LoopThread", "Progress", "guarded"]

T = TypeVar("T")
Progress = Callable[[int, int], None]


class Interrupted(Exception):
    """A KeyboardInterrupt (or other BaseException) raised by a callback inside the loop.

    asyncio lets such exceptions escape ``run_forever`` and kill the loop thread, which would
    leave the caller waiting forever; wrapped, they travel back like any error and are
    re-raised as themselves in the caller's thread.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def guarded(progress: Progress | None) -> Progress | None:
    if progress is None:
        return None

    def call(done: int, total: int) -> None:
        try:
            progress(done, total)
        except Exception:
            raise
        except BaseException as exc:
            raise Interrupted(exc) from exc

    return call


class LoopThread:
    """A private asyncio loop on a daemon thread; ``run()`` blocks the caller until done."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except Interrupted as wrapped:
            raise wrapped.original from None
        except BaseException:
            future.cancel()  # Ctrl-C in the caller: stop the coroutine too
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
