"""Pure EVM decoding (chains.evm.decode): table-driven, no node, no event loop."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
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
