"""The follower: one per chain, it moves that chain's cursor forward block by block.

Each step reads the node's head, checks that the stored tip is still on the node's chain, scans the next
blocks and commits their deposits, the cursor and the callbacks in one transaction. The cursor never
moves without its commit. A stored tip that left the chain is a reorg: find the fork point in the stored
block refs, unwind (one transaction), and the next steps re-apply the new branch. A reorg that would take
back a confirmed deposit, or reaches below the kept refs, halts the chain loudly instead of guessing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from chains.base import (
    BlockRef,
    BlockScan,
    ChainAdapter,
    ChainDataError,
    ChainError,
    ConfigMismatch,
    KeyIndex,
    NodeUnavailable,
    WatchList,
    WrongChain,
)
from chains.watchset import GrowingIndex, growable
from watcher.config import ChainConfig
from watcher.errors import ChainHalted, ConfigRefused
from watcher.health import ChainHealth
from watcher.ledger import Ledger, transfer_key, transfer_of, transfers_of
from watcher.logs import ErrorThrottle, get_logger
from watcher.model import Plan, QueuedCallback
from watcher.store import Store, StoreTransaction, ThreadTransaction

# (transaction, chain, plan, now) -> something true if it queued something to send. On a
# ThreadTransaction (Store.write) it must await only the transaction's methods, which never suspend.
AfterApply = Callable[[StoreTransaction, str, Plan, float], Coroutine[Any, Any, object]]

# Block refs fetched at once while anchoring a first start (see `Follower._anchor`).
ANCHOR_CONCURRENCY = 16


# New addresses seen at one step above which the watch set is rebuilt instead of grown (its dict of
# additions costs ~130 B an address against ~24 in the compact index).
REBUILD_ABOVE = 50_000


class Follower:
    def __init__(
        self,
        chain: ChainConfig,
        network: str,
        adapter: ChainAdapter,
        store: Store,
        health: ChainHealth,
        on_commit: Callable[[], None],
        clock: Callable[[], float] = time.time,
        beats: Callable[[str, float], None] | None = None,
        max_head_age_s: float | None = None,
    ) -> None:
        self.chain = chain
        self.adapter = adapter
        self.store = store
        self.health = health
        self.ledger = Ledger(chain, network)
        self.watch = WatchList({})
        # Per currency of the chain, the index in `watch` that new addresses are added to in place.
        self._indexes: dict[str, dict[bytes, int] | GrowingIndex] = {}
        # The largest address id and watch change the watch set has looked at (see _pull_new_addresses).
        self._watched_to = (0, 0)
        # Counts currencies that got their first address: a scan under way when it happened may have
        # skipped work for that currency (EVM: the full blocks for native transfers), so it is redone.
        self._filled = 0
        self._on_commit = on_commit
        self._clock = clock
        self._beats = beats
        # status.max_head_age_s: a head unchanged longer makes readyz fail; logged once when it happens.
        self._max_head_age_s = max_head_age_s
        self._stale_since: float | None = None
        self.log = get_logger(chain=chain.name)
        self._throttle = ErrorThrottle(self.log)
        # Its own throttle: a node behind us answers, so each step "recovers" the connection throttle.
        self._behind = ErrorThrottle(self.log)
        # Set by the daemon (watcher/payment_tracker.py): called in the transaction of every plan applied,
        # so what a deposit change does to a payment commits with it; and when at the node's head.
        self.after_apply: AfterApply | None = None
        self.at_head: Callable[[float], None] | None = None
        # Integrations whose deposits get no CoinsPaid callback (their format is another; set by the daemon).
        self.no_callbacks: frozenset[str] = frozenset()

    # ------------------------------------------------------------------------------------- loop

    async def run(self) -> None:
        """Follow the chain until cancelled or halted. Node trouble is logged and retried."""
        if not self._indexes:  # not given by the daemon (Daemon loads every chain's in one pass)
            await self.reload_watch()
        # A halt is re-detected from the chain and the store on every start (the same reorg still
        # removes the same confirmed deposit), so a stored reason is cleared rather than trusted. Only
        # when there is one: a restart after a store fault writes nothing before its block does (on
        # PostgreSQL with a full disk, a small write fitting an existing page would commit, and clear
        # /readyz's store problem although the block's write still fails).
        if (await self.store.chain_state(self.chain.name)).halted_reason is not None:
            async with self.store.transaction() as tx:
                await tx.set_halted(self.chain.name, None)
        backoff = self.chain.poll_interval_s
        while True:
            try:
                self._beat(self._step_budget_s())
                await self._ensure_open()
                moved = await self.step()
                self._throttle.recovered("node_connection_restored")
                self.health.last_error = None
                backoff = self.chain.poll_interval_s
                if not moved:
                    await self._sleep(self.chain.poll_interval_s)
            except ChainHalted as halt:
                await self._halt(str(halt))
                # A halted chain is reported by readyz, not by the watchdog: withdraw the last promise to
                # beat (a promise that is never kept would read as a wedged loop and get us restarted).
                self._beat(math.inf)
                self._beats = None
                return
            except ChainError as exc:
                self._node_trouble(exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    def _step_budget_s(self) -> float:
        """How long one step may take: its node calls are each bounded by the RPC timeout."""
        return 5 + 20 * self.chain.settings.timeout_s

    def _beat(self, within_s: float) -> None:
        if self._beats is not None:
            self._beats(f"follower:{self.chain.name}", within_s)

    async def _sleep(self, seconds: float) -> None:
        self._beat(seconds + self._step_budget_s())
        await asyncio.sleep(seconds)

    _opened = False
    _currencies_checked = False

    # Whether the node's identity was checked since the stored tip was last found on its chain: a tip
    # that left the node's chain is a reorg only if the node is still on our chain (see `_check_tip`).
    _identity_fresh = False

    async def _ensure_open(self) -> None:
        if self._opened:
            return
        identity = await self.check_identity()
        if not self._currencies_checked:
            try:
                await self.adapter.check_currencies()
            except ConfigMismatch as exc:
                raise ConfigRefused(f"{self.chain.name}: {exc}") from exc
            self._currencies_checked = True
        self._opened = True
        self.log.info("chain_opened", identity=identity)

    async def check_identity(self) -> str:
        """Ask the node which chain it is on and compare it with the one the store followed (pinned on
        the first open). Another chain halts: none of its blocks may be taken for a reorg of ours."""
        try:
            identity = await self.adapter.open()
        except WrongChain as exc:
            raise ChainHalted(str(exc)) from exc
        except ConfigMismatch as exc:
            raise ConfigRefused(f"{self.chain.name}: {exc}") from exc
        async with self.store.transaction() as tx:
            stored = await tx.pin_identity(self.chain.name, identity)
        if stored is not None:
            raise ChainHalted(f"node is on chain {identity}, but the store followed {stored}")
        self._identity_fresh = True
        return identity

    def _node_trouble(self, exc: ChainError) -> None:
        if isinstance(exc, NodeUnavailable):
            # What answers after an outage may be another node (a host rebuilt, a fail-over URL, a
            # proxy): check its chain again before trusting any of its blocks.
            self._opened = False
        self.health.connected = False if not isinstance(exc, ChainDataError) else self.health.connected
        self.health.last_error = f"{type(exc).__name__}: {exc}"
        self.health.last_error_at = self._clock()
        self._throttle.failed("node_error", error=self.health.last_error)

    def _watch_head_age(self, head: BlockRef, now: float) -> None:
        """Log once when the node's head has been unchanged for longer than max_head_age_s (a node that
        answers but no longer follows its network: readyz fails from then on), and once when it moves."""
        if self._max_head_age_s is None:
            return
        age = self.health.head_age_s(now) or 0.0
        if age > self._max_head_age_s:
            if self._stale_since is None:
                self._stale_since = self.health.head_changed_at
                self.log.warning(
                    "node_head_stale",
                    height=head.height,
                    block_hash=head.block_hash,
                    age_s=round(age, 1),
                    limit_s=self._max_head_age_s,
                )
        elif self._stale_since is not None:
            unchanged_s = round(now - self._stale_since, 1)
            self._stale_since = None
            self.log.info(
                "node_head_moving", height=head.height, block_hash=head.block_hash, unchanged_s=unchanged_s
            )

    async def reload_watch(self) -> None:
        high = await self.store.address_high_water()  # first: a row added meanwhile is pulled later
        self.use_watch(await self.store.watch_keys(self.chain.name), high)

    def use_watch(self, built: Mapping[str, KeyIndex], high: tuple[int, int]) -> None:
        """Watch what the store held at `high` (Store.address_high_water, read before `built`)."""
        self._indexes = {c.code: growable(built.get(c.code, {})) for c in self.chain.currencies}
        self.watch = WatchList(dict(self._indexes), self.watch.outpoints)
        self._watched_to = high

    def watch_address(self, currency: str, watch_key: bytes, address_id: int, *, maybe_paid: bool) -> None:
        """Watch one more address from now on, in the watch set scans already hold: a scan that matches
        after this call sees it. The API calls it between its commit and its answer. `maybe_paid`: the
        address may have been paid before (registered, imported): the adapter's mempool cache, matched
        without it, starts over."""
        index = self._indexes.get(currency)
        if index is None:
            return  # another chain's currency
        if index.get(watch_key) == address_id:
            # Watched already (the API's call came first, the store's pull now): starting the mempool
            # cache over for it again would refetch the whole mempool at every poll while takes flow.
            return
        if not len(index):
            self._filled += 1
        if isinstance(index, dict):
            index[watch_key] = address_id
        else:
            index.add(watch_key, address_id)
        if maybe_paid:  # a new mapping: the adapter's mempool cache starts over (see mempool_scan)
            self.watch = WatchList(dict(self._indexes), self.watch.outpoints)

    async def _pull_new_addresses(self) -> None:
        """Addresses added (or watched again) in the store by another process (`addresses import`, `take`
        from the CLI) since the watch set last looked: watched from this step on. Many at once (an
        import) rebuild the watch set, compact again, rather than grow its dict of additions."""
        (last_id, last_seq), (high_id, high_seq) = self._watched_to, await self.store.address_high_water()
        if (high_id, high_seq) == (last_id, last_seq):
            return
        if high_id - last_id > REBUILD_ABOVE:
            self.log.info("watch_set_rebuilt", new_addresses=high_id - last_id)
            await self.reload_watch()
            return
        rows = await self.store.new_watch_keys(self.chain.name, last_id, high_id)
        rows += await self.store.watched_again(self.chain.name, last_seq, high_seq)
        for currency, key, address_id in rows:
            self.watch_address(currency, key, address_id, maybe_paid=True)
        self._watched_to = (high_id, high_seq)

    async def _watch_with_outpoints(self) -> WatchList:
        """The watch list plus the inputs of open deposits, so scans report double-spends of them."""
        outpoints = await self.store.open_outpoints(self.chain.name)
        if outpoints == self.watch.outpoints:
            return self.watch
        self.watch = WatchList(self.watch.by_currency, outpoints)
        return self.watch

    # ------------------------------------------------------------------------------------- one step

    async def step(self) -> bool:
        """One round: returns True if the cursor moved (or a reorg was unwound), so go on at once."""
        await self._pull_new_addresses()
        head = await self.adapter.head()
        now = self._clock()
        self.health.saw_head(head.height, head.block_hash, now)
        self._watch_head_age(head, now)
        cursor = (await self.store.chain_state(self.chain.name)).cursor
        if cursor is None:
            cursor = await self._anchor(head)
        if cursor is not None:
            self.health.processed_height = cursor.height
            where = await self._check_tip(cursor, head)
            if where == "behind":
                return False
            if where == "unwound":
                return True
        first = self._first_height(cursor, head)
        if first > head.height:
            await self._between_blocks(cursor or head)
            if self.at_head is not None and cursor is not None:
                self.at_head(now)  # every block to the head read at `now`, and the mempool after it
            return False
        last = min(head.height, first + self.chain.batch_blocks - 1)
        filled = self._filled
        scans = await self.adapter.scan(first, last, await self._watch_with_outpoints())
        if self._filled != filled:
            self.log.info("watch_set_grew_during_scan", first=first, last=last)
            return True
        if not scans:
            raise ChainDataError(f"node returned no blocks for {first}..{last}")
        if cursor is not None and scans[0].ref.parent_hash != cursor.block_hash:
            self.log.info("chain_moved_during_scan", height=first)
            return True
        await self._commit_blocks(scans)
        return True

    def _first_height(self, cursor: BlockRef | None, head: BlockRef) -> int:
        if cursor is not None:
            return cursor.height + 1
        return self.chain.start_height if self.chain.start_height is not None else head.height

    async def _anchor(self, head: BlockRef) -> BlockRef | None:
        """On first start, store the blocks below the first one to scan, the last of them as the cursor.

        They anchor reorg detection: a reorg that replaces the first scanned blocks, or blocks below
        them, still finds its fork point, as deep as `reorg_depth_limit` (or down to genesis). Fetched
        from the top down, each must be the parent of the one above: a chain that moves meanwhile is
        retried on the next step, with nothing stored. Scanning from genesis needs no anchor.
        """
        first = self._first_height(None, head)
        if first <= 0:
            return None
        anchor = await self.adapter.block_ref(first - 1)
        if anchor is None:
            raise ChainDataError(f"start_height {first} is above the node's head {head.height}")
        refs = [anchor]
        below = list(range(first - 2, max(first - 1 - self.chain.reorg_depth_limit, -1), -1))
        # Fetched a few at a time: 256 one-by-one round trips to a remote node would delay a first start.
        for at in range(0, len(below), ANCHOR_CONCURRENCY):
            heights = below[at : at + ANCHOR_CONCURRENCY]
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.adapter.block_ref(h)) for h in heights]
            for height, task in zip(heights, tasks, strict=True):
                ref = task.result()
                if ref is None or ref.block_hash != refs[-1].parent_hash:
                    raise ChainDataError(f"the node's chain moved below height {height + 1} while anchoring")
                refs.append(ref)
        async with self.store.transaction() as tx:
            await tx.add_blocks(self.chain.name, refs[::-1], keep=self.chain.reorg_depth_limit)
            await tx.set_cursor(self.chain.name, anchor)
        self.log.info(
            "chain_anchored", height=anchor.height, block_hash=anchor.block_hash, blocks_kept=len(refs)
        )
        return anchor

    async def _commit_blocks(self, scans: Sequence[BlockScan]) -> None:
        """One transaction: load what the ledger needs, apply its plan, the block refs and the cursor.

        Run whole on the store's writer thread (Store.write): a transaction of a round trip a statement
        held the write lock across ~10 of them, each waiting for a thread and the GIL under load, and
        the merchant API's takes queued behind it (up to 85 ms in the take bench)."""
        now = self._clock()
        transfers = transfers_of(scans)

        def commit(tx: ThreadTransaction) -> tuple[Plan, bool]:
            view = tx.run(
                tx.load(self.chain.name, map(transfer_key, transfers), (t.watch_id for t in transfers))
            )
            plan = self.ledger.plan_blocks(view, scans, now)
            woke = self._apply_on_thread(tx, plan, now)
            tx.run(tx.add_blocks(self.chain.name, [s.ref for s in scans], keep=self.chain.reorg_depth_limit))
            tx.run(tx.set_cursor(self.chain.name, scans[-1].ref))
            return plan, woke

        plan, woke = await self.store.write(commit)
        if woke:
            self._on_commit()
        tip = scans[-1].ref
        self.health.processed_height = tip.height
        self.health.last_step_at = now
        self.log.info(
            "blocks_applied",
            first=scans[0].ref.height,
            last=tip.height,
            block_hash=tip.block_hash,
            transfers=len(transfers),
        )
        self._announce(plan.callbacks)

    async def _apply(self, tx: StoreTransaction, plan: Plan, now: float) -> None:
        await tx.apply(plan, self.no_callbacks)
        if self.after_apply is not None and not plan.empty:
            if await self.after_apply(tx, self.chain.name, plan, now):
                self._on_commit()  # webhooks queued: wake the dispatcher

    def _apply_on_thread(self, tx: ThreadTransaction, plan: Plan, now: float) -> bool:
        """`_apply` inside a Store.write job (on the writer thread): whether webhooks were queued, for the
        caller to wake the dispatcher once back on the event loop (an asyncio.Event is not thread-safe)."""
        tx.run(tx.apply(plan, self.no_callbacks))
        if self.after_apply is None or plan.empty:
            return False
        return bool(tx.run(self.after_apply(tx, self.chain.name, plan, now)))

    def _announce(self, changes: Sequence[QueuedCallback]) -> None:
        for change in changes:
            self.log.info(
                "deposit_status",
                deposit_id=change.deposit_id,
                status=str(change.status),
                txid=change.txid,
                confirmations=change.confirmations,
            )
        if changes:
            self._on_commit()

    # ------------------------------------------------------------------------------------- history

    async def rescan(self, from_height: int, to_height: int, chunk_blocks: int) -> tuple[int, int]:
        """Scan processed blocks again for addresses added after their payments (`deposit-watcher rescan`).

        With the follower's own checks: the caller has checked the node's identity against the pinned
        one (`check_identity`); each chunk must chain onto the one before and agree with the block refs
        the store kept, checked inside the transaction that records it, so a reorg the daemon has seen
        (or will see) since is never recorded as history. Blocks above the processed height, which the
        daemon may have unwound meanwhile, are left to the daemon. Returns (transfers seen, created).
        """
        seen = created = 0
        previous: BlockRef | None = None
        for start in range(from_height, to_height + 1, chunk_blocks):
            scans = await self.adapter.scan(start, min(start + chunk_blocks - 1, to_height), self.watch)
            if not scans:
                raise ChainDataError(f"node returned no blocks for {start}..{to_height}")
            async with self.store.transaction() as tx:
                tip = await tx.cursor_height(self.chain.name)
                scans = [s for s in scans if tip is not None and s.ref.height <= tip]
                if not scans:
                    break
                stored = await tx.block_hashes(self.chain.name, scans[0].ref.height - 1, scans[-1].ref.height)
                check_history(scans, stored, previous)
                transfers = transfers_of(scans)
                view = await tx.load(
                    self.chain.name, map(transfer_key, transfers), (t.watch_id for t in transfers)
                )
                now = self._clock()
                result = self.ledger.plan_history(view, scans, tip or 0, now)
                await self._apply(tx, result.plan, now)
            previous = scans[-1].ref
            seen += result.transfers
            created += result.created
            self._announce(result.plan.callbacks)
        return seen, created

    # ------------------------------------------------------------------------------------- at the tip

    async def _between_blocks(self, tip: BlockRef) -> None:
        """At the head: look at the mempool and settle deposits that are in no block."""
        if "mempool" in self.adapter.capabilities:
            scan = await self.adapter.mempool_scan(await self._watch_with_outpoints())
            if scan.transfers or scan.spends:
                now = self._clock()

                def commit(
                    tx: ThreadTransaction,
                ) -> tuple[Plan, bool]:  # on the writer thread: _commit_blocks
                    keys, ids = map(transfer_key, scan.transfers), (t.watch_id for t in scan.transfers)
                    plan = self.ledger.plan_mempool(
                        tx.run(tx.load(self.chain.name, keys, ids)), scan, tip.height, now
                    )
                    return plan, self._apply_on_thread(tx, plan, now)

                plan, woke = await self.store.write(commit)
                if woke:
                    self._on_commit()
                self._announce(plan.callbacks)
        await self._settle_orphans()
        await self._scan_history()

    async def _scan_history(self) -> None:
        """One chunk of the past scanned for addresses registered with a `from_height`, lowest first.

        The plan and the scans' progress commit together, so a crash repeats at most this chunk, and what
        it finds is reported once (the ledger knows each transfer it has seen). Blocks above the cursor
        are the follower's own: a request above it is simply dropped. A chunk the chain changed under is
        dropped and tried again at the next poll.
        """
        pending = await self.store.pending_scans(self.chain.name)
        cursor = await self._cursor_height()
        if not pending or cursor is None:
            return
        start = pending[0][1]
        if start > cursor:
            async with self.store.transaction() as tx:
                await tx.advance_scans(
                    self.chain.name, [i for i, _ in pending], max(h for _, h in pending), True
                )
            return
        scans = await self.adapter.scan(start, min(start + self.chain.batch_blocks - 1, cursor), self.watch)
        async with self.store.transaction() as tx:
            tip = await tx.cursor_height(self.chain.name)
            scans = [s for s in scans if tip is not None and s.ref.height <= tip]
            if not scans or tip is None:
                return  # unwound below the chunk meanwhile: next poll
            stored = await tx.block_hashes(self.chain.name, scans[0].ref.height - 1, scans[-1].ref.height)
            try:
                check_history(scans, stored, None)
            except ChainDataError as e:
                self.log.warning("history_scan_retry", error=str(e))
                return
            transfers = transfers_of(scans)
            view = await tx.load(
                self.chain.name, map(transfer_key, transfers), (t.watch_id for t in transfers)
            )
            now = self._clock()
            result = self.ledger.plan_history(view, scans, tip, now)
            await self._apply(tx, result.plan, now)
            end = scans[-1].ref.height
            await tx.advance_scans(self.chain.name, [i for i, h in pending if h <= end], end, end >= tip)
        self.log.info(
            "history_scanned", first=start, last=end, transfers=result.transfers, found=result.created
        )
        self._announce(result.plan.callbacks)

    async def _cursor_height(self) -> int | None:
        cursor = (await self.store.chain_state(self.chain.name)).cursor
        return None if cursor is None else cursor.height

    async def _settle_orphans(self) -> None:
        """Ask the node what became of each deposit in no block; cancel in one transaction those gone.

        The node is asked outside any transaction (it may be slow); the plan is made against the deposits
        as loaded again inside it, so one that a block met in the meantime is left alone.
        """
        orphans = await self.store.orphans(self.chain.name)
        if not orphans:
            return
        fates = {o.deposit.id: await self.adapter.tx_fate(transfer_of(o)) for o in orphans}
        async with self.store.transaction() as tx:
            view = await tx.load(self.chain.name)
            now = self._clock()
            plan = self.ledger.plan_fates(view, fates, self.chain.unconfirmed_expiry_s, now)
            await self._apply(tx, plan, now)
        for change in plan.callbacks:
            self.log.warning("deposit_cancelled", deposit_id=change.deposit_id, txid=change.txid)
        self._announce(plan.callbacks)

    # ------------------------------------------------------------------------------------- reorgs

    async def _check_tip(self, cursor: BlockRef, head: BlockRef) -> str:
        """ "ok" if the stored tip is on the node's chain, "behind" if the node has not reached it yet,
        else unwind to the fork point and return "unwound"."""
        node_ref = head if head.height == cursor.height else await self.adapter.block_ref(cursor.height)
        if node_ref is not None and node_ref.block_hash == cursor.block_hash:
            self._behind.recovered("node_caught_up", height=head.height)
            self._identity_fresh = False
            return "ok"
        if not self._identity_fresh:
            # The node disagrees with our tip. Before reading it as a reorg or a node behind us, make sure
            # it is still on our chain: a node swapped without an outage we could see (a load balancer, a
            # DNS change, a proxy retargeted) answers with another chain's blocks, and its cause must be
            # reported as such, not as a reorg. Once per divergence: two calls, then compare blocks.
            await self.check_identity()
        if node_ref is None:
            _check_below_head(cursor.height, head)
            if await self._behind_us(head):
                # The node is behind what we processed (restarted, re-syncing, or a lagging fail-over
                # node) with no sign of a fork: wait for it rather than unwind blocks it has not seen yet.
                self._behind.failed("node_behind", node_height=head.height, processed=cursor.height)
                return "behind"
        fork = await self._find_fork(cursor, head)
        await self._unwind(cursor, fork)
        return "unwound"

    async def _behind_us(self, head: BlockRef) -> bool:
        """Whether a node whose head is below our tip may simply be behind on our chain: its head is one
        of our kept blocks, or below all of them (nothing to compare; a fork shows once it is back)."""
        stored = await self.store.recent_blocks(self.chain.name, self.chain.reorg_depth_limit)
        if any(r.height == head.height and r.block_hash == head.block_hash for r in stored):
            return True
        return bool(stored) and head.height < stored[-1].height

    async def _find_fork(self, cursor: BlockRef, head: BlockRef) -> BlockRef:
        refs = await self.store.recent_blocks(self.chain.name, self.chain.reorg_depth_limit)
        for ref in refs:
            node_ref = await self.adapter.block_ref(ref.height)
            if node_ref is None:
                _check_below_head(ref.height, head)
                continue  # above the node's head: nothing to compare yet
            if node_ref.block_hash == ref.block_hash:
                return ref
        oldest = refs[-1].height if refs else cursor.height
        raise ChainHalted(
            f"reorg deeper than the {len(refs)} kept blocks (no common block at or above height {oldest});"
            " follow the README's deep-reorg procedure"
        )

    async def _unwind(self, cursor: BlockRef, fork: BlockRef) -> None:
        depth = cursor.height - fork.height
        now = self._clock()
        async with self.store.transaction() as tx:
            above = await tx.deposits_above(self.chain.name, fork.height)
            taken_back = self.ledger.confirmed_above(t.deposit for t in above)
            if taken_back:
                ids = ", ".join(f"{d.id} ({d.currency} {d.txid} at {d.block_height})" for d in taken_back)
                raise ChainHalted(
                    f"reorg of depth {depth} at height {fork.height + 1} removes confirmed deposits: {ids};"
                    " min_confirmations is too low for this chain, see the README's deep-reorg procedure"
                )
            plan = self.ledger.plan_unwind(above, now)
            await self._apply(tx, plan, now)
            await tx.delete_blocks_above(self.chain.name, fork.height)
            await tx.set_cursor(self.chain.name, fork)
        self.health.reorgs += 1
        self.health.deepest_reorg = max(self.health.deepest_reorg, depth)
        self.health.processed_height = fork.height
        self.log.warning(
            "reorg_detected",
            fork_height=fork.height,
            depth=depth,
            old_tip=cursor.block_hash,
            deposits_unwound=[t.deposit.id for t in plan.updates],
        )

    async def _halt(self, reason: str) -> None:
        async with self.store.transaction() as tx:
            await tx.set_halted(self.chain.name, reason)
        self._halt_report(reason)

    def _halt_report(self, reason: str) -> None:
        self.health.halted_reason = reason
        self.log.error("chain_halted", reason=reason)


