#!/usr/bin/env node
/*
 * A bcoin 1.0.2 full node for tests and the demo, patched at load time to behave like a Bitcoin Core
 * regtest node where deposit-watcher can tell the difference.
 *
 * Run by devnet/bcoin.py (BcoinNode): `node bcoin_node.js --prefix=DIR --http-port=0 ...`.
 * The flags are bcoin's own (bcoin's lib/node/config.js names them); this script forces the
 * settings the harness depends on (regtest, memory mode, tx index, one process, no P2P listening unless
 * `--p2p-listen=true`, RPC on 127.0.0.1) and prints one JSON line `{"event": "bcoin_ready", ...}` with
 * the ports actually bound once both RPC servers listen (so --http-port=0 and --wallet-http-port=0 can
 * be passed: no free-port race).
 *
 * Every fix below replaces one stock behaviour measured on bcoin 1.0.2 (numbers as in the reference):
 *   1. Core's regtest address prefixes: P2PKH 0x6f (m/n), P2SH 0xc4 (2), WIF 0xef, bech32 HRP "bcrt".
 *   2. The process-wide default network is regtest, so code that formats an address without passing a
 *      network (the wallet's getnewaddress) prints regtest addresses.
 *   3. The pool never picks a peer by itself: no seed, no host from the address book, so nothing dials
 *      127.0.0.1:48444 or anything else. The pool is still opened and connected (invalidateblock needs
 *      it) and an explicit `addnode HOST:PORT onetry` still connects.
 *   4. Transactions of a disconnected block always go back to the mempool (stock: only if the mempool
 *      was not empty).
 *   5. sendrawtransaction waits for the mempool and answers like Core: -25 for missing or spent inputs,
 *      -26 for a policy or consensus rejection, -27 when the tx is already in the chain (stock: always
 *      the txid, the rejection is only logged).
 *   7. After a reorg only mempool transactions spending an IMMATURE coinbase output are evicted (stock:
 *      any coinbase spend, even a mature one).
 *   8. Segwit is active from genesis, as on Core regtest (stock: BIP9 activation at height 432), so
 *      witness inputs can be spent at any height.
 *   9. The wallet's getnewaddress works without arguments (stock: "Account not found.").
 *  10. Wallet RPC calls first wait (bounded) until the wallet has processed the chain tip, like Core's
 *      wallet (stock: a call right after generatetoaddress sees an older balance).
 *  11. sendtoaddress/sendmany answer once the tx is in the mempool (stock: a moment before).
 * (6, disk mode's broken range scans, is avoided by always running in memory mode.)
 */

'use strict';

const path = require('path');
const Module = require('module');

const REPO = path.resolve(__dirname, '..');
const BCOIN_DIR = path.join(REPO, 'node_modules', 'bcoin');

function fail(message) {
  process.stderr.write(`bcoin_node: ${message}\n`);
  process.exit(2);
}

let bcoinRequire;
try {
  bcoinRequire = Module.createRequire(require.resolve(path.join(BCOIN_DIR, 'package.json')));
  const version = bcoinRequire('./package.json').version;
  if (version !== '1.0.2')
    fail(`bcoin ${version} found in ${BCOIN_DIR}; these patches are for 1.0.2: run \`npm ci\` in ${REPO}`);
} catch (err) {
  if (err.code !== 'MODULE_NOT_FOUND')
    throw err;
  fail(`bcoin is not installed (${BCOIN_DIR} missing): run \`npm ci\` in ${REPO}`);
}

const lib = (name) => bcoinRequire(`./lib/${name}`);

// ------------------------------------------------------------------ 1, 3: the regtest network table
// Patched in place BEFORE any Network object for regtest exists: Network copies these references.
const networks = lib('protocol/networks');
const regtestTable = networks.regtest;
Object.assign(regtestTable.addressPrefix, { pubkeyhash: 0x6f, scripthash: 0xc4, bech32: 'bcrt' });
regtestTable.keyPrefix.privkey = 0xef;
regtestTable.seeds.length = 0;

// ------------------------------------------------------------------------------ 2: default network
const Network = lib('protocol/network');
Network.set('regtest');
const regtest = Network.get('regtest');
if (regtest.addressPrefix.bech32 !== 'bcrt' || regtest.keyPrefix.privkey !== 0xef)
  fail('patching the regtest network table failed (was a regtest Network created before?)');

// -------------------------------------------------------------------------------- 3: never dial out
// getHost is the only place where the pool chooses an address on its own (loader peer, outbound
// refills, the seed list). addnode creates its peer directly and is unaffected.
const Pool = lib('net/pool');
Pool.prototype.getHost = function getHost() {
  return null;
};
Pool.prototype.discoverSeeds = async function discoverSeeds() {};
// With --listen=true stock bcoin asks public DNS servers and UPnP for its external address.
Pool.prototype.discoverExternal = async function discoverExternal() {};
Pool.prototype.discoverGateway = async function discoverGateway() {
  return false;
};

