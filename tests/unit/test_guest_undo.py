"""GuestUndo's rules with a scripted guest call (pure logic; the real shim+VM case is in
tests/integration/test_shim_bad_input.py)."""
from __future__ import annotations

import asyncio

import pytest

from shim.task.guest_undo import GuestUndo, ignoring_gone
from shim.ttrpc import Code, TtrpcError


async def _guest_create(done: asyncio.Event, made: list[str], fail: Code | None = None) -> int:
    await done.wait()
    if fail is not None:
        raise TtrpcError(fail, "scripted")
    made.append("c1")
    return 7


async def test_a_cancelled_call_finishes_and_is_undone_and_a_retry_waits_for_that():
    undo, made, done = GuestUndo(), [], asyncio.Event()

    async def remove() -> None:
        made.remove("c1")

    caller = asyncio.ensure_future(undo.call(("c1", ""), _guest_create(done, made), remove))
    await asyncio.sleep(0.01)
    caller.cancel()  # the host's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await caller
    retry = asyncio.ensure_future(undo.call(("c1", ""), _guest_create(asyncio.Event(), made),
                                            remove))
    await asyncio.sleep(0.05)
    assert made == [] and not retry.done()
    done.set()  # the guest finishes what it was asked: it is undone before the retry runs
    await asyncio.sleep(0.05)
    assert made == []
    retry.cancel()
    await asyncio.gather(retry, return_exceptions=True)
    await undo.close()


@pytest.mark.parametrize("code, undone", [(Code.INVALID_ARGUMENT, False),
                                          (Code.DEADLINE_EXCEEDED, True)])
async def test_failed_calls_are_undone_only_when_their_outcome_is_unknown(code, undone):
    undo, calls = GuestUndo(), []

    async def remove() -> None:
        calls.append("undo")

    done = asyncio.Event()
    done.set()
    with pytest.raises(TtrpcError):
        await undo.call(("c1", ""), _guest_create(done, [], fail=code), remove)
    await undo.settle(("c1", ""))
    assert calls == (["undo"] if undone else [])


async def test_undo_steps_ignore_what_is_already_gone():
    async def gone() -> None:
        raise TtrpcError(Code.NOT_FOUND, "no such container")

    async def broken() -> None:
        raise TtrpcError(Code.INTERNAL, "boom")

    await ignoring_gone(gone())
    with pytest.raises(TtrpcError):
        await ignoring_gone(broken())