def _check_below_head(height: int, head: BlockRef) -> None:
    """A node with no block at `height` must not claim a head at or above it. A load-balanced node whose
    backends lag each other does: that is the node contradicting itself (retried), never a fork."""
    if height <= head.height:
        raise ChainDataError(f"the node has no block at height {height}, under its own head {head.height}")


def check_history(scans: Sequence[BlockScan], stored: Mapping[int, str], previous: BlockRef | None) -> None:
    """Scanned past blocks must chain together (and onto `previous`) and agree with the stored refs
    (height -> block hash) where the store kept one: otherwise the chain changed since it was processed."""
    for scan in scans:
        ref = scan.ref
        if previous is not None and ref.parent_hash != previous.block_hash:
            raise ChainDataError(
                f"block {ref.height} does not follow block {previous.height} ({previous.block_hash}):"
                " the node's chain moved during the rescan; run it again"
            )
        kept = stored.get(ref.height)
        if kept is not None and kept != ref.block_hash:
            raise ChainDataError(
                f"block {ref.height} is {ref.block_hash} on the node but {kept} in the store: the chain"
                " reorganised since it was processed; let the daemon follow it, then run the rescan again"
            )
        kept_parent = stored.get(ref.height - 1)
        if kept_parent is not None and kept_parent != ref.parent_hash:
            raise ChainDataError(
                f"block {ref.height}'s parent is {ref.parent_hash} on the node but {kept_parent} in the"
                " store: the chain reorganised since it was processed; let the daemon follow it, then run"
                " the rescan again"
            )
        previous = ref
