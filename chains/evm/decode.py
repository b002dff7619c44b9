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

from chains.base import BlockRef, ChainDataError, KeyIndex

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


def native_payments(transactions: Iterable[object], keys: KeyIndex, height: int) -> list[NativePayment]:
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


def _block(log: Mapping[str, Any], block_hashes: Mapping[int, str] | None) -> tuple[int, str | None]:
    """Height of the log's block and the hash the caller fetched for it (None: not checked)."""
    height = parse_quantity(log.get("blockNumber"), "log.blockNumber")
    if block_hashes is None:
        return height, None
    if height not in block_hashes:
        raise ChainDataError(f"a log is from block {height}, outside the range asked", cause=log)
    return height, block_hashes[height]


def _check_block_hash(log: Mapping[str, Any], height: int, expected: str) -> None:
    """Rare path: the hash differs from the fetched one, at least in case."""
    got = log.get("blockHash")
    if not isinstance(got, str) or got.lower() != expected:
        raise ChainDataError(
            f"a log names block {height} {got!r:.70}, the scan fetched {expected}: "
            "the chain changed during the scan",
            cause=log,
        )


def _has_transfer_shape(log: Mapping[str, Any], warnings: Counter[str]) -> bool:
    """Rare path: topic0 = Transfer, 3 topics, 32 bytes of data, else a warning."""
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


def _bad_position(log: Mapping[str, Any]) -> ChainDataError:
    """The error for a Transfer-shaped log without a usable address, transactionHash or logIndex."""
    fields = log.get("address"), log.get("transactionHash"), log.get("logIndex")
    if not all(isinstance(field, str) for field in fields):
        return ChainDataError(f"log without address, transactionHash or logIndex: {log!r:.200}", cause=log)
    return ChainDataError(f"log.logIndex: expected a hex quantity, got {fields[2]!r:.80}", cause=log)


def _position(raw: object) -> tuple[int, int]:
    """Sort key of a log: (height, logIndex). A non-object or a bad blockNumber raises, as in the pass.
    A logIndex that does not parse sorts first in its block: the pass raises on it if the log is
    Transfer-shaped, and never reads it otherwise."""
    log = expect_dict(raw, "log")
    height = parse_quantity(log.get("blockNumber"), "log.blockNumber")
    index = log.get("logIndex")
    try:
        return height, int(index, 16) if isinstance(index, str) else -1
    except ValueError:
        return height, -1


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


# No blockNumber of an answer equals it: the first log of an answer starts a block.
_NO_BLOCK = object()


