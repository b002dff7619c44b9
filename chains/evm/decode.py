"""Pure decoding of EVM JSON-RPC answers: quantities, block headers, ERC-20 Transfer logs, native payments.

No I/O. Input is what orjson made of the node's JSON (dicts, lists, str). Two kinds of bad input are told
apart on purpose:

* fields the node itself produces (block numbers, hashes, log indexes, addresses) that are malformed mean
  the node is broken or lying: ChainDataError, the scan stops;
* a Transfer log whose *contents* are non-standard (wrong topic count, short data, dirty padding) is what
  a quirky token contract emits: it yields nothing, a warning is counted, the scan goes on
  (ethereum-etl's rule: a non-standard token never crashes the extractor).

Hex is decoded by slicing and `bytes.fromhex`/`int(x, 16)`, not through web3 formatters: at tens of
thousands of logs per range that is the difference between milliseconds and seconds (performance.md).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_utils.crypto import keccak

from chains.base import BlockRef, ChainDataError

# keccak("Transfer(address,address,uint256)"); ERC-721 shares it but has 4 topics (the id is indexed).
TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
# Compiled full-match checks: ~0.3 us for a 64-digit string, ten times faster than a per-char test, and
# stricter than int(x, 16), which also takes "0x1_0" and surrounding whitespace.
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}").fullmatch
_WORD = re.compile(r"0x[0-9a-fA-F]{64}").fullmatch  # 32-byte hashes, topics, uint256 data
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}").fullmatch
# An address topic is 32 bytes: 12 zero bytes, then the 20-byte address.
_ADDRESS_TOPIC = re.compile(r"0x0{24}([0-9a-fA-F]{40})").fullmatch

# Warning names counted for non-standard Transfer logs.
W_TOPIC0 = "transfer_log_wrong_topic0"
W_TOPIC_COUNT = "transfer_log_wrong_topic_count"
W_TOPIC_FORMAT = "transfer_log_bad_topic"
W_DATA = "transfer_log_bad_data"


# ------------------------------------------------------------------------------------------ scalars


def parse_quantity(value: object, what: str) -> int:
    """A JSON-RPC QUANTITY ("0x1a"): at most 256 bits. ChainDataError naming `what` otherwise."""
    if not isinstance(value, str) or not _QUANTITY(value):
        raise ChainDataError(f"{what}: expected a hex quantity, got {value!r:.80}", cause=value)
    return int(value, 16)


def parse_hash(value: object, what: str) -> str:
    """A 32-byte hash as lower-case "0x..." text (the form used for txids and block hashes)."""
    if not isinstance(value, str) or not _WORD(value):
        raise ChainDataError(f"{what}: expected a 32-byte hex hash, got {value!r:.80}", cause=value)
    return value.lower()


def parse_address(value: object, what: str) -> bytes:
    """A 20-byte address the node reports (tx from/to, log address) as raw bytes."""
    if not isinstance(value, str) or not _ADDRESS(value):
        raise ChainDataError(f"{what}: expected a 20-byte hex address, got {value!r:.80}", cause=value)
    return bytes.fromhex(value[2:])


def expect_dict(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ChainDataError(f"{what}: expected an object, got {type(value).__name__}", cause=value)
    return value


def expect_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ChainDataError(f"{what}: expected a list, got {type(value).__name__}", cause=value)
    return value


# ------------------------------------------------------------------------------------------ blocks


def block_ref(header: object, expected_height: int | None = None) -> BlockRef:
    """BlockRef of an eth_getBlockByNumber answer; checks the height when the caller asked for one."""
    block = expect_dict(header, "block")
    height = parse_quantity(block.get("number"), "block.number")
    if expected_height is not None and height != expected_height:
        raise ChainDataError(f"asked for block {expected_height}, node returned block {height}", cause=header)
    return BlockRef(
        height=height,
        block_hash=parse_hash(block.get("hash"), f"block {height}.hash"),
        parent_hash=parse_hash(block.get("parentHash"), f"block {height}.parentHash"),
    )


def check_chained(refs: Sequence[BlockRef]) -> None:
    """Consecutive refs must link by parent hash; a break means the node reorganised mid-answer."""
    for prev, ref in itertools.pairwise(refs):
        if ref.height != prev.height + 1 or ref.parent_hash != prev.block_hash:
            raise ChainDataError(
                f"block {ref.height} (parent {ref.parent_hash}) does not follow block {prev.height} "
                f"({prev.block_hash}): the chain changed during the scan",
                cause=(prev, ref),
            )


# ------------------------------------------------------------------------------ native transactions


@dataclass(frozen=True, slots=True)
class TxInfo:
    """The fields of a transaction a Transfer needs besides the payment itself."""

    txid: str
    tx_index: int
    sender: bytes
    nonce: int


@dataclass(frozen=True, slots=True)
class NativePayment:
    """A transaction paying a watched address in the chain's own coin (success not yet known)."""

    tx: TxInfo
    to_key: bytes
    watch_id: int
    amount: int


