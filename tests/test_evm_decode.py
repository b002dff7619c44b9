"""Pure EVM decoding (chains.evm.decode): table-driven, no node, no event loop."""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chains.base import BlockRef, ChainDataError
from chains.evm import decode
from chains.evm.decode import TRANSFER_TOPIC

CONTRACT = "0x" + "c0" * 20
OTHER_CONTRACT = "0x" + "d0" * 20
FROM = bytes.fromhex("aa" * 20)
TO = bytes.fromhex("bb" * 20)
TXID = "0x" + "11" * 32
BLOCK_HASH = "0x" + "b1" * 32


def topic(address: bytes) -> str:
    return "0x" + "00" * 12 + address.hex()


def word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def make_log(**overrides: Any) -> dict[str, Any]:
    log: dict[str, Any] = {
        "address": CONTRACT,
        "topics": [TRANSFER_TOPIC, topic(FROM), topic(TO)],
        "data": word(1_000_000),
        "blockNumber": "0x10",
        "blockHash": BLOCK_HASH,
        "transactionHash": TXID,
        "transactionIndex": "0x2",
        "logIndex": "0x5",
        "removed": False,
    }
    log.update(overrides)
    return log


def test_transfer_topic_is_the_erc20_event_hash() -> None:
    assert TRANSFER_TOPIC == "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


# ------------------------------------------------------------------------------------ quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x0", 0), ("0x1a", 26), ("0xFF", 255), ("0x00ff", 255), ("0x" + "f" * 64, 2**256 - 1)],
)
def test_parse_quantity_good(text: str, value: int) -> None:
    assert decode.parse_quantity(text, "q") == value


@pytest.mark.parametrize(
    "garbage",
    ["", "0x", "1a", "0X1a", "0x1_0", " 0x1", "0x1 ", "0xg", "0x" + "1" * 65, 26, None, 1.5, ["0x1"]],
)
def test_parse_quantity_garbage_raises(garbage: object) -> None:
    with pytest.raises(ChainDataError, match=r"block\.number"):
        decode.parse_quantity(garbage, "block.number")


@pytest.mark.parametrize("garbage", ["0x" + "1" * 63, "0x" + "1" * 65, "11" * 33, "0x" + "zz" * 32, None])
def test_parse_hash_garbage_raises(garbage: object) -> None:
    with pytest.raises(ChainDataError):
        decode.parse_hash(garbage, "hash")


def test_parse_hash_lower_cases() -> None:
    assert decode.parse_hash("0x" + "AB" * 32, "hash") == "0x" + "ab" * 32


@pytest.mark.parametrize(
    ("result", "expected"), [(word(6), 6), (word(18), 18), ("0x", None), ("0x06", None), (None, None)]
)
def test_decode_uint256(result: object, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ChainDataError):
            decode.decode_uint256(result, "decimals()")
    else:
        assert decode.decode_uint256(result, "decimals()") == expected


# ---------------------------------------------------------------------------------------- blocks


def header(height: int, block_hash: str, parent: str) -> dict[str, Any]:
    return {"number": hex(height), "hash": block_hash, "parentHash": parent, "transactions": []}


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def test_block_ref_from_header() -> None:
    assert decode.block_ref(header(7, h(7), h(6)), 7) == BlockRef(7, h(7), h(6))


@pytest.mark.parametrize(
    ("block", "expected_height"),
    [
        (header(7, h(7), h(6)), 8),  # the node answered for another height
        ({"number": "0x7", "parentHash": h(6)}, None),  # no hash
        ({"number": "7", "hash": h(7), "parentHash": h(6)}, None),  # decimal number
        (None, None),
        ([], None),
    ],
)
def test_block_ref_bad_header_raises(block: object, expected_height: int | None) -> None:
    with pytest.raises(ChainDataError):
        decode.block_ref(block, expected_height)


def test_check_chained_accepts_a_chain() -> None:
    decode.check_chained([BlockRef(1, h(1), h(0)), BlockRef(2, h(2), h(1)), BlockRef(3, h(3), h(2))])


@pytest.mark.parametrize(
    "refs",
    [
        [BlockRef(1, h(1), h(0)), BlockRef(2, h(2), h(99))],  # parent is not the previous block
        [BlockRef(1, h(1), h(0)), BlockRef(3, h(3), h(1))],  # a gap in heights
    ],
)
def test_check_chained_rejects_a_break(refs: list[BlockRef]) -> None:
    with pytest.raises(ChainDataError, match="chain changed"):
        decode.check_chained(refs)


# ----------------------------------------------------------------------------------- Transfer logs


def decode_one(log: object) -> tuple[list[decode.TransferLog], Counter[str]]:
    warnings: Counter[str] = Counter()
    return decode.decode_transfer_logs([log], warnings), warnings


