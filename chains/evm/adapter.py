"""The EVM chain adapter: native ETH payments and ERC-20 Transfer logs, through one JSON-RPC node.

How a range is scanned (`scan`):

* the blocks come in batched eth_getBlockByNumber calls, with full transactions only when a native
  currency has watched addresses; their refs must chain by parent hash;
* native payments are transactions whose `to` is watched and whose value is > 0; their receipts are
  fetched in one batch and only status 0x1 counts (a reverted transaction moves no value);
* token payments come from ONE eth_getLogs over the whole range for all token contracts with watched
  addresses, topic0 = Transfer only. The `to` topic is never used as a filter: nodes cap OR-lists at about
  1,000 entries and a daemon may watch 100,000 addresses, so filtering happens locally on a dict
  (performance.md). When the node refuses the range (too many results, range too large) it is halved,
  and the smaller span is remembered for later scans;
* every answer is checked against the fetched blocks' hashes, and the range's last block is read again
  at the end (a reorganisation may leave no log or receipt behind to compare), so a reorganisation
  during the scan raises ChainDataError instead of mixing two chains.

Not seen: ETH moved by a contract's internal call (needs traces), and the mempool (capabilities is empty).

web3 is not used for any result here: decoding is done by `chains.evm.decode` on orjson's output.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import structlog

from chains.base import (
    AddressError,
    BaseAdapter,
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainSettings,
    ConfigMismatch,
    CurrencySpec,
    Deriver,
    KeyIndex,
    NodeRejected,
    Transfer,
    TxFate,
    TxState,
    WatchList,
    WrongChain,
)
from chains.evm import decode
from chains.evm.address import parse_evm_address, to_checksum
from chains.evm.derive import parse_evm_key
from chains.jsonrpc import Call, JsonRpcClient, ResponseTooLarge

log = structlog.get_logger(__name__)

DECIMALS_SELECTOR = "0x313ce567"  # decimals()
# Blocks per eth_getBlockByNumber batch: a full mainnet block is up to ~1 MB of JSON, a header ~1 kB.
FULL_BLOCKS_PER_BATCH = 25
HEADERS_PER_BATCH = 500
# What providers answer when an eth_getLogs range is too big: Infura -32005 "query returned more than
# 10000 results", Alchemy "Log response size exceeded" / "up to a 10 block range", geth/erigon "exceed
# maximum block range", others "block range is too wide" / "limited to a 10,000 range". Kept narrow: a
# real error misread as a refusal costs one call per block of the range before it surfaces.
RANGE_REFUSED_CODE = -32005
_RANGE_REFUSED_TEXT = re.compile(
    r"too many|more than \d+ results|exceed|too large|too wide|response size|block range|limited to",
    re.IGNORECASE,
)


def is_range_refusal(exc: Exception) -> bool:
    """Whether an eth_getLogs failure means "ask for fewer blocks" rather than a real error."""
    if isinstance(exc, ResponseTooLarge):
        return True
    if not isinstance(exc, NodeRejected):
        return False
    return exc.code == RANGE_REFUSED_CODE or bool(_RANGE_REFUSED_TEXT.search(str(exc)))


def split_range(from_height: int, to_height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two halves of an inclusive range of at least two blocks."""
    if to_height <= from_height:
        raise ValueError(f"cannot split the range {from_height}..{to_height}")
    middle = (from_height + to_height) // 2
    return (from_height, middle), (middle + 1, to_height)