def tx_info(tx: object, what: str) -> TxInfo:
    obj = expect_dict(tx, what)
    return TxInfo(
        txid=parse_hash(obj.get("hash"), f"{what}.hash"),
        tx_index=parse_quantity(obj.get("transactionIndex"), f"{what}.transactionIndex"),
        sender=parse_address(obj.get("from"), f"{what}.from"),
        nonce=parse_quantity(obj.get("nonce"), f"{what}.nonce"),
    )


def native_payments(
    transactions: Iterable[object], keys: Mapping[bytes, int], height: int
) -> list[NativePayment]:
    """Transactions of one block whose `to` is a watched key and whose value is > 0, in block order.

    Only the transaction's own value is seen: ETH moved by a contract's internal call needs traces, which
    this adapter does not use. Whether the transaction succeeded is decided later from its receipt.
    """
    found: list[NativePayment] = []
    for position, raw in enumerate(transactions):
        tx = expect_dict(raw, f"block {height} transaction {position}")
        to = tx.get("to")
        if to is None:  # contract creation
            continue
        watch_id = keys.get(parse_address(to, f"block {height} transaction {position}.to"))
        if watch_id is None:
            continue
        amount = parse_quantity(tx.get("value"), f"block {height} transaction {position}.value")
        if amount > 0:
            info = tx_info(tx, f"block {height} transaction {position}")
            found.append(NativePayment(info, to_key=bytes.fromhex(to[2:]), watch_id=watch_id, amount=amount))
    return found


def receipt_succeeded(receipt: object, txid: str, block_hash: str) -> bool:
    """Whether a receipt reports success (status 0x1); it must belong to the block we scanned."""
    if receipt is None:
        raise ChainDataError(f"no receipt for {txid}: the chain changed during the scan", cause=txid)
    obj = expect_dict(receipt, f"receipt of {txid}")
    if parse_hash(obj.get("blockHash"), f"receipt of {txid}.blockHash") != block_hash:
        raise ChainDataError(f"receipt of {txid} is from another block: the chain changed during the scan")
    return parse_quantity(obj.get("status"), f"receipt of {txid}.status") == 1


# ------------------------------------------------------------------------------------ token logs


@dataclass(frozen=True, slots=True)
class TransferLog:
    """One standard ERC-20 Transfer log. `ordinal` counts the transaction's Transfer-shaped logs of the
    same contract (0, 1, ...); unlike the block-wide logIndex it stays the same if the tx is mined again."""

    contract: str  # lower-case 0x address
    block_number: int
    block_hash: str
    txid: str
    tx_index: int
    log_index: int
    ordinal: int
    from_key: bytes
    to_key: bytes
    amount: int


@dataclass(frozen=True, slots=True)
class _LogEnvelope:
    """The node-produced fields of a log; malformed ones are the node's fault (ChainDataError)."""

    contract: str
    block_number: int
    block_hash: str
    txid: str
    tx_index: int
    log_index: int