def test_good_log_decodes() -> None:
    (entry,), warnings = decode_one(make_log())
    assert not warnings
    assert entry == decode.TransferLog(
        contract=CONTRACT,
        block_number=16,
        block_hash=BLOCK_HASH,
        txid=TXID,
        tx_index=2,
        log_index=5,
        ordinal=0,
        from_key=FROM,
        to_key=TO,
        amount=1_000_000,
    )


@pytest.mark.parametrize(
    ("overrides", "amount"),
    [
        ({"data": word(0)}, 0),  # decoded; the adapter skips zero amounts, the ordinal still counts it
        ({"data": word(2**256 - 1)}, 2**256 - 1),
        ({"address": CONTRACT.upper().replace("0X", "0x")}, 1_000_000),  # contract is lower-cased
        ({"topics": [TRANSFER_TOPIC.upper().replace("0X", "0x"), topic(FROM), topic(TO)]}, 1_000_000),
    ],
)
def test_standard_variants_decode(overrides: dict[str, Any], amount: int) -> None:
    (entry,), warnings = decode_one(make_log(**overrides))
    assert not warnings
    assert (entry.amount, entry.contract, entry.to_key) == (amount, CONTRACT, TO)


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [
        ({"topics": [TRANSFER_TOPIC, topic(FROM)]}, decode.W_TOPIC_COUNT),
        ({"topics": [TRANSFER_TOPIC, topic(FROM), topic(TO), word(7)]}, decode.W_TOPIC_COUNT),  # ERC-721
        ({"topics": ["0x" + "ab" * 32, topic(FROM), topic(TO)]}, decode.W_TOPIC0),
        ({"topics": []}, decode.W_TOPIC_FORMAT),
        ({"topics": "nope"}, decode.W_TOPIC_FORMAT),
        ({"topics": [TRANSFER_TOPIC, "0x" + "ff" * 12 + FROM.hex(), topic(TO)]}, decode.W_TOPIC_FORMAT),
        ({"topics": [TRANSFER_TOPIC, topic(FROM), "0x" + "00" * 12 + "zz" * 20]}, decode.W_TOPIC_FORMAT),
        ({"topics": [TRANSFER_TOPIC, topic(FROM), 42]}, decode.W_TOPIC_FORMAT),
        ({"data": "0x" + "00" * 31}, decode.W_DATA),  # short data
        ({"data": word(1) + "00" * 32}, decode.W_DATA),  # two words
        ({"data": "0x"}, decode.W_DATA),
        ({"data": "0x" + "zz" * 32}, decode.W_DATA),  # bad hex
        ({"data": None}, decode.W_DATA),
    ],
)
def test_non_standard_log_yields_nothing_and_a_warning(overrides: dict[str, Any], warning: str) -> None:
    entries, warnings = decode_one(make_log(**overrides))
    assert entries == []
    assert warnings == Counter({warning: 1})


@pytest.mark.parametrize(
    "log",
    [
        make_log(blockNumber="0xzz"),
        make_log(blockNumber=None),
        make_log(blockHash="0x1234"),
        make_log(transactionHash=None),
        make_log(logIndex="5"),
        make_log(transactionIndex="0x"),
        make_log(address="0x1234"),
        make_log(removed=True),  # eth_getLogs must not return removed logs: the node's view changed
        "not a log",
        None,
    ],
)
def test_node_garbage_in_log_envelope_raises(log: object) -> None:
    with pytest.raises(ChainDataError):
        decode_one(log)


def test_log_from_another_block_than_fetched_raises() -> None:
    with pytest.raises(ChainDataError, match="chain changed"):
        decode.decode_transfer_logs([make_log()], Counter(), {16: "0x" + "99" * 32})
    with pytest.raises(ChainDataError, match="outside the range"):
        decode.decode_transfer_logs([make_log()], Counter(), {17: BLOCK_HASH})
    assert len(decode.decode_transfer_logs([make_log()], Counter(), {16: BLOCK_HASH})) == 1


def test_ordinals_count_per_transaction_and_contract_in_log_order() -> None:
    other_tx = "0x" + "22" * 32
    logs = [  # deliberately out of order: ordinals follow logIndex, not the answer's order
        make_log(logIndex="0x3", data=word(3)),
        make_log(logIndex="0x1", data=word(1)),
        make_log(logIndex="0x2", address=OTHER_CONTRACT, data=word(2)),
        make_log(logIndex="0x4", topics=[TRANSFER_TOPIC, topic(FROM)]),  # non-standard: not counted
        make_log(logIndex="0x5", data=word(5)),
        make_log(logIndex="0x6", transactionHash=other_tx, data=word(6)),
    ]
    warnings: Counter[str] = Counter()
    entries = decode.decode_transfer_logs(logs, warnings)
    assert [(e.amount, e.contract, e.ordinal) for e in entries] == [
        (1, CONTRACT, 0),
        (2, OTHER_CONTRACT, 0),
        (3, CONTRACT, 1),
        (5, CONTRACT, 2),
        (6, CONTRACT, 0),  # another transaction starts again at 0
    ]
    assert warnings == Counter({decode.W_TOPIC_COUNT: 1})


