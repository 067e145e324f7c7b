"""An asyncio event loop in a background thread, for the simulator's synchronous driver,
and the pending timers of an owner that stops.

The phones, the PSTN caller and the CTI clients each run on one :class:`LoopThread`:
every call blocks until the loop has done the work, and is safe from the driver's
thread.  Their redials are :class:`Pending` timers, cancelled when they stop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable


class LoopThread:
    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable, timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and return its result (waiting at most ``timeout``)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def read(self, what: Callable[[], Any], timeout: float = 60) -> Any:
        """``what()`` computed on the loop while it runs (directly once it has stopped)."""
        if not self.loop.is_running():
            return what()

        async def on_the_loop():
            return what()
        return self.call(on_the_loop(), timeout)

    def close(self, last: Callable[[], Awaitable], timeout: float = 60) -> None:
        """Await ``last()`` on the loop, then stop the loop and its thread; once is enough."""
        if not self.loop.is_running():
            return
        try:
            self.call(last(), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()


class Pending:
    """Timers of an owner that may still be due when it stops (:meth:`cancel_all`)."""

    def __init__(self) -> None:
        self._handles: set[asyncio.TimerHandle] = set()

    def later(self, loop: asyncio.AbstractEventLoop, delay: float, action: Callable[[], Any]) -> None:
        handle = None

        def fire() -> None:
            self._handles.discard(handle)
            action()
        handle = loop.call_later(delay, fire)
        self._handles.add(handle)

    def cancel_all(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