class EvmAdapter(BaseAdapter):
    """ChainAdapter for Ethereum and EVM-compatible chains (see chains.base.ChainAdapter). No mempool:
    `capabilities` stays the base's empty set."""

    native_decimals: ClassVar[int] = 18
    default_min_confirmations: ClassVar[int] = 10

    def __init__(self, settings: ChainSettings) -> None:
        super().__init__(settings)
        self._rpc = JsonRpcClient.for_settings(settings)
        self._natives = tuple(spec for spec in settings.currencies if spec.contract is None)
        self._tokens = _tokens_by_contract(settings)
        # Non-standard Transfer logs seen since start, by kind (see chains.evm.decode W_*).
        self.warnings: Counter[str] = Counter()
        # Largest eth_getLogs block span to ask for, once the node has refused a larger one.
        self._log_span: int | None = None

    # ------------------------------------------------------------------------------ addresses

    @staticmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes:
        """The 20 address bytes; for a token too the key is the holder's address, not the contract."""
        return parse_evm_address(address)

    @staticmethod
    def display_address(currency: CurrencySpec, key: bytes, network: str) -> str:
        if len(key) != 20:
            raise AddressError(f"an EVM watch key is 20 bytes, got {len(key)}")
        return to_checksum(key)

    @classmethod
    def parse_public_key(cls, text: str, network: str) -> Deriver:
        """A watch-only deriver for a BIP-44 account xpub (chains.evm.derive)."""
        return parse_evm_key(text, network)

    # -------------------------------------------------------------------------------- lifecycle

    async def open(self) -> str:
        chain_id = decode.parse_quantity(await self._rpc.call("eth_chainId"), "eth_chainId")
        expected = self._settings.chain_id
        if expected is not None and chain_id != expected:
            name = self._settings.name
            raise WrongChain(
                f"{name}: the node is on chain id {chain_id}, the configuration says {expected}",
                cause=chain_id,
            )
        genesis = await self._rpc.call("eth_getBlockByNumber", ["0x0", False])
        if genesis is None:
            raise ChainDataError(f"{self._settings.name}: the node has no genesis block", cause=genesis)
        genesis_ref = decode.block_ref(genesis, 0)
        return f"evm:{chain_id}:{genesis_ref.block_hash}"

    async def check_currencies(self) -> None:
        for contract, spec in self._tokens.items():
            await self._check_decimals(contract, spec)

    async def close(self) -> None:
        await self._rpc.close()

    async def _check_decimals(self, contract: str, spec: CurrencySpec) -> None:
        code = await self._rpc.call("eth_getCode", [contract, "latest"])
        if not isinstance(code, str) or code in ("0x", "0x0", ""):
            raise ConfigMismatch(
                f"{spec.code}: no contract at {contract} on {self._settings.name} "
                f"(configured decimals {spec.decimals})",
                cause=code,
            )
        try:
            answer = await self._rpc.call("eth_call", [{"to": contract, "data": DECIMALS_SELECTOR}, "latest"])
            on_chain = decode.decode_uint256(answer, f"{spec.code} decimals()")
        except (NodeRejected, ChainDataError) as exc:
            message = f"{spec.code}: contract {contract} does not answer decimals(): {exc}"
            raise ConfigMismatch(message, cause=exc) from exc
        if on_chain != spec.decimals:
            raise ConfigMismatch(
                f"{spec.code}: configured decimals {spec.decimals}, contract {contract} says {on_chain}",
                cause=on_chain,
            )

    # ----------------------------------------------------------------------------------- blocks

    async def head(self) -> BlockRef:
        header = await self._rpc.call("eth_getBlockByNumber", ["latest", False])
        if header is None:
            raise ChainDataError("eth_getBlockByNumber(latest) returned null", cause=header)
        return decode.block_ref(header)

    async def block_ref(self, height: int) -> BlockRef | None:
        header = await self._rpc.call("eth_getBlockByNumber", [hex(height), False])
        return None if header is None else decode.block_ref(header, height)

    # ------------------------------------------------------------------------------------- scan

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        if to_height < from_height:
            return []
        native_keys = [(spec, watch.keys_for(spec.code)) for spec in self._natives]
        native_keys = [(spec, keys) for spec, keys in native_keys if keys]
        full = bool(native_keys)
        blocks = await self._fetch_blocks(from_height, to_height, full)
        refs = [decode.block_ref(block, height) for height, block in enumerate(blocks, start=from_height)]
        decode.check_chained(refs)
        found: dict[int, list[tuple[tuple[int, int], Transfer]]] = {ref.height: [] for ref in refs}
        for height, transfer, order in await self._native_transfers(refs, blocks, native_keys):
            found[height].append((order, transfer))
        for height, transfer, order in await self._token_transfers(refs, blocks if full else None, watch):
            found[height].append((order, transfer))
        await self._check_unchanged(refs[-1])
        return [
            BlockScan(ref=ref, transfers=tuple(t for _, t in sorted(found[ref.height], key=lambda x: x[0])))
            for ref in refs
        ]

    async def _check_unchanged(self, last: BlockRef) -> None:
        """The range's last block must still be the same once everything is fetched. The per-answer
        hash checks cannot see a reorganisation that left no log or receipt behind (the new blocks have
        none of our transfers); this one can, because any change inside the range changes `last`."""
        now = await self.block_ref(last.height)
        if now != last:
            raise ChainDataError(
                f"block {last.height} changed from {last.block_hash} to "
                f"{now.block_hash if now else 'nothing'}: the chain changed during the scan",
                cause=now,
            )

    async def _fetch_blocks(self, from_height: int, to_height: int, full: bool) -> list[Mapping[str, Any]]:
        per_batch = FULL_BLOCKS_PER_BATCH if full else HEADERS_PER_BATCH
        blocks: list[Mapping[str, Any]] = []
        for start in range(from_height, to_height + 1, per_batch):
            heights = range(start, min(start + per_batch, to_height + 1))
            answers = await self._rpc.batch([("eth_getBlockByNumber", [hex(h), full]) for h in heights])
            for height, block in zip(heights, answers, strict=True):
                if block is None:
                    raise ChainDataError(f"block {height} is gone: the chain changed during the scan")
                blocks.append(decode.expect_dict(block, f"block {height}"))
        return blocks

    async def _native_transfers(
        self,
        refs: Sequence[BlockRef],
        blocks: Sequence[Mapping[str, Any]],
        native_keys: Sequence[tuple[CurrencySpec, KeyIndex]],
    ) -> list[tuple[int, Transfer, tuple[int, int]]]:
        candidates: list[tuple[BlockRef, CurrencySpec, decode.NativePayment]] = []
        for ref, block in zip(refs, blocks, strict=True):
            transactions = decode.expect_list(block.get("transactions"), f"block {ref.height}.transactions")
            for spec, keys in native_keys:
                for payment in decode.native_payments(transactions, keys, ref.height):
                    candidates.append((ref, spec, payment))
        if not candidates:
            return []
        receipts = await self._rpc.batch(
            [("eth_getTransactionReceipt", [payment.tx.txid]) for _, _, payment in candidates]
        )
        result: list[tuple[int, Transfer, tuple[int, int]]] = []
        for (ref, spec, payment), receipt in zip(candidates, receipts, strict=True):
            if decode.receipt_succeeded(receipt, payment.tx.txid, ref.block_hash):
                transfer = _transfer(spec, payment.watch_id, payment.to_key, payment.amount, payment.tx, -1)
                result.append((ref.height, transfer, (payment.tx.tx_index, -1)))
        return result

    async def _token_transfers(
        self, refs: Sequence[BlockRef], full_blocks: Sequence[Mapping[str, Any]] | None, watch: WatchList
    ) -> list[tuple[int, Transfer, tuple[int, int]]]:
        # The currency is found by the log's contract address, never by the token's symbol.
        wanted = {
            c: watch.keys_for(spec.code) for c, spec in self._tokens.items() if watch.keys_for(spec.code)
        }
        if not wanted:
            return []
        raw_logs = await self._get_logs(refs[0].height, refs[-1].height, sorted(wanted))
        hashes = {ref.height: ref.block_hash for ref in refs}
        warnings: Counter[str] = Counter()
        hits: list[tuple[CurrencySpec, int, decode.TransferLog]] = []
        for entry in decode.decode_transfer_logs(raw_logs, warnings, hashes, wanted):
            watch_id = wanted[entry.contract].get(entry.to_key)
            if watch_id is not None and entry.amount > 0:
                hits.append((self._tokens[entry.contract], watch_id, entry))
        self._note_warnings(warnings, refs)
        if not hits:
            return []
        infos = await self._tx_infos([entry for _, _, entry in hits], full_blocks, refs[0].height)
        return [
            (
                entry.block_number,
                _transfer(spec, watch_id, entry.to_key, entry.amount, infos[entry.txid], entry.ordinal),
                (entry.tx_index, entry.log_index),
            )
            for spec, watch_id, entry in hits
        ]

    async def _get_logs(self, from_height: int, to_height: int, contracts: list[str]) -> list[Any]:
        """Transfer logs of `contracts` in the range, in spans the node has not refused before."""
        span = self._log_span or to_height - from_height + 1
        logs: list[Any] = []
        for start in range(from_height, to_height + 1, span):
            logs += await self._get_logs_halving(start, min(start + span - 1, to_height), contracts)
        return logs

    async def _get_logs_halving(self, from_height: int, to_height: int, contracts: list[str]) -> list[Any]:
        """Transfer logs of `contracts` in the range, halving the range while the node refuses it."""
        query = {
            "fromBlock": hex(from_height),
            "toBlock": hex(to_height),
            "address": contracts,
            "topics": [decode.TRANSFER_TOPIC],
        }
        try:
            answer = await self._rpc.call("eth_getLogs", [query])
        except (NodeRejected, ResponseTooLarge) as exc:
            if from_height == to_height or not is_range_refusal(exc):
                raise
            log.debug(
                "evm_get_logs_split",
                chain=self._settings.name,
                from_height=from_height,
                to_height=to_height,
                reason=str(exc),
            )
            (lo_from, lo_to), (hi_from, hi_to) = split_range(from_height, to_height)
            # Remember the smaller span so the next scans do not rediscover the node's limit call by call.
            self._log_span = lo_to - lo_from + 1
            lower = await self._get_logs_halving(lo_from, lo_to, contracts)
            return lower + await self._get_logs_halving(hi_from, hi_to, contracts)
        return decode.expect_list(answer, f"eth_getLogs {from_height}..{to_height}")

    async def _tx_infos(
        self,
        entries: Sequence[decode.TransferLog],
        full_blocks: Sequence[Mapping[str, Any]] | None,
        first_height: int,
    ) -> dict[str, decode.TxInfo]:
        """Sender and nonce of the transactions that emitted `entries`: from the fetched blocks when they
        hold full transactions, else from one eth_getTransactionByHash batch."""
        if full_blocks is not None:
            return {
                entry.txid: _tx_in_block(full_blocks[entry.block_number - first_height], entry)
                for entry in entries
            }
        by_txid = {entry.txid: entry for entry in entries}
        calls: list[Call] = [("eth_getTransactionByHash", [txid]) for txid in by_txid]
        answers = await self._rpc.batch(calls)
        infos: dict[str, decode.TxInfo] = {}
        for (txid, entry), tx in zip(by_txid.items(), answers, strict=True):
            infos[txid] = _checked_tx(tx, entry)
        return infos

    def _note_warnings(self, warnings: Counter[str], refs: Sequence[BlockRef]) -> None:
        if warnings:
            self.warnings.update(warnings)
            log.warning(
                "evm_nonstandard_transfer_logs",
                chain=self._settings.name,
                from_height=refs[0].height,
                to_height=refs[-1].height,
                **dict(warnings),
            )

    # ------------------------------------------------------------------------------------- fate

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        tx = await self._rpc.call("eth_getTransactionByHash", [transfer.txid])
        if tx is not None:
            block_number = decode.expect_dict(tx, f"transaction {transfer.txid}").get("blockNumber")
            if block_number is None:
                return TxFate(TxState.PENDING, "in the node's mempool")
            height = decode.parse_quantity(block_number, f"transaction {transfer.txid}.blockNumber")
            return TxFate(TxState.MINED, block_height=height)
        if transfer.sender is not None and transfer.nonce is not None:
            count = await self._rpc.call("eth_getTransactionCount", [transfer.sender, "latest"])
            if decode.parse_quantity(count, f"transaction count of {transfer.sender}") > transfer.nonce:
                reason = f"nonce {transfer.nonce} of {transfer.sender} was used by another transaction"
                return TxFate(TxState.REPLACED, reason)
        return TxFate(TxState.UNKNOWN, "the node no longer knows the transaction")