def test_ordinal_is_stable_when_the_transaction_moves() -> None:
    """Mined again in another block, a tx's logs get other logIndexes; its ordinals stay the same."""
    first = [make_log(logIndex=hex(i), data=word(i)) for i in (1, 2)]
    moved = [make_log(logIndex=hex(40 + i), blockNumber="0x20", data=word(i)) for i in (1, 2)]
    ordinals = [[e.ordinal for e in decode.decode_transfer_logs(logs, Counter())] for logs in (first, moved)]
    assert ordinals == [[0, 1], [0, 1]]


addresses = st.binary(min_size=20, max_size=20)


@given(sender=addresses, receiver=addresses, amount=st.integers(min_value=0, max_value=2**256 - 1))
def test_any_standard_transfer_round_trips(sender: bytes, receiver: bytes, amount: int) -> None:
    log = make_log(topics=[TRANSFER_TOPIC, topic(sender), topic(receiver)], data=word(amount))
    (entry,) = decode.decode_transfer_logs([log], Counter())
    assert (entry.from_key, entry.to_key, entry.amount) == (sender, receiver, amount)


# --------------------------------------------------------------------------------- native payments


def tx(to: str | None, value: int, index: int = 0) -> dict[str, Any]:
    return {
        "hash": "0x" + f"{index + 1:064x}",
        "transactionIndex": hex(index),
        "from": "0x" + FROM.hex(),
        "nonce": hex(9 + index),
        "to": to,
        "value": hex(value),
    }


WATCHED = {TO: 42}


@pytest.mark.parametrize(
    ("transaction", "found"),
    [
        (tx("0x" + TO.hex(), 5), [(42, 5)]),
        (tx("0x" + TO.hex().upper(), 5), [(42, 5)]),  # matched on bytes, whatever the case
        (tx("0x" + TO.hex(), 0), []),  # zero value: no payment
        (tx("0x" + "cc" * 20, 5), []),  # not watched
        (tx(None, 5), []),  # contract creation
    ],
)
def test_native_payments(transaction: dict[str, Any], found: list[tuple[int, int]]) -> None:
    payments = decode.native_payments([transaction], WATCHED, 1)
    assert [(p.watch_id, p.amount) for p in payments] == found
    for payment in payments:
        assert payment.tx == decode.TxInfo(txid=transaction["hash"], tx_index=0, sender=FROM, nonce=9)
        assert payment.to_key == TO


@pytest.mark.parametrize(
    "transaction",
    [
        {**tx("0x" + TO.hex(), 5), "value": "5"},
        {**tx("0x" + TO.hex(), 5), "to": "0x1234"},
        {**tx("0x" + TO.hex(), 5), "nonce": None},
        "0x" + "11" * 32,  # a hash where a full transaction was expected
    ],
)
def test_native_payments_garbage_raises(transaction: object) -> None:
    with pytest.raises(ChainDataError):
        decode.native_payments([transaction], WATCHED, 1)


@pytest.mark.parametrize(
    ("receipt", "succeeded"),
    [
        ({"status": "0x1", "blockHash": BLOCK_HASH}, True),
        ({"status": "0x0", "blockHash": BLOCK_HASH}, False),  # reverted: credits nothing
        ({"status": "0x1", "blockHash": "0x" + "99" * 32}, None),  # mined elsewhere meanwhile
        (None, None),  # gone meanwhile
        ({"blockHash": BLOCK_HASH}, None),  # pre-Byzantium receipt without status
    ],
)
def test_receipt_succeeded(receipt: object, succeeded: bool | None) -> None:
    if succeeded is None:
        with pytest.raises(ChainDataError):
            decode.receipt_succeeded(receipt, TXID, BLOCK_HASH)
    else:
        assert decode.receipt_succeeded(receipt, TXID, BLOCK_HASH) is succeeded


def test_only_wanted_logs_are_decoded_and_ordinals_do_not_depend_on_it() -> None:
    other = bytes.fromhex("cc" * 20)
    logs = [
        make_log(logIndex="0x1", topics=[TRANSFER_TOPIC, topic(FROM), topic(other)]),
        make_log(logIndex="0x2", data="0x" + "zz" * 32),  # bad content, to a watched key
        make_log(logIndex="0x3", data=word(3)),
        make_log(logIndex="0x4", address=OTHER_CONTRACT, data=word(4)),  # contract not wanted
    ]
    warnings: Counter[str] = Counter()
    wanted = {CONTRACT: {TO: 1}}
    entries = decode.decode_transfer_logs(logs, warnings, {16: BLOCK_HASH}, wanted)
    assert [(e.amount, e.ordinal) for e in entries] == [(3, 2)]
    assert warnings == Counter({decode.W_DATA: 1})
    everything = decode.decode_transfer_logs(logs, Counter())
    assert [(e.amount, e.ordinal) for e in everything if e.to_key == TO] == [(3, 2), (4, 0)]