# A log waiting for its ordinal: (block number, log index, contract, txid as sent, log, decode it?).
_Pending = tuple[int, int, str, str, Mapping[str, Any], bool]


def _block_height(log: Mapping[str, Any], block_hashes: Mapping[int, str] | None) -> int:
    """Slow path of the first pass: a block number not seen yet in this answer."""
    height = parse_quantity(log.get("blockNumber"), "log.blockNumber")
    if block_hashes is not None and height not in block_hashes:
        raise ChainDataError(f"a log is from block {height}, outside the range asked", cause=log)
    return height


def _check_block_hash(log: Mapping[str, Any], height: int, expected: str) -> None:
    """Slow path of the first pass: the hash differs from the fetched one, at least in case."""
    got = log.get("blockHash")
    if not isinstance(got, str) or got.lower() != expected:
        raise ChainDataError(
            f"a log names block {height} {got!r:.70}, the scan fetched {expected}: "
            "the chain changed during the scan",
            cause=log,
        )


def _has_transfer_shape(log: Mapping[str, Any], warnings: Counter[str]) -> bool:
    """Slow path of the first pass: topic0 = Transfer, 3 topics, 32 bytes of data, else a warning."""
    topics = log.get("topics")
    if not isinstance(topics, list) or not topics or not isinstance(topics[0], str):
        warnings[W_TOPIC_FORMAT] += 1
        return False
    if topics[0].lower() != TRANSFER_TOPIC:
        warnings[W_TOPIC0] += 1
        return False
    if len(topics) != 3:
        warnings[W_TOPIC_COUNT] += 1
        return False
    data = log.get("data")
    if not isinstance(data, str) or len(data) != 66:
        warnings[W_DATA] += 1
        return False
    return True


def _is_wanted(topics: list[Any], keys: Mapping[bytes, int]) -> bool:
    try:
        return bytes.fromhex(topics[2][26:]) in keys
    except (TypeError, ValueError):
        return True  # garbage: let the strict decoding see it and count the warning


def _log_position(log: Mapping[str, Any]) -> tuple[str, str, int]:
    """(contract, txid, logIndex) as the node sent them: enough to order and group logs."""
    contract, txid, log_index = log.get("address"), log.get("transactionHash"), log.get("logIndex")
    if not isinstance(contract, str) or not isinstance(txid, str) or not isinstance(log_index, str):
        raise ChainDataError(f"log without address, transactionHash or logIndex: {log!r:.200}", cause=log)
    try:
        return contract.lower(), txid, int(log_index, 16)
    except ValueError:
        message = f"log.logIndex: expected a hex quantity, got {log_index!r:.80}"
        raise ChainDataError(message, cause=log) from None


def _first_pass(
    logs: Iterable[object],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None,
    wanted: Mapping[str, Mapping[bytes, int]] | None,
) -> list[_Pending]:
    """The cheap checks every log gets; in (block, logIndex) order. Written as one loop with the
    common case inline and the rare ones in helpers: it runs for every log of the answer (tens of
    thousands), and each Python call costs about as much as the checks themselves."""
    heights: dict[object, int] = {}
    pending: list[_Pending] = []
    last = (-1, -1)
    in_order = True
    for raw in logs:
        log = expect_dict(raw, "log")
        number = log.get("blockNumber")
        height = heights.get(number) if isinstance(number, str) else None
        if height is None:
            height = heights[number] = _block_height(log, block_hashes)
        if block_hashes is not None and log.get("blockHash") != block_hashes[height]:
            _check_block_hash(log, height, block_hashes[height])
        if log.get("removed") is True:
            raise ChainDataError("a log is flagged removed: the chain changed", cause=raw)
        topics, data = log.get("topics"), log.get("data")
        shaped = type(topics) is list and len(topics) == 3 and topics[0] == TRANSFER_TOPIC
        if not (shaped and type(data) is str and len(data) == 66) and not _has_transfer_shape(log, warnings):
            continue
        contract, txid, log_index = _log_position(log)
        keys = wanted.get(contract) if wanted is not None else None
        decode_it = wanted is None or (keys is not None and _is_wanted(log["topics"], keys))
        in_order = in_order and last < (height, log_index)
        last = (height, log_index)
        pending.append((height, log_index, contract, txid, log, decode_it))
    if not in_order:  # nodes answer in (block, logIndex) order; the ordinals rely on it
        pending.sort(key=lambda entry: entry[:2])
    return pending


