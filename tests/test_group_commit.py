"""GroupCommit on a real event loop: requests waiting while a batch is applied share the next one, each
caller gets its own answer, a failing batch fails only its own callers, a caller gone away is skipped."""

from __future__ import annotations

import asyncio

import pytest

from watcher.group_commit import GroupCommit


class Applier:
    """Squares numbers one batch at a time; the first batch waits for `release` (a transaction holding
    the write lock meanwhile), and a batch holding `fail_on` fails whole."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, batch: list[tuple[int, asyncio.Future[int]]]) -> None:
        self.batches.append([n for n, _ in batch])
        if len(self.batches) == 1:
            await self.release.wait()
        if self.fail_on in self.batches[-1]:
            raise OSError("disk full")
        for n, future in batch:
            if not future.done():
                future.set_result(n * n)


async def wait_pending(group: GroupCommit[int, int], count: int) -> None:
    """One turn of the loop: the tasks just created submit, the drain task takes its first batch."""
    await asyncio.sleep(0)
    assert group.pending == count


async def test_requests_arriving_during_a_batch_share_the_next_one() -> None:
    apply = Applier()
    group: GroupCommit[int, int] = GroupCommit(apply, max_batch=3)
    first = asyncio.create_task(group.submit(1))
    await wait_pending(group, 1)
    await asyncio.sleep(0)  # the drain task has taken the first batch and waits in it
    rest = [asyncio.create_task(group.submit(n)) for n in range(2, 7)]
    await wait_pending(group, 6)
    apply.release.set()
    assert await asyncio.gather(first, *rest) == [1, 4, 9, 16, 25, 36]
    assert apply.batches == [[1], [2, 3, 4], [5, 6]]  # arrival order, at most max_batch each
    assert group.pending == 0
    assert await group.submit(7) == 49  # a new drain after the last one ended
    assert apply.batches[-1] == [7]


async def test_a_failing_batch_fails_its_callers_only() -> None:
    apply = Applier(fail_on=3)
    apply.release.set()
    group: GroupCommit[int, int] = GroupCommit(apply, max_batch=2)
    results = await asyncio.gather(*(group.submit(n) for n in range(1, 6)), return_exceptions=True)
    failed = [n for n, r in zip(range(1, 6), results, strict=True) if isinstance(r, OSError)]
    batch = next(b for b in apply.batches if 3 in b)
    assert failed == batch
    assert all(r == n * n for n, r in zip(range(1, 6), results, strict=True) if n not in batch)


async def test_a_caller_gone_away_is_skipped_and_the_rest_answered() -> None:
    apply = Applier()
    group: GroupCommit[int, int] = GroupCommit(apply, max_batch=10)
    first = asyncio.create_task(group.submit(1))
    await wait_pending(group, 1)
    await asyncio.sleep(0)
    gone, stays = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(3))
    await wait_pending(group, 3)
    gone.cancel()
    apply.release.set()
    assert (await first, await stays) == (1, 9)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert apply.batches == [[1], [2, 3]]


async def test_an_apply_that_answers_nobody_does_not_leave_callers_waiting() -> None:
    async def forgetful(batch: list[tuple[int, asyncio.Future[int]]]) -> None:
        return None

    group: GroupCommit[int, int] = GroupCommit(forgetful, max_batch=4)
    with pytest.raises(RuntimeError, match="left unanswered"):
        await group.submit(1)