def test_block_hash_is_checked_on_every_log_even_unwanted() -> None:
    log = make_log(blockHash="0x" + "99" * 32, topics=[TRANSFER_TOPIC, topic(FROM), topic(FROM)])
    with pytest.raises(ChainDataError, match="chain changed"):
        decode.decode_transfer_logs([log], Counter(), {16: BLOCK_HASH}, {CONTRACT: {TO: 1}})
    non_standard = make_log(blockHash="0x" + "99" * 32, topics=[TRANSFER_TOPIC])
    with pytest.raises(ChainDataError, match="chain changed"):
        decode.decode_transfer_logs([non_standard], Counter(), {16: BLOCK_HASH}, {CONTRACT: {TO: 1}})


# ------------------------------------------------------------ Transfer logs against the old decoder
#
# `_reference_decode` is decode_transfer_logs before the single pass (as of 46ffa19), copied verbatim
# with its helpers (names prefixed `_ref`): a first pass over all logs keeping a tuple per
# Transfer-shaped log, sorted if the answer was not in (block, logIndex) order, then a second pass
# counting ordinals per (txid, contract) over the whole answer and decoding the wanted logs. The single
# pass must agree with it on every answer: the same entries, the same warnings, the same error class.
# One difference is deliberate: a transaction whose Transfer logs are not contiguous in (block,
# logIndex) order (the old code counted its ordinals across the gap) is a ChainDataError.

_REF_WORD = re.compile(r"0x[0-9a-fA-F]{64}").fullmatch
_REF_ADDRESS_TOPIC = re.compile(r"0x0{24}([0-9a-fA-F]{40})").fullmatch


@dataclass(frozen=True, slots=True)
class _ref_LogEnvelope:
    """The node-produced fields of a log; malformed ones are the node's fault (ChainDataError)."""

    contract: str
    block_number: int
    block_hash: str
    txid: str
    tx_index: int
    log_index: int


# A log waiting for its ordinal: (block number, log index, contract, txid as sent, log, decode it?).
_ref_Pending = tuple[int, int, str, str, Mapping[str, Any], bool]


def _ref_block_height(log: Mapping[str, Any], block_hashes: Mapping[int, str] | None) -> int:
    """Slow path of the first pass: a block number not seen yet in this answer."""
    height = decode.parse_quantity(log.get("blockNumber"), "log.blockNumber")
    if block_hashes is not None and height not in block_hashes:
        raise ChainDataError(f"a log is from block {height}, outside the range asked", cause=log)
    return height


def _ref_check_block_hash(log: Mapping[str, Any], height: int, expected: str) -> None:
    """Slow path of the first pass: the hash differs from the fetched one, at least in case."""
    got = log.get("blockHash")
    if not isinstance(got, str) or got.lower() != expected:
        raise ChainDataError(
            f"a log names block {height} {got!r:.70}, the scan fetched {expected}: "
            "the chain changed during the scan",
            cause=log,
        )


def _ref_has_transfer_shape(log: Mapping[str, Any], warnings: Counter[str]) -> bool:
    """Slow path of the first pass: topic0 = Transfer, 3 topics, 32 bytes of data, else a warning."""
    topics = log.get("topics")
    if not isinstance(topics, list) or not topics or not isinstance(topics[0], str):
        warnings[decode.W_TOPIC_FORMAT] += 1
        return False
    if topics[0].lower() != decode.TRANSFER_TOPIC:
        warnings[decode.W_TOPIC0] += 1
        return False
    if len(topics) != 3:
        warnings[decode.W_TOPIC_COUNT] += 1
        return False
    data = log.get("data")
    if not isinstance(data, str) or len(data) != 66:
        warnings[decode.W_DATA] += 1
        return False
    return True


def _ref_is_wanted(topics: list[Any], keys: Mapping[bytes, int]) -> bool:
    try:
        return bytes.fromhex(topics[2][26:]) in keys
    except (TypeError, ValueError):
        return True  # garbage: let the strict decoding see it and count the warning


def _ref_log_position(log: Mapping[str, Any]) -> tuple[str, str, int]:
    """(contract, txid, logIndex) as the node sent them: enough to order and group logs."""
    contract, txid, log_index = log.get("address"), log.get("transactionHash"), log.get("logIndex")
    if not isinstance(contract, str) or not isinstance(txid, str) or not isinstance(log_index, str):
        raise ChainDataError(f"log without address, transactionHash or logIndex: {log!r:.200}", cause=log)
    try:
        return contract.lower(), txid, int(log_index, 16)
    except ValueError:
        message = f"log.logIndex: expected a hex quantity, got {log_index!r:.80}"
        raise ChainDataError(message, cause=log) from None


