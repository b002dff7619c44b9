"""The command line: `deposit-watcher COMMAND` (also `python -m watcher`).

Exit codes: 0 success, 1 a user-facing error (bad config, unknown deposit, daemon unreachable), 2 usage;
`run` ends with 78 when the config contradicts the chain. An error's code comes from its class
(watcher.errors), mapped in one place: `_failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from typing import Any

import aiohttp

from chains.base import ChainError
from watcher import cli_addresses, cli_payments
from watcher.callbacks import format_amount
from watcher.config import Config, load_config, summary
from watcher.errors import ConfigError, WatcherError, exit_code_of
from watcher.logs import configure
from watcher.store import Store
from watcher.store_open import open_store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deposit-watcher", description="Self-hosted crypto deposit monitor.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", required=True, help="the YAML configuration file")
        return cmd

    with_config("run", "run the daemon in the foreground (what systemd starts)")
    with_config("check-config", "validate the configuration and print a summary")
    status = with_config("status", "chains, heights, lag, outbox, as the status port reports")
    status.add_argument("--json", action="store_true")
    deposits = with_config("deposits", "list deposits")
    deposits.add_argument("--status", choices=["not_confirmed", "confirmed", "cancelled"])
    deposits.add_argument("--currency")
    deposits.add_argument("--address")
    deposits.add_argument("--json", action="store_true")
    callbacks = with_config("callbacks", "the callback delivery log: attempts, times, answers")
    callbacks.add_argument("--failed", action="store_true", help="only callbacks that failed for good")
    callbacks.add_argument("--json", action="store_true")
    resend = with_config("resend", "deliver a deposit's latest callback again")
    resend.add_argument("deposit_id", type=int)
    resend.add_argument("--json", action="store_true")
    rescan = with_config("rescan", "process past blocks again for addresses added after their payments")
    rescan.add_argument("--chain", required=True, help="the chain's name in the config")
    rescan.add_argument("--from-height", type=int, required=True, help="the first block to scan again")
    rescan.add_argument("--json", action="store_true")
    backup = with_config("backup", "copy the live store consistently (safe while the daemon runs)")
    backup.add_argument("destination", help="the file to write (must not exist)")
    cli_addresses.add_parsers(sub)
    cli_payments.add_parsers(sub)
    sub.add_parser(
        "operator-password",
        help="hash the back office's operator password (asked for, or one line on stdin) into the line "
        "for ui.operator_password_file",
    )
    migrate = sub.add_parser(
        "migrate-store",
        help="copy a stopped daemon's SQLite store into an empty PostgreSQL database, checked row for row",
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="FILE", help="the SQLite store")
    migrate.add_argument(
        "--to", dest="url", required=True, metavar="URL",
        help="postgresql://USER@HOST:PORT/DBNAME: an empty database; no password in the URL",
    )  # fmt: skip
    migrate.add_argument("--password-file", metavar="FILE", help="a file holding the database password")
    receiver = sub.add_parser("receiver", help="a test merchant endpoint: verifies and prints callbacks")
    receiver.add_argument("--listen", default="127.0.0.1:8390", help="HOST:PORT (default 127.0.0.1:8390)")
    receiver.add_argument(
        "--format",
        choices=("coinspaid", "coinskro"),
        default="coinspaid",
        help="the callbacks' format (default coinspaid; coinskro: webhooks of docs/webhooks.md)",
    )
    receiver.add_argument("--key", help="the expected X-Processing-Key (merchant.key; coinspaid only)")
    secret = receiver.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret", help="the merchant secret (visible in the process list)")
    secret.add_argument("--secret-file", help="a file holding the merchant secret")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "receiver":
        return _receiver(args)
    if args.command == "operator-password":
        return _operator_password()
    try:
        if args.command == "migrate-store":  # no config: both stores are named on the command line
            from watcher.migrate_store import run  # asyncpg is loaded only for PostgreSQL

            return run(args)
        return _command(args)
    except (WatcherError, ChainError) as exc:
        return _failed(exc)


def _failed(exc: WatcherError | ChainError) -> int:
    """The one place a command's error becomes its message (one line) and its exit code."""
    label = "config error" if isinstance(exc, ConfigError) else "error"
    print(f"{label}: {exc}", file=sys.stderr)
    return exit_code_of(exc)


def _command(args: argparse.Namespace) -> int:
    """The commands that read the config; a WatcherError (or a node's ChainError) ends them."""
    config = load_config(args.config)
    if args.command == "check-config":
        print(summary(config))
        return 0
    if args.command == "run":
        from watcher.daemon import run_forever

        # `kill -USR1 PID` prints every thread's stack to stderr: how to see where a daemon is stuck.
        faulthandler.register(signal.SIGUSR1)
        configure(config.log.format, config.log.level)
        return run_forever(config)
    if args.command == "api-key":
        return cli_addresses.api_key(config, args)
    handlers: dict[str, Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]] = {
        "status": _status,
        "deposits": _deposits,
        "callbacks": _callbacks,
        "resend": _resend,
        "rescan": _rescan,
        "backup": _backup,
        "addresses": cli_addresses.addresses,
        "payments": cli_payments.payments,
    }
    # Log lines (rescan's found deposits, say) go to stderr: stdout is the command's answer (--json).
    configure(config.log.format, config.log.level)
    return asyncio.run(handlers[args.command](config, args))


def _operator_password() -> int:
    """Print the scrypt hash line of the operator's password: typed twice at a terminal (not echoed), or
    the first line of stdin from a script. The password itself is never printed or kept."""
    import getpass

    from watcher.operator_password import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Operator password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        line = hash_password(password).line()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