// --------------------------------------------------------- 4, 7: the mempool across a reorganisation
const Mempool = lib('mempool/mempool');
const consensus = lib('protocol/consensus');

// Stock 1.0.2 with the `if (this.map.size === 0) return;` removed.
Mempool.prototype._removeBlock = async function _removeBlock(block, txs) {
  let total = 0;

  for (let i = 1; i < txs.length; i++) {
    const tx = txs[i];
    const hash = tx.hash('hex');

    if (this.hasEntry(hash))
      continue;

    try {
      await this.insertTX(tx, -1);
      total++;
    } catch (e) {
      this.emit('error', e);
      continue;
    }

    this.emit('unconfirmed', tx, block);
  }

  this.rejects.reset();
  this.cache.sync(block.prevBlock);
  await this.cache.flush();
  this.tip = block.prevBlock;

  if (total > 0) {
    this.logger.debug('Added %d txs back into the mempool for block %d.', total, block.height);
  }
};

// Stock 1.0.2, except that a coinbase spend is evicted only if that coinbase is immature (or gone)
// at the next height, like Core's removeForReorg.
Mempool.prototype._handleReorg = async function _handleReorg() {
  const height = this.chain.height + 1;
  const mtp = await this.chain.getMedianTime(this.chain.tip);
  const remove = [];

  for (const [hash, entry] of this.map) {
    const {tx} = entry;

    if (!tx.isFinal(height, mtp)) {
      remove.push(hash);
      continue;
    }

    if (tx.version > 1) {
      let hasLocks = false;
      for (const {sequence} of tx.inputs) {
        if (!(sequence & consensus.SEQUENCE_DISABLE_FLAG)) {
          hasLocks = true;
          break;
        }
      }
      if (hasLocks) {
        remove.push(hash);
        continue;
      }
    }

    if (entry.coinbase && await spendsImmatureCoinbase(this, tx, height))
      remove.push(hash);
  }

  for (const hash of remove) {
    const entry = this.getEntry(hash);
    if (entry)
      this.evictEntry(entry);
  }
};

async function spendsImmatureCoinbase(mempool, tx, height) {
  for (const {prevout} of tx.inputs) {
    if (mempool.hasEntry(prevout.hash))
      continue; // a mempool parent is never a coinbase
    const coin = await mempool.chain.readCoin(prevout);
    if (!coin)
      return true;
    if (coin.coinbase && height - coin.height < consensus.COINBASE_MATURITY)
      return true;
  }
  return false;
}

// ------------------------------------------------------------------- 8: segwit active from genesis
const Chain = lib('blockchain/chain');
const {thresholdStates} = lib('blockchain/common');
const stockGetState = Chain.prototype.getState;
Chain.prototype.getState = async function getState(prev, deployment) {
  if (deployment.name === 'segwit')
    return thresholdStates.ACTIVE;
  return stockGetState.call(this, prev, deployment);
};

// ---------------------------------------------------------------- 5: Core-like sendrawtransaction
const RPC = lib('node/rpc');
const TX = lib('primitives/tx');
const bweb = bcoinRequire('bweb');
const Validator = bcoinRequire('bval');
const {RPCError} = bweb;

// Bitcoin Core's codes (src/rpc/protocol.h).
const RPC_MISC_ERROR = -1;
const RPC_VERIFY_ERROR = -25;
const RPC_VERIFY_REJECTED = -26;
const RPC_VERIFY_ALREADY_IN_CHAIN = -27;
const RPC_DESERIALIZATION_ERROR = -22;

RPC.prototype.sendRawTransaction = async function sendRawTransaction(args, help) {
  if (help || args.length < 1 || args.length > 2) {
    throw new RPCError(RPC_MISC_ERROR,
      'sendrawtransaction "hexstring" ( allowhighfees )');
  }

  const data = new Validator(args).buf(0);
  if (!data)
    throw new RPCError(RPC_DESERIALIZATION_ERROR, 'TX decode failed');

  let tx;
  try {
    tx = TX.fromRaw(data);
  } catch (e) {
    throw new RPCError(RPC_DESERIALIZATION_ERROR, 'TX decode failed');
  }

  const mempool = this.node.mempool;
  const hash = tx.hash('hex');

  // Core answers the txid again for a transaction it already holds.
  if (mempool.hasEntry(hash))
    return tx.txid();

  let missing;
  try {
    missing = await mempool.addTX(tx);
  } catch (err) {
    if (err.type !== 'VerifyError')
      throw err;
    if (err.reason === 'txn-already-in-mempool')
      return tx.txid();
    if (err.reason === 'txn-already-known')
      throw new RPCError(RPC_VERIFY_ALREADY_IN_CHAIN, 'Transaction already in block chain');
    if (err.reason === 'bad-txns-inputs-spent')
      throw new RPCError(RPC_VERIFY_REJECTED, 'txn-mempool-conflict');
    throw new RPCError(RPC_VERIFY_REJECTED, err.reason);
  }

  // bcoin keeps a tx with unknown inputs as an orphan (an empty array also means "not stored");
  // Core refuses it and keeps nothing.
  if (missing) {
    mempool.removeOrphan(hash);
    throw new RPCError(RPC_VERIFY_ERROR, 'bad-txns-inputs-missingorspent');
  }

  return tx.txid();
};