def _ref_first_pass(
    logs: Iterable[object],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None,
    wanted: Mapping[str, Mapping[bytes, int]] | None,
) -> list[_ref_Pending]:
    """The cheap checks every log gets; in (block, logIndex) order. Written as one loop with the
    common case inline and the rare ones in helpers: it runs for every log of the answer (tens of
    thousands), and each Python call costs about as much as the checks themselves."""
    heights: dict[object, int] = {}
    pending: list[_ref_Pending] = []
    last = (-1, -1)
    in_order = True
    for raw in logs:
        log = decode.expect_dict(raw, "log")
        number = log.get("blockNumber")
        height = heights.get(number) if isinstance(number, str) else None
        if height is None:
            height = heights[number] = _ref_block_height(log, block_hashes)
        if block_hashes is not None and log.get("blockHash") != block_hashes[height]:
            _ref_check_block_hash(log, height, block_hashes[height])
        if log.get("removed") is True:
            raise ChainDataError("a log is flagged removed: the chain changed", cause=raw)
        topics, data = log.get("topics"), log.get("data")
        shaped = type(topics) is list and len(topics) == 3 and topics[0] == decode.TRANSFER_TOPIC
        if not (shaped and type(data) is str and len(data) == 66) and not _ref_has_transfer_shape(
            log, warnings
        ):
            continue
        contract, txid, log_index = _ref_log_position(log)
        keys = wanted.get(contract) if wanted is not None else None
        decode_it = wanted is None or (keys is not None and _ref_is_wanted(log["topics"], keys))
        in_order = in_order and last < (height, log_index)
        last = (height, log_index)
        pending.append((height, log_index, contract, txid, log, decode_it))
    if not in_order:  # nodes answer in (block, logIndex) order; the ordinals rely on it
        pending.sort(key=lambda entry: entry[:2])
    return pending


def _ref_envelope(log: Mapping[str, Any], what: str) -> _ref_LogEnvelope:
    contract = log.get("address")
    decode.parse_address(contract, f"{what}.address")
    assert isinstance(contract, str)
    return _ref_LogEnvelope(
        contract=contract.lower(),
        block_number=decode.parse_quantity(log.get("blockNumber"), f"{what}.blockNumber"),
        block_hash=decode.parse_hash(log.get("blockHash"), f"{what}.blockHash"),
        txid=decode.parse_hash(log.get("transactionHash"), f"{what}.transactionHash"),
        tx_index=decode.parse_quantity(log.get("transactionIndex"), f"{what}.transactionIndex"),
        log_index=decode.parse_quantity(log.get("logIndex"), f"{what}.logIndex"),
    )


def _ref_address_topic(topic: object) -> bytes | None:
    match = _REF_ADDRESS_TOPIC(topic) if isinstance(topic, str) else None
    return None if match is None else bytes.fromhex(match.group(1))