def _receiver(args: argparse.Namespace) -> int:
    """The verifying merchant receiver of docs/callbacks.md ("Trying your set-up"), in the foreground."""
    from watcher.receiver import parse_listen, read_secret_file, serve

    try:
        host, port = parse_listen(args.listen)
        secret = args.secret if args.secret_file is None else read_secret_file(args.secret_file)
        if not secret:
            raise ValueError("--secret: the secret is empty")
        if args.format == "coinspaid" and not args.key:
            raise ValueError("--key is required for --format coinspaid (it is sent as X-Processing-Key)")
        if args.format == "coinskro" and args.key is not None:
            raise ValueError("--key: format coinskro sends no key; leave it out")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return serve(host, port, args.key or "", secret, format=args.format)


async def _with_store(config: Config, work: Callable[[Store], Awaitable[int]]) -> int:
    store = await open_store(config)
    try:
        return await work(store)
    finally:
        await store.close()


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


async def _status(config: Config, args: argparse.Namespace) -> int:
    url = f"http://{config.status.host}:{config.status.port}/status"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url) as response:
                snapshot = await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"error: the daemon's status port {url} does not answer ({exc})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2))
        return 0 if snapshot.get("ready") else 1
    rows = [{"chain": name, **c} for name, c in snapshot["chains"].items()]
    _print_table(
        rows, ["chain", "node_height", "processed_height", "lag", "head_age_s", "connected", "halted"]
    )
    print(f"outbox: {snapshot['outbox']}  deposits: {snapshot['deposits']}")
    for where, why in snapshot.get("problems", {}).items():
        print(f"not ready: {where}: {why}")
    return 0 if snapshot.get("ready") else 1


async def _deposits(config: Config, args: argparse.Namespace) -> int:
    decimals = _decimals_by_currency(config)

    async def work(store: Store) -> int:
        found = await store.deposits(status=args.status, currency=args.currency, address=args.address)
        # `amount` stays the base units (a string in JSON, as before); `amount_decimal` is what callbacks
        # say, null for a currency no longer in the config (its decimals are unknown).
        rows = [
            {"id": d.id, "currency": d.currency, "amount": str(d.amount),
             "amount_decimal": _decimal_amount(d.amount, decimals.get(d.currency)), "status": str(d.status),
             "confirmations": d.confirmations, "block_height": d.block_height, "txid": d.txid,
             "index": d.tx_index, "address": d.address, "foreign_id": d.foreign_id, "error": d.error}
            for d in found
        ]  # fmt: skip
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        table = [{**r, "amount": r["amount_decimal"] or "?", "base_units": r["amount"]} for r in rows]
        _print_table(
            table, ["id", "currency", "amount", "base_units", "status", "confirmations", "txid", "foreign_id"]
        )
        return 0

    return await _with_store(config, work)


def _decimals_by_currency(config: Config) -> dict[str, int]:
    return {cur.code: cur.decimals for chain in config.chains for cur in chain.currencies}


def _decimal_amount(amount: int, decimals: int | None) -> str | None:
    return None if decimals is None else format_amount(amount, decimals)


async def _callbacks(config: Config, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        entries = await store.outbox_entries(state="failed" if args.failed else None)
        rows = []
        for e in entries:
            attempts = await store.attempts(e.id)
            last = attempts[-1] if attempts else None
            rows.append({
                "outbox_id": e.id, "deposit_id": e.deposit_id, "payment_id": e.payment_id,
                "status": str(e.status), "state": str(e.state),
                "attempts": e.attempts, "created": _when(e.created_at),
                "last_attempt": _when(last.attempted_at if last else None),
                "last_answer": "" if last is None else (last.error or f"HTTP {last.http_status}"),
                "log": [
                    {"at": _when(a.attempted_at), "http_status": a.http_status, "error": a.error,
                     "excerpt": a.response_excerpt, "duration_ms": a.duration_ms}
                    for a in attempts
                ],
            })  # fmt: skip
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_table(
                rows,
                [
                    "outbox_id",
                    "deposit_id",
                    "payment_id",
                    "status",
                    "state",
                    "attempts",
                    "created",
                    "last_attempt",
                    "last_answer",
                ],
            )
        return 0

    return await _with_store(config, work)


async def _resend(config: Config, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        entry = await store.resend(args.deposit_id)
        if entry is None:
            print(f"error: deposit {args.deposit_id} has no callback to resend", file=sys.stderr)
            return 1
        if args.json:
            print(
                json.dumps(
                    {"deposit_id": args.deposit_id, "outbox_id": entry.id, "status": str(entry.status)}
                )
            )
        else:
            print(f"queued callback {entry.id} ({entry.status}) of deposit {args.deposit_id}")
        return 0

    return await _with_store(config, work)


async def _rescan(config: Config, args: argparse.Namespace) -> int:
    from watcher.rescan import rescan

    async def work(store: Store) -> int:
        result = await rescan(config, store, args.chain, args.from_height)
        if args.json:
            print(json.dumps(asdict(result)))
        else:
            print(
                f"{result.chain}: rescanned blocks {result.from_height}..{result.to_height}: "
                f"{result.transfers} payments to watched addresses, {result.new_deposits} new deposits"
            )
        return 0

    return await _with_store(config, work)


async def _backup(config: Config, args: argparse.Namespace) -> int:
    if await asyncio.to_thread(os.path.exists, args.destination):
        print(f"error: {args.destination} exists; choose a new file", file=sys.stderr)
        return 1

    async def work(store: Store) -> int:
        await store.backup(args.destination)
        check = await Store.open(args.destination)
        try:
            result = await check.integrity_check()
        finally:
            await check.close()
        print(f"backed up {config.database} to {args.destination} (integrity: {result})")
        return 0 if result == "ok" else 1

    return await _with_store(config, work)