def _decode_in_order(
    logs: list[Any],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None,
    wanted: Mapping[str, KeyIndex] | None,
) -> list[TransferLog] | None:
    """decode_transfer_logs of an answer in (block, logIndex) order; None if the answer is not.

    One loop, written for its cost: it runs for every log of the answer (tens of thousands), of which a
    few hundred concern us, and a Python call costs about as much as the checks themselves. So the
    common case is inline and the rare ones are helpers (a new block, a log that is not a plain Transfer,
    a malformed field, a wanted log); and nothing is kept per log, since tens of thousands of small
    objects alive make every garbage collection walk the whole answer again.

    The order is what makes one pass enough. A block's logs come together, so its height and hash are
    found once per block. A transaction's logs come together (checked: a transaction met again after
    another one is malformed), so its ordinals need only a count per contract for the current
    transaction. Only Transfer-shaped logs are ordered and counted, as before (the others need not even
    carry a logIndex). A position going back means the answer is not sorted: None, and the caller sorts
    it and calls again. Equal positions (a log sent twice) are taken in the answer's order.
    """
    result: list[TransferLog] = []
    block_number: object = _NO_BLOCK  # the current block as its logs name it, its height and fetched hash
    height, block_hash = -1, None
    last_height, last_index = -1, -1  # the position of the last Transfer-shaped log
    txid = ""  # the current transaction (none yet)
    ordinals: dict[str, int] = {}  # its Transfer-shaped logs so far, per contract
    earlier_txids: set[str] = set()  # the transactions before it
    for raw in logs:
        log = raw if type(raw) is dict else expect_dict(raw, "log")
        number = log.get("blockNumber")
        if number != block_number:
            height, block_hash = _block(log, block_hashes)
            block_number = number
        if block_hash is not None and log.get("blockHash") != block_hash:
            _check_block_hash(log, height, block_hash)
        if log.get("removed") is True:
            raise ChainDataError("a log is flagged removed: the chain changed", cause=raw)
        topics: Any = log.get("topics")
        data = log.get("data")
        shaped = type(topics) is list and len(topics) == 3 and topics[0] == TRANSFER_TOPIC
        if not (shaped and type(data) is str and len(data) == 66) and not _has_transfer_shape(log, warnings):
            continue
        contract, log_txid, index = log.get("address"), log.get("transactionHash"), log.get("logIndex")
        if not (isinstance(contract, str) and isinstance(log_txid, str) and isinstance(index, str)):
            raise _bad_position(log)
        try:
            log_index = int(index, 16)
        except ValueError:
            raise _bad_position(log) from None
        if height < last_height or (height == last_height and log_index < last_index):
            return None
        if height == last_height and log_index == last_index:
            # The same log twice would be decoded twice (ordinals 0 and 1): two deposits for one payment.
            raise ChainDataError(f"log {log_index} of block {height} appears twice in the answer", cause=log)
        last_height, last_index = height, log_index
        if log_txid != txid:
            if log_txid in earlier_txids:
                raise ChainDataError(f"the logs of transaction {log_txid:.80} are not contiguous", cause=log)
            earlier_txids.add(txid)
            txid, ordinals = log_txid, {}
        contract = contract.lower()
        ordinal = ordinals.get(contract, 0)
        ordinals[contract] = ordinal + 1
        if wanted is not None:
            keys = wanted.get(contract)
            if keys is None:
                continue
            try:
                if bytes.fromhex(topics[2][26:]) not in keys:
                    continue
            except (TypeError, ValueError):
                pass  # garbage: let the strict decoding see it and count the warning
        if (decoded := _decode_one(log, ordinal, warnings)) is not None:
            result.append(decoded)
    return result


def decode_transfer_logs(
    logs: Iterable[object],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None = None,
    wanted: Mapping[str, KeyIndex] | None = None,
) -> list[TransferLog]:
    """Standard Transfer logs from an eth_getLogs answer, ordered by (block, logIndex), with ordinals.

    Every log gets the cheap checks: its block (against `block_hashes`, height -> hash of the blocks the
    caller fetched, when given), its Transfer shape, and its place in the ordinal count. Only the logs
    `wanted` (contract -> watched `to` keys; None: all) are decoded strictly; one whose content is bad
    (dirty address padding, bad hex) yields nothing and a warning, but still counts in its transaction's
    ordinals, so ordinals never depend on what is watched. A log flagged `removed` is a ChainDataError:
    eth_getLogs must not return them, so the node's view changed under us. So is a transaction whose
    Transfer logs are not contiguous in (block, logIndex) order: no consistent chain has one.

    Nodes answer in (block, logIndex) order: one pass. Any other answer is sorted by (block, logIndex)
    first, then gets the same pass. `warnings` is added to only when the answer decodes; a ChainDataError
    leaves it as it was.
    """
    answer = logs if isinstance(logs, list) else list(logs)
    counted: Counter[str] = Counter()
    found = _decode_in_order(answer, counted, block_hashes, wanted)
    if found is None:
        counted.clear()
        found = _decode_in_order(sorted(answer, key=_position), counted, block_hashes, wanted)
        assert found is not None, "a sorted answer is in order"
    warnings.update(counted)
    return found


# ------------------------------------------------------------------------------------------ ABI


def decode_uint256(result: object, what: str) -> int:
    """An eth_call answer holding one uint256 (e.g. decimals()); ChainDataError if it is not one."""
    if not isinstance(result, str) or not _WORD(result):
        raise ChainDataError(f"{what}: expected one 32-byte word, got {result!r:.80}", cause=result)
    return int(result, 16)