def _ref_decode_one(
    log: Mapping[str, Any], ordinal: int, warnings: Counter[str]
) -> decode.TransferLog | None:
    """The full, strict decoding of one Transfer-shaped log; None with a warning if its content is bad."""
    env = _ref_envelope(log, "log")
    topics = log["topics"]
    from_key, to_key = _ref_address_topic(topics[1]), _ref_address_topic(topics[2])
    if from_key is None or to_key is None:
        warnings[decode.W_TOPIC_FORMAT] += 1
        return None
    data = log["data"]
    if not _REF_WORD(data):
        warnings[decode.W_DATA] += 1
        return None
    return decode.TransferLog(
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


def _reference_decode(
    logs: Iterable[object],
    warnings: Counter[str],
    block_hashes: Mapping[int, str] | None = None,
    wanted: Mapping[str, Mapping[bytes, int]] | None = None,
) -> list[decode.TransferLog]:
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
    result: list[decode.TransferLog] = []
    for _, _, contract, txid, log, decode_it in _ref_first_pass(logs, warnings, block_hashes, wanted):
        ordinal = counters.get((txid, contract), 0)
        counters[txid, contract] = ordinal + 1
        if decode_it and (decoded := _ref_decode_one(log, ordinal, warnings)) is not None:
            result.append(decoded)
    return result


Outcome = tuple[object, Counter[str] | None]  # (entries, warnings) or (error class, None)


def reference_outcome(logs: Any, block_hashes: Any, wanted: Any) -> Outcome:
    """What decode_transfer_logs must give: the old decoder's answer, or the class of its error."""
    warnings: Counter[str] = Counter()
    try:
        entries = _reference_decode(logs, warnings, block_hashes, wanted)
    except Exception as exc:
        return type(exc), None
    pending = _ref_first_pass(logs, Counter(), block_hashes, wanted)  # Transfer logs, sorted
    runs = [txid for txid, _ in itertools.groupby(entry[3] for entry in pending)]
    if len(runs) != len(set(runs)):  # a transaction's logs apart: a deliberate difference
        return ChainDataError, None
    positions = [(entry[0], entry[1]) for entry in pending]
    if len(positions) != len(set(positions)):  # a log answered twice: the other deliberate difference
        return ChainDataError, None
    return entries, warnings


def new_outcome(logs: Any, block_hashes: Any, wanted: Any) -> Outcome:
    earlier = Counter({"earlier": 1})  # counts are added; an error leaves them alone
    warnings = Counter(earlier)
    try:
        entries = decode.decode_transfer_logs(logs, warnings, block_hashes, wanted)
    except Exception as exc:
        assert warnings == earlier
        return type(exc), None
    return entries, warnings - earlier


def assert_same_as_reference(logs: Any, block_hashes: Any = None, wanted: Any = None) -> Outcome:
    snapshot = copy.deepcopy(logs)
    expected = reference_outcome(copy.deepcopy(logs), block_hashes, wanted)
    got = new_outcome(iter(logs) if isinstance(logs, tuple) else logs, block_hashes, wanted)
    assert got == expected
    assert logs == snapshot  # the answer is not modified
    return got


HEIGHTS = (0x1A, 0x1B, 0x1C)  # hashes with letters, so that case matters
OTHER = bytes.fromhex("cc" * 20)
UPPER_CONTRACT = "0x" + CONTRACT[2:].upper()


def block_hash(height: int) -> str:
    return "0x" + f"{height:02x}" * 32


def txid(number: int) -> str:
    return "0x" + f"{number:02x}" * 32


def transfer(height: int, index: int, tx: str, **overrides: Any) -> dict[str, Any]:
    """A standard Transfer log of CONTRACT from FROM to TO, in block `height` at `index`."""
    log = make_log(
        blockNumber=hex(height), blockHash=block_hash(height), logIndex=hex(index), transactionHash=tx
    )
    log["data"] = word(height * 100 + index)  # each log its amount, to tell them apart
    log.update(overrides)
    return log


H1, H2, H3 = HEIGHTS
ALL_BLOCKS = {height: block_hash(height) for height in HEIGHTS}
TO_OTHER = [TRANSFER_TOPIC, topic(FROM), topic(OTHER)]
ERC721 = [TRANSFER_TOPIC, topic(FROM), topic(TO), word(7)]
A, B, C = txid(0xA1), txid(0xB2), txid(0xC3)
WANTED = {CONTRACT: {TO: 1}}


def case(name: str, logs: Any, block_hashes: Any = ALL_BLOCKS, wanted: Any = None) -> Any:
    return pytest.param(logs, block_hashes, wanted, id=name)


t = transfer
HAND_MADE = [
    case("empty", []),
    case("in-order", [t(H1, 0, A), t(H1, 1, A), t(H2, 0, B)], wanted=WANTED),
    case("reversed", [t(H2, 0, B), t(H1, 1, A), t(H1, 0, A)], wanted=WANTED),
    case("two-contracts", [t(H1, 3, A), t(H1, 1, A), t(H1, 2, A, address=OTHER_CONTRACT), t(H1, 5, A)]),
    case("unwatched-between", [t(H1, 0, A), t(H1, 1, A, topics=TO_OTHER), t(H1, 2, A)], wanted=WANTED),
    case("duplicate-in-order", [t(H1, 0, A), t(H1, 0, A), t(H1, 1, A)]),
    case("duplicate-shuffled", [t(H1, 1, A), t(H1, 0, A), t(H1, 1, A)]),
    case("removed-after-disorder", [t(H1, 1, A), t(H1, 0, A, removed=True)]),
    case("junk-after-disorder", [t(H1, 1, A), t(H1, 0, A), "not a log"]),
    case("junk-first", [None, t(H1, 0, A)], None),
    case(
        "bad-index-of-a-non-transfer", [t(H1, 1, A), t(H1, 0, A), t(H1, 2, A, topics=ERC721, logIndex="zz")]
    ),
    case("no-index-of-a-non-transfer", [t(H1, 1, A), t(H1, 0, A), t(H1, 2, A, topics=ERC721, logIndex=None)]),
    case("bad-index-shuffled", [t(H1, 1, A), t(H1, 0, A, logIndex="zz")]),
    case("no-index-shuffled", [t(H1, 1, A), t(H1, 0, A, logIndex=None)]),
    case("lenient-index-decoded", [t(H1, 0, A, logIndex="0x1_0"), t(H1, 3, A, logIndex=" 0x3")], None),
    case("lenient-index-unwanted", [t(H1, 0, A, logIndex="0x1_0"), t(H1, 3, A, logIndex=" 0x3")], None, {}),
    case("one-block-two-spellings", [t(H1, 2, A), t(H1, 1, A, blockNumber="0x01a"), t(H1, 0, A)]),
    case("block-out-of-range", [t(H1, 0, A), t(H3, 0, C, blockNumber="0x99")]),
    case("bad-block-shuffled", [t(H2, 0, B), t(H1, 0, A, blockNumber="0xzz")]),
    case("hash-case", [t(H1, 0, A, blockHash="0x" + block_hash(H1)[2:].upper())]),
    case("hash-of-another-block", [t(H2, 0, B), t(H1, 0, A, blockHash=block_hash(H2))]),
    case("hash-unchecked", [t(H1, 0, A, blockHash=block_hash(H2))], None),
    case("non-transfer-out-of-order", [t(H2, 0, B, topics=ERC721), t(H1, 0, A), t(H2, 1, B)], wanted=WANTED),
    case("txid-apart", [t(H1, 0, A), t(H1, 1, B), t(H1, 2, A)]),
    case("txid-apart-by-a-non-transfer", [t(H1, 0, A), t(H1, 1, B), t(H1, 2, A, topics=ERC721)]),
    case("txid-in-two-blocks", [t(H1, 0, A), t(H2, 0, A)]),
    case("txid-case-apart", [t(H1, 0, A), t(H1, 1, A, transactionHash="0x" + A[2:].upper()), t(H1, 2, A)]),
    case("two-txs-one-position", [t(H1, 5, A), t(H1, 5, B)]),
    case(
        "garbage-content-wanted",
        [t(H1, 0, A, topics=[TRANSFER_TOPIC, topic(FROM), 42]), t(H1, 1, A, data="0x" + "zz" * 32)],
        wanted=WANTED,
    ),
    case("contract-case", [t(H1, 0, A, address=UPPER_CONTRACT), t(H1, 1, A)], wanted=WANTED),
    case("bad-contract-decoded", [t(H1, 0, A, address="0x1234")], None),
    case("bad-contract-unwanted", [t(H1, 0, A, address="0x1234")], None, WANTED),
    case("an-iterable", (t(H1, 1, A), t(H1, 0, A)), None),
]


@pytest.mark.parametrize(("logs", "block_hashes", "wanted"), HAND_MADE)
def test_hand_made_answers_decode_as_before(logs: Any, block_hashes: Any, wanted: Any) -> None:
    assert_same_as_reference(logs, block_hashes, wanted)


def test_an_answer_out_of_order_decodes_as_if_sorted() -> None:
    logs = [transfer(H1, i, A) for i in range(5)] + [transfer(H2, i, B) for i in range(3)]
    in_order = decode.decode_transfer_logs(logs, Counter())
    assert [(e.block_number, e.log_index, e.ordinal) for e in in_order][:3] == [
        (H1, 0, 0),
        (H1, 1, 1),
        (H1, 2, 2),
    ]
    for seed in range(20):
        shuffled = random.Random(seed).sample(logs, len(logs))
        assert decode.decode_transfer_logs(shuffled, Counter()) == in_order


@pytest.mark.parametrize(
    "order",
    [[(0, A), (1, B), (2, A)], [(2, A), (0, A), (1, B)], [(0, A), (1, B), (3, A)]],
)
def test_a_transaction_with_logs_apart_raises(order: list[tuple[int, str]]) -> None:
    """The old decoder counted ordinals across the gap; no consistent chain has such an answer."""
    logs = [transfer(H1, index, tx) for index, tx in order]
    assert reference_outcome(logs, None, None)[0] == ChainDataError
    with pytest.raises(ChainDataError, match=f"transaction {A} are not contiguous"):
        decode.decode_transfer_logs(logs, Counter())


# Changes to a log's fields: mostly ones that only cost a warning or change what is decoded, a few
# that are the node's fault (ChainDataError). DELETE removes the field.
DELETE = object()
CHANGES: list[tuple[str, Any]] = [
    ("topics", [TRANSFER_TOPIC, topic(FROM)]),
    ("topics", ERC721),
    ("topics", ["0x" + "ab" * 32, topic(FROM), topic(TO)]),
    ("topics", [TRANSFER_TOPIC.upper().replace("0X", "0x"), topic(FROM), topic(TO)]),
    ("topics", []),
    ("topics", "nope"),
    ("topics", [42, topic(FROM), topic(TO)]),
    ("topics", [TRANSFER_TOPIC, topic(FROM), "0x" + "ff" * 12 + TO.hex()]),
    ("topics", [TRANSFER_TOPIC, topic(FROM), "0x" + "00" * 12 + "zz" * 20]),
    ("topics", [TRANSFER_TOPIC, topic(FROM), 42]),
    ("topics", [TRANSFER_TOPIC, "0x" + "ff" * 32, topic(TO)]),
    ("data", "0x" + "00" * 31),
    ("data", "0x" + "zz" * 32),
    ("data", None),
    ("data", word(0)),
    ("address", UPPER_CONTRACT),
    ("address", "0x1234"),
    ("address", None),
    ("blockHash", "0x" + "99" * 32),
    ("blockHash", None),
    ("blockNumber", "0x99"),
    ("blockNumber", "0xzz"),
    ("blockNumber", DELETE),
    ("transactionHash", A.upper().replace("0X", "0x")),
    ("transactionHash", "0x1234"),
    ("transactionHash", None),
    ("transactionIndex", "0x"),
    ("logIndex", "5"),
    ("logIndex", "0x1_0"),
    ("logIndex", "zz"),
    ("logIndex", None),
    ("logIndex", 5),
    ("removed", True),
    ("removed", DELETE),
    ("extra", "ignored"),
]


LOG_SPECS = st.tuples(  # contract, recipient, changes (made to one log in four)
    st.sampled_from([CONTRACT, CONTRACT, OTHER_CONTRACT]),
    st.sampled_from([TO, TO, OTHER, FROM]),
    st.integers(0, 3).flatmap(
        lambda n: st.lists(st.sampled_from(CHANGES), min_size=1, max_size=2) if n == 3 else st.just([])
    ),
)
TX_SPECS = st.tuples(  # height, an earlier transaction whose txid it reuses (mostly none), its logs
    st.sampled_from(HEIGHTS),
    st.none() | st.none() | st.integers(0, 3),
    st.lists(LOG_SPECS, min_size=1, max_size=4),
)


@st.composite
def answers(draw: st.DrawFn) -> list[Any] | tuple[Any, ...]:
    """An eth_getLogs answer: transactions of Transfer logs in blocks HEIGHTS, in chain order, then
    perhaps changed (fields, a txid reused, order, duplicates, a junk entry, a tuple for a list)."""
    logs: list[Any] = []
    txids: list[str] = []
    next_index: Counter[int] = Counter()
    for number, (height, reuse, log_specs) in enumerate(
        sorted(draw(st.lists(TX_SPECS, min_size=1, max_size=6)), key=lambda spec: spec[0])
    ):
        tx = txids[reuse] if reuse is not None and reuse < len(txids) else txid(number + 1)
        txids.append(tx)
        for contract, recipient, changes in log_specs:
            log = transfer(height, next_index[height], tx, address=contract, transactionIndex=hex(number))
            log["topics"] = [TRANSFER_TOPIC, topic(FROM), topic(recipient)]
            next_index[height] += 1
            for name, value in changes:
                if value is DELETE:
                    log.pop(name, None)
                else:
                    log[name] = copy.deepcopy(value)
            logs.append(log)
    if draw(st.booleans()):
        logs = draw(st.permutations(logs))
    for _ in range(draw(st.integers(0, 2))):
        if logs:
            copied = copy.deepcopy(draw(st.sampled_from(logs)))
            logs.insert(draw(st.integers(0, len(logs))), copied)
    if draw(st.integers(0, 9)) == 5:
        logs.insert(draw(st.integers(0, len(logs))), draw(st.sampled_from(["log", None, 5, []])))
    return tuple(logs) if draw(st.integers(0, 9)) == 5 else logs


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    answers(),
    st.sampled_from(
        [
            None,
            ALL_BLOCKS,
            ALL_BLOCKS,
            ALL_BLOCKS,
            {H1: block_hash(H1), H2: block_hash(H2)},  # a log of H3 is out of range
            {**ALL_BLOCKS, H2: "0x" + "99" * 32},  # block H2 changed since it was fetched
            {height: "0x" + block_hash(height)[2:].upper() for height in HEIGHTS},
        ]
    ),
    st.sampled_from(
        [
            None,
            {},
            WANTED,
            {CONTRACT: {TO: 1, FROM: 2}, OTHER_CONTRACT: {OTHER: 3, TO: 4}},
            {UPPER_CONTRACT: {TO: 1}},  # never matches: contracts are lower-cased first
        ]
    ),
)
def test_random_answers_decode_as_before(logs: Any, block_hashes: Any, wanted: Any) -> None:
    outcome = assert_same_as_reference(logs, block_hashes, wanted)
    event("decoded" if outcome[1] is not None else f"raised {getattr(outcome[0], '__name__', '?')}")


def test_a_log_answered_twice_is_an_error_not_a_second_deposit() -> None:
    """A node (or a proxy) that repeats a log must not turn one payment into two deposits."""
    from collections import Counter

    from chains.base import ChainDataError
    from chains.evm.decode import decode_transfer_logs

    log = {
        "address": "0x" + "11" * 20, "blockNumber": "0x5", "blockHash": "0x" + "ab" * 32,
        "transactionHash": "0x" + "cd" * 32, "transactionIndex": "0x0", "logIndex": "0x3", "removed": False,
        "topics": [
            "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
            "0x" + "00" * 12 + "22" * 20, "0x" + "00" * 12 + "33" * 20,
        ],
        "data": "0x" + f"{1000:064x}",
    }  # fmt: skip
    assert len(decode_transfer_logs([log], Counter())) == 1
    for answer in ([log, dict(log)], [dict(log), log, dict(log)]):
        with pytest.raises(ChainDataError, match="appears twice"):
            decode_transfer_logs(answer, Counter())