def _envelope(log: Mapping[str, Any], what: str) -> _LogEnvelope:
    contract = log.get("address")
    parse_address(contract, f"{what}.address")
    assert isinstance(contract, str)
    return _LogEnvelope(
        contract=contract.lower(),
        block_number=parse_quantity(log.get("blockNumber"), f"{what}.blockNumber"),
        block_hash=parse_hash(log.get("blockHash"), f"{what}.blockHash"),
        txid=parse_hash(log.get("transactionHash"), f"{what}.transactionHash"),
        tx_index=parse_quantity(log.get("transactionIndex"), f"{what}.transactionIndex"),
        log_index=parse_quantity(log.get("logIndex"), f"{what}.logIndex"),
    )


def _address_topic(topic: object) -> bytes | None:
    match = _ADDRESS_TOPIC(topic) if isinstance(topic, str) else None
    return None if match is None else bytes.fromhex(match.group(1))


def _decode_one(log: Mapping[str, Any], ordinal: int, warnings: Counter[str]) -> TransferLog | None:
    """The full, strict decoding of one Transfer-shaped log; None with a warning if its content is bad."""
    env = _envelope(log, "log")
    topics = log["topics"]
    from_key, to_key = _address_topic(topics[1]), _address_topic(topics[2])
    if from_key is None or to_key is None:
        warnings[W_TOPIC_FORMAT] += 1
        return None
    data = log["data"]
    if not _WORD(data):
        warnings[W_DATA] += 1
        return None
    return TransferLog(
        contract=env.contract,
        block_number=env.block_number,
        block_hash=env.block_hash,
        txid=env.txid,
        tx_index=env.tx_index,
        log_index=env.log_index,
        ordinal=ordinal,
        from_key=from_key,
        to_key=to_key,
        amount=int(data, 16),
    )


def decode_transfer_logs(
    logs: Iterable[object],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None = None,
    wanted: Mapping[str, Mapping[bytes, int]] | None = None,
) -> list[TransferLog]:
    """Standard Transfer logs from an eth_getLogs answer, ordered by (block, logIndex), with ordinals.

    Two passes, because an answer can hold tens of thousands of logs and few concern us. Every log gets
    the cheap checks: its block (against `block_hashes`, height -> hash of the blocks the caller fetched,
    when given), its Transfer shape, and its place in the ordinal count. Only the logs `wanted` (contract
    -> watched `to` keys; None: all) are then decoded strictly; one whose content is bad (dirty address
    padding, bad hex) yields nothing and a warning, but still counted in its transaction's ordinals, so
    ordinals never depend on what is watched. A log flagged `removed` is a ChainDataError: eth_getLogs
    must not return them, so the node's view changed under us.
    """
    counters: dict[tuple[str, str], int] = {}  # a plain dict: Counter's __missing__ is slow per new key
    result: list[TransferLog] = []
    for _, _, contract, txid, log, decode_it in _first_pass(logs, warnings, block_hashes, wanted):
        ordinal = counters.get((txid, contract), 0)
        counters[txid, contract] = ordinal + 1
        if decode_it and (decoded := _decode_one(log, ordinal, warnings)) is not None:
            result.append(decoded)
    return result


# ------------------------------------------------------------------------------------------ ABI


def decode_uint256(result: object, what: str) -> int:
    """An eth_call answer holding one uint256 (e.g. decimals()); ChainDataError if it is not one."""
    if not isinstance(result, str) or not _WORD(result):
        raise ChainDataError(f"{what}: expected one 32-byte word, got {result!r:.80}", cause=result)
    return int(result, 16)