// --------------------------------------------------------------- 9: getnewaddress without a label
// Stock 1.0.2 answers "Account not found." when called without arguments (Core: default label).
const WalletRPC = lib('wallet/rpc');
const stockGetNewAddress = WalletRPC.prototype.getNewAddress;
WalletRPC.prototype.getNewAddress = function getNewAddress(args, help) {
  return stockGetNewAddress.call(this, args.length === 0 ? [''] : args, help);
};

// -------------------------------------------------------------- 10: wallet calls see the chain tip
// The wallet follows the chain asynchronously: right after generatetoaddress, stock getbalance and
// sendtoaddress see an older height ("Not enough funds"). Core's wallet RPCs first wait until the
// wallet has caught up with the chain tip (BlockUntilSyncedToCurrentChain); so do these.
const WALLET_SYNC_TIMEOUT_MS = 10000;

async function walletSynced(wdb, chain) {
  if (wdb.state.height !== chain.height)
    return false;
  const tip = await wdb.getBlock(wdb.state.height);
  return tip !== null && tip.hash === chain.tip.hash;
}

const stockWalletExecute = WalletRPC.prototype.execute;
WalletRPC.prototype.execute = async function execute(json, help) {
  const chain = this.client.node.chain;
  const deadline = Date.now() + WALLET_SYNC_TIMEOUT_MS;
  while (!await walletSynced(this.wdb, chain)) {
    if (Date.now() > deadline) {
      this.logger.warning('Wallet still behind the chain after %dms.', WALLET_SYNC_TIMEOUT_MS);
      break;
    }
    await new Promise(resolve => setTimeout(resolve, 5));
  }
  return stockWalletExecute.call(this, json, help);
};

// ----------------------------------------------------- 11: wallet sends return once in the mempool
// Stock NodeClient#send does not wait for the mempool: right after sendtoaddress answers, the tx can
// be missing from getrawmempool. Core's wallet submits to the mempool before answering. Rejections are
// still only logged (as stock relay does); the wallet keeps its tx either way.
const NodeClient = lib('wallet/nodeclient');
NodeClient.prototype.send = async function send(tx) {
  await this.node.relay(tx);
};

// ------------------------------------------------------------------------------------------ start
const FullNode = lib('node/fullnode');
const walletPlugin = lib('wallet/plugin');

// Our defaults go first: bcoin's argv parser lets a later flag win, so callers can still override
// anything except the settings this harness depends on (forced after the caller's flags).
// `--p2p-listen=true` (ours) opens a P2P port on 127.0.0.1 for an explicit addnode from another node.
const userArgs = process.argv.slice(2);
const p2pListen = userArgs.includes('--p2p-listen=true');
const forced = ['--network=regtest', '--memory=true', `--listen=${p2pListen}`, '--index-tx=true',
  '--workers=false'];
const defaults = ['--http-host=127.0.0.1', '--wallet-http-host=127.0.0.1', '--host=127.0.0.1',
  '--log-level=info'];
process.argv = [process.argv[0], process.argv[1], ...defaults,
  ...userArgs.filter(arg => !arg.startsWith('--p2p-listen=')), ...forced];

process.title = 'bcoin-regtest';

const node = new FullNode({
  config: false,
  argv: true,
  env: false,
  logFile: false,
  logConsole: true,
  loader: bcoinRequire
});
node.use(walletPlugin);

process.on('unhandledRejection', (err) => {
  throw err;
});

function shutdown(signal) {
  // Stock bcoin does not close cleanly on a signal; in memory mode there is nothing to save.
  process.stdout.write(`${JSON.stringify({event: 'bcoin_stopping', signal})}\n`);
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

(async () => {
  if (!node.config.str('prefix'))
    fail('--prefix=DIR is required (else bcoin writes to ~/.bcoin)');
  await node.ensure();
  await node.open();
  await node.connect();
  node.startSync();

  const wallet = node.require('walletdb');
  const ready = {
    event: 'bcoin_ready',
    pid: process.pid,
    network: node.network.type,
    http_port: node.http.address().port,
    wallet_http_port: wallet.http.address().port,
    p2p_port: p2pListen ? node.pool.server.address().port : null,
    height: node.chain.height
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
})().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