# ------------------------------------------------------------------------------------------ helpers


def _tokens_by_contract(settings: ChainSettings) -> dict[str, CurrencySpec]:
    """Token currencies by lower-case contract address; a log's contract picks the currency, never the
    token's symbol (anyone can deploy a contract calling itself USDT)."""
    tokens: dict[str, CurrencySpec] = {}
    for spec in settings.currencies:
        if spec.contract is None:
            continue
        try:
            contract = "0x" + parse_evm_address(spec.contract).hex()
        except AddressError as exc:
            raise ConfigMismatch(f"{spec.code}: bad contract address: {exc}", cause=exc) from exc
        if contract in tokens:
            raise ConfigMismatch(f"{spec.code} and {tokens[contract].code} have the same contract {contract}")
        tokens[contract] = spec
    return tokens


def _transfer(
    spec: CurrencySpec, watch_id: int, to_key: bytes, amount: int, tx: decode.TxInfo, index: int
) -> Transfer:
    return Transfer(
        currency=spec.code,
        watch_id=watch_id,
        address=to_checksum(to_key),
        amount=amount,
        txid=tx.txid,
        index=index,
        sender=to_checksum(tx.sender),
        nonce=tx.nonce,
    )


def _tx_in_block(block: Mapping[str, Any], entry: decode.TransferLog) -> decode.TxInfo:
    where = f"block {entry.block_number}"
    transactions = decode.expect_list(block.get("transactions"), f"{where}.transactions")
    if not 0 <= entry.tx_index < len(transactions):
        raise ChainDataError(f"log of {entry.txid} points past the transactions of {where}")
    info = decode.tx_info(transactions[entry.tx_index], f"{where} transaction {entry.tx_index}")
    if info.txid != entry.txid:
        raise ChainDataError(f"log of {entry.txid} does not match transaction {info.txid} of its block")
    return info


def _checked_tx(tx: object, entry: decode.TransferLog) -> decode.TxInfo:
    if tx is None:
        raise ChainDataError(f"transaction {entry.txid} is gone: the chain changed during the scan")
    obj = decode.expect_dict(tx, f"transaction {entry.txid}")
    block_hash = obj.get("blockHash")
    if block_hash is None or decode.parse_hash(block_hash, f"{entry.txid}.blockHash") != entry.block_hash:
        raise ChainDataError(
            f"transaction {entry.txid} moved to another block: the chain changed during the scan"
        )
    return decode.tx_info(obj, f"transaction {entry.txid}")
