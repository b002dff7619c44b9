"""What both Bitcoin adapters (bitcoin-core, esplora) must do alike on a real bcoin regtest node, beyond
the chain-neutral contract: one native currency only, every address type, several outputs of one
transaction, taproot, agreement with python-bitcoinlib's decoding, and spends of watched outpoints by
double-spends, in blocks and in the mempool. Generated for the drivers with the "bitcoin" feature
(tests/chains/conftest.py)."""

from __future__ import annotations

import pytest
from bitcoin.core import b2lx

from chains.base import ConfigMismatch, CurrencySpec, MempoolScan, Spend, TxState, WatchList
from devnet import btc_tools as bt
from tests.chains.drivers import BITCOIN, BitcoinDriver
from tests.chains.helpers import BTC, Watched, mined_scan

pytestmark = pytest.mark.needs(BITCOIN)


@pytest.mark.parametrize(
    "currencies",
    [(), (BTC, CurrencySpec("LTC", 8)), (CurrencySpec("USDT", 6, "0x" + "11" * 20),)],
)
async def test_open_wants_exactly_one_native_currency(
    driver: BitcoinDriver, currencies: tuple[CurrencySpec, ...]
) -> None:
    with pytest.raises(ConfigMismatch, match="exactly one currency without a contract"):
        await driver.adapter(currencies=currencies).open()


async def test_deposits_of_every_type_in_the_mempool_then_in_a_block(driver: BitcoinDriver) -> None:
    adapter, node = driver.adapter(), driver.node
    watched = Watched(["p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh"])
    amounts = [1_234_567, 2_000_001, 333_333, 40_000_009]
    txids = [bt.pay(node, w.address, amount) for w, amount in zip(watched.addresses, amounts, strict=True)]
    expected = [
        watched.expected(node, txid, watch_id, amount)
        for watch_id, (txid, amount) in enumerate(zip(txids, amounts, strict=True), start=1)
    ]
    assert expected[0].address[0] in "mn" and expected[1].address[0] == "2"
    assert all(t.address.startswith("bcrt1q") for t in expected[2:])
    in_mempool = await adapter.mempool_scan(watched.list())
    assert sorted(in_mempool.transfers, key=lambda t: t.watch_id) == expected
    for transfer in expected:
        assert (await adapter.tx_fate(transfer)).state is TxState.PENDING
    scan = await mined_scan(driver, adapter, watched.list())
    assert sorted(scan.transfers, key=lambda t: t.watch_id) == expected
    assert (await adapter.mempool_scan(watched.list())).transfers == ()  # mined: out of the mempool
    height = scan.ref.height if driver.mined_fate_has_height else None
    for transfer in expected:
        fate = await adapter.tx_fate(transfer)
        assert (fate.state, fate.block_height) == (TxState.MINED, height), fate


async def test_two_outputs_of_one_tx_and_a_second_payment(driver: BitcoinDriver) -> None:
    adapter, node = driver.adapter(), driver.node
    watched = Watched(["p2wpkh", "p2pkh"])
    first, second = (w.address for w in watched.addresses)
    txid = bt.pay_many(node, {first: 50_000, second: 60_000})
    again = bt.pay(node, first, 70_000)
    scan = await mined_scan(driver, adapter, watched.list())
    assert sorted(scan.transfers, key=lambda t: (t.txid != txid, t.watch_id)) == [
        watched.expected(node, txid, 1, 50_000),
        watched.expected(node, txid, 2, 60_000),
        watched.expected(node, again, 1, 70_000),
    ]
    assert len({t.index for t in scan.transfers if t.txid == txid}) == 2  # one transfer per vout


async def test_taproot_payment_in_a_constructed_block(driver: BitcoinDriver) -> None:
    adapter, node = driver.adapter(), driver.node
    watched = Watched(["p2tr"])
    (w,) = watched.addresses
    assert w.address.startswith("bcrt1p")
    block_hash, txid = bt.taproot_block(node, w.script_pubkey, 54_321)
    head = await adapter.head()
    assert head.block_hash == block_hash
    (scan,) = await adapter.scan(head.height, head.height, watched.list())
    assert scan.transfers == (watched.expected(node, txid, 1, 54_321),)
    assert scan.transfers[0].address == w.address


async def test_scan_agrees_with_python_bitcoinlib(driver: BitcoinDriver) -> None:
    """Every output of the last blocks that has an address, watched at once: the walk must find exactly
    what the decoded blocks hold (coinbases with witness commitments, the wallet's segwit transactions)."""
    adapter, node = driver.adapter(), driver.node
    bt.pay(node, bt.make_address("p2sh-p2wpkh").address, 12_345)
    bt.mine(node)
    tip = bt.height(node)
    heights = range(tip - 4, tip + 1)
    blocks = [bt.raw_block(node, bt.block_hash(node, h)) for h in heights]
    scripts: dict[bytes, int] = {}
    expected = set()
    for block in blocks:
        for tx in block.vtx:
            for vout, out in enumerate(tx.vout):
                script = bytes(out.scriptPubKey)
                if script.startswith(b"\x6a"):
                    continue  # OP_RETURN (the witness commitment): no address, so never a watch key
                scripts.setdefault(script, len(scripts) + 1)
                expected.add((b2lx(tx.GetTxid()), vout, out.nValue, scripts[script]))
    scans = await adapter.scan(heights.start, heights.stop - 1, WatchList({"BTC": scripts}))
    found = {(t.txid, t.index, t.amount, t.watch_id) for s in scans for t in s.transfers}
    assert found == expected
    assert [s.ref.block_hash for s in scans] == [b2lx(b.GetHash()) for b in blocks]


async def test_double_spend_reorg_reports_the_spend(driver: BitcoinDriver) -> None:
    adapter, node = driver.adapter(), driver.node
    watched = Watched(["p2wpkh"])
    txid = bt.pay(node, watched.addresses[0].address, 99_999)
    deposit = (await mined_scan(driver, adapter, watched.list())).transfers[0]
    assert deposit.txid == txid and deposit.inputs
    conflict, new_blocks = bt.double_spend_reorg(node, txid)
    head = await adapter.head()
    assert head.block_hash == new_blocks[-1]
    watch = watched.list(deposit.inputs)  # the daemon now watches the open deposit's inputs
    scans = await adapter.scan(head.height - len(new_blocks) + 1, head.height, watch)
    assert scans[0].transfers == ()
    assert scans[0].spends == (Spend(deposit.inputs[0], conflict),)
    assert (await adapter.mempool_scan(watch)) == MempoolScan()
    fate = await adapter.tx_fate(deposit)
    assert fate.state is TxState.ABSENT, fate


async def test_double_spend_of_a_mempool_deposit(driver: BitcoinDriver) -> None:
    adapter, node = driver.adapter(), driver.node
    watched = Watched(["p2sh-p2wpkh"])
    txid = bt.pay(node, watched.addresses[0].address, 12_121)
    (deposit,) = (await adapter.mempool_scan(watched.list())).transfers
    watch = watched.list(deposit.inputs)
    assert (await adapter.mempool_scan(watch)).spends == (Spend(deposit.inputs[0], txid),)  # its own
    conflict, new_blocks = bt.double_spend_reorg(node, txid)
    head = await adapter.head()
    (scan,) = await adapter.scan(head.height, head.height, watch)
    assert scan.ref.block_hash == new_blocks[0]
    assert scan.spends == (Spend(deposit.inputs[0], conflict),)
    assert (await adapter.mempool_scan(watch)).transfers == ()
    assert (await adapter.tx_fate(deposit)).state is TxState.ABSENT
