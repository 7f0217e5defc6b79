"""Guest calls that create something (a container, an exec, a started init) must not outlive
the host's interest in them.

When the host's caller gives up — its ttrpc deadline passed, or containerd's connection dropped
— asyncio cancels the handler, but the request already sent to the agent goes on in the guest.
So such a call is not abandoned: it finishes in the background, and whatever it created is
undone there. The same happens when the agent call itself ran out of time (the agent cancels
the operation at that deadline too; the undo catches one that finished just before). A later
call for the same process waits until the undo is done, so host and guest agree again.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shim.ttrpc import Code, TtrpcError

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (container id, exec id)

Undo = Callable[[], Awaitable[None]]


class GuestUndo:
    def __init__(self) -> None:
        self._pending: dict[Key, asyncio.Task] = {}

    async def settle(self, key: Key) -> None:
        """Wait for a pending undo of *key* (it never raises)."""
        task = self._pending.get(key)
        if task is not None:
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)

    async def call(self, key: Key, work: Awaitable[T], undo: Undo) -> T:
        await self.settle(key)
        call = asyncio.ensure_future(work)
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            self._schedule(key, call, undo)
            raise
        except TtrpcError as exc:
            if exc.code is Code.DEADLINE_EXCEEDED:
                self._schedule(key, call, undo)
            raise

    def _schedule(self, key: Key, call: asyncio.Future, undo: Undo) -> None:
        task = asyncio.ensure_future(self._undo_after(key, call, undo))
        self._pending[key] = task
        task.add_done_callback(lambda t: self._pending.get(key) is t and self._pending.pop(key))

    async def _undo_after(self, key: Key, call: asyncio.Future, undo: Undo) -> None:
        try:
            await call
        except TtrpcError as exc:
            if exc.code is not Code.DEADLINE_EXCEEDED:
                return  # the guest refused it: nothing was created
        except Exception:
            return
        try:
            await undo()
            log.info("%s: undone in the guest (the host's caller had given up)", "/".join(key))
        except Exception as exc:
            log.warning("%s: undo in the guest failed: %s", "/".join(key), exc)

    async def close(self) -> None:
        """The VM is going away (and takes everything with it): stop undoing."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def ignoring_gone(work: Awaitable[object]) -> None:
    """Run an undo step; what is already gone (NotFound, or not running) is fine."""
    try:
        await work
    except TtrpcError as exc:
        if exc.code not in (Code.NOT_FOUND, Code.FAILED_PRECONDITION):
            raise
