"""The `addresses` and `api-key` commands: what a merchant's operator does by hand or from a script.

`addresses take|register|list` go through `AddressBook`, as the merchant API does, so both refuse and
answer alike; `addresses import|export` move files of addresses in and out of the store; `api-key new`
makes a key for an integration. stdout is the answer (`--json` for scripts); errors and the progress bar
go to stderr. cli.py registers the parsers (`add_parsers`) and dispatches (`addresses`, `api_key`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from watcher.address_book import AddressBook
from watcher.address_import import (
    COLUMNS,
    FORMATS,
    RowValidator,
    format_of,
    read_rows,
)
from watcher.apikeys import new_api_key
from watcher.config import Config, IntegrationConfig
from watcher.errors import ImportFileError, RequestRefused
from watcher.import_workers import checked_batches
from watcher.model import IssuedAddress
from watcher.progress import Progress
from watcher.store import IMPORT_BATCH, ImportBatch, ImportConflict, Store
from watcher.store_open import open_store

EXPORT_COLUMNS = (*COLUMNS, "id", "source", "derivation_path", "created_at")


def add_parsers(sub: Any) -> None:
    """The `addresses` and `api-key` commands, each action with --config (argparse hands everything after
    the action to the action's parser, so the option must be known there)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="the YAML configuration file")
    common.add_argument("--integration", help="the integration's id (default: the only one)")
    common.add_argument("--json", action="store_true", help="answer in JSON")
    addresses = sub.add_parser("addresses", help="issue, register, list, import and export addresses")
    actions = addresses.add_subparsers(dest="action", required=True)
    _address_actions(actions, common)
    keys = sub.add_parser("api-key", help="make merchant API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    new = key_actions.add_parser("new", parents=[common], help="a new API key, shown once")
    mode = new.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="live", action="store_true", default=None, help="an sk_live_ key")
    mode.add_argument("--test", dest="live", action="store_false", help="an sk_test_ key")
    new.add_argument("--append-to", metavar="FILE", help="append the hash line to this key file")


def _address_actions(actions: Any, common: argparse.ArgumentParser) -> None:
    take = actions.add_parser("take", parents=[common], help="the customer's standing address (derived)")
    take.add_argument("--currency", required=True)
    take.add_argument("--foreign-id", required=True, help="the merchant's customer reference")
    register = actions.add_parser("register", parents=[common], help="watch an address made elsewhere")
    register.add_argument("--currency", required=True)
    register.add_argument("--address", required=True)
    register.add_argument("--foreign-id", required=True)
    register.add_argument("--from-height", type=int, help="scan the chain's past from this block for it")
    listing = actions.add_parser("list", parents=[common], help="the integration's addresses, by id")
    listing.add_argument("--foreign-id")
    listing.add_argument("--currency")
    listing.add_argument("--after", type=int, default=0, help="only ids above this (paging)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1..1000)")
    imports = actions.add_parser("import", parents=[common], help="watch every address of a CSV/NDJSON file")
    imports.add_argument("file", help="the file (- for standard input)")
    imports.add_argument("--format", choices=FORMATS, help="default: from the extension")
    export = actions.add_parser("export", parents=[common], help="every watched address, as CSV or NDJSON")
    export.add_argument("--currency")
    export.add_argument("--all", action="store_true", help="also the addresses no longer watched (deleted)")
    export.add_argument("--format", choices=FORMATS, default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="default: standard output")


def integration_of(config: Config, given: str | None) -> IntegrationConfig:
    """--integration, or the config's only integration; a RequestRefused listing the ids otherwise."""
    ids = ", ".join(f"{i.id} ({i.name})" for i in config.integrations)
    if given is None:
        if len(config.integrations) == 1:
            return config.integrations[0]
        message = f"the config has {len(config.integrations)} integrations; choose one of: {ids}"
        raise RequestRefused(400, "integration_required", message, "--integration")
    try:
        return config.integration(given.strip().lower())
    except KeyError:
        raise RequestRefused(
            404, "not_found", f"no integration {given!r} (configured: {ids})", "--integration"
        ) from None


# ------------------------------------------------------------------------------------------ addresses


async def addresses(config: Config, args: argparse.Namespace) -> int:
    integration = integration_of(config, args.integration)
    store = await open_store(config)
    try:
        if args.action == "import":
            return await _import(config, store, integration, args)
        if args.action == "export":
            return await _export(store, integration, args)
        return await _book_action(AddressBook(store, config), integration, args)
    finally:
        await store.close()


async def _book_action(book: AddressBook, integration: IntegrationConfig, args: argparse.Namespace) -> int:
    if args.action == "list":
        found = await book.list(
            integration,
            foreign_id=args.foreign_id,
            currency=args.currency,
            after=args.after,
            limit=args.limit,
        )
        _print_addresses(found, args.json)
        return 0
    if args.action == "take":
        issued, created = await book.take(integration, args.currency, args.foreign_id)
    else:
        issued, created = await book.register(
            integration, args.currency, args.address, args.foreign_id, args.from_height
        )
    if args.json:
        print(json.dumps({**address_json(issued), "created": created}))
    else:
        path = f" ({issued.derivation_path})" if issued.derivation_path else ""
        state = "new" if created else "already issued"
        print(f"{issued.currency} {issued.address} for {issued.foreign_id}{path}: {state}, id {issued.id}")
    return 0


def address_json(a: IssuedAddress) -> dict[str, Any]:
    """An address at the JSON edge (the CLI's --json and export)."""
    return {
        "id": a.id,
        "integration_id": a.integration_id,
        "currency": a.currency,
        "address": a.address,
        "foreign_id": a.foreign_id,
        "source": str(a.source),
        "derivation_path": a.derivation_path,
        "created_at": iso_time(a.created_at),
        "active": a.active,
    }


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_addresses(found: list[IssuedAddress], as_json: bool) -> None:
    if as_json:
        print(json.dumps([address_json(a) for a in found], indent=2))
        return
    rows = [{**address_json(a), "derivation_path": a.derivation_path or ""} for a in found]
    columns = ("id", "currency", "address", "foreign_id", "source", "derivation_path", "created_at")
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


# ------------------------------------------------------------------------------------------ import


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    existing: int
    seconds: float  # the whole import
    checked_s: float  # of which reading and checking the file, before the store's transaction


async def _import(
    config: Config, store: Store, integration: IntegrationConfig, args: argparse.Namespace
) -> int:
    bar = Progress(sys.stderr, enabled=sys.stderr.isatty(), label="importing")
    result = await import_file(config, store, integration, args.file, format_of(args.file, args.format), bar)
    if args.json:
        print(
            json.dumps(
                {"added": result.added, "existing": result.existing, "seconds": round(result.seconds, 3)}
            )
        )
    else:
        total = result.added + result.existing
        rate = total / result.seconds if result.seconds > 0 else 0.0
        print(
            f"{args.file}: {total:,} addresses: {result.added:,} added, {result.existing:,} already watched "
            f"({result.seconds:.1f} s, {rate:,.0f}/s)"
        )
    return 0


async def import_file(
    config: Config,
    store: Store,
    integration: IntegrationConfig,
    path: str,
    fmt: str,
    bar: Progress,
    *,
    batch_rows: int = IMPORT_BATCH,
) -> ImportResult:
    """Check the file row by row (in worker processes: `import_workers`) as the store stages it, then add
    it in one transaction: a bad row anywhere leaves nothing written. ImportFileError names FILE:LINE and
    the field of the first row refused. Only each row's line number is kept (4 bytes a row), never the
    rows."""
    started = time.perf_counter()
    label = "<stdin>" if path == "-" else path
    lines = array("L")
    checked = [0.0]
    with _opened(path) as (stream, fraction):
        validator = RowValidator.from_config(config)
        rows = read_rows(stream, fmt)
        batches = checked_batches(
            validator, rows, lines, lambda n: bar.update(n, fraction()), batch_rows=batch_rows
        )
        try:
            async with aclosing(batches):
                added, existing = await store.import_batches(
                    integration.id, _timed(batches, started, checked), time.time()
                )
        except ImportFileError as exc:
            raise exc.in_file(label) from None
        except ImportConflict as exc:
            message = exc.message
            if exc.first is not None:
                message = f"this address is already listed at line {lines[exc.first]}"
            raise ImportFileError(label, lines[exc.index], exc.field or "address", message) from None
        finally:
            bar.done()
    return ImportResult(added, existing, time.perf_counter() - started, checked[0])


async def _timed(
    batches: AsyncIterator[ImportBatch], started: float, checked: list[float]
) -> AsyncIterator[ImportBatch]:
    """The batches, noting when the last was checked: reading and checking ends there, the store's part
    (the last batch's staging and the transaction) begins."""
    async for batch in batches:
        yield batch
    checked[0] = time.perf_counter() - started


@contextmanager
def _opened(path: str) -> Iterator[tuple[TextIO, Callable[[], float | None]]]:
    """The file as UTF-8 text (a spreadsheet's byte-order mark skipped), and how much of it was read."""
    try:
        raw = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as exc:
        raise ImportFileError(path, None, "file", f"cannot read it: {exc.strerror}") from None
    size = 0 if path == "-" else os.fstat(raw.fileno()).st_size
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        yield text, (lambda: raw.tell() / size if size else None)
    except UnicodeDecodeError:
        raise ImportFileError(path, None, "file", "is not UTF-8 text") from None
    finally:
        if path == "-":
            text.detach()  # leave standard input open
        else:
            text.close()


# ------------------------------------------------------------------------------------------ export


async def _export(store: Store, integration: IntegrationConfig, args: argparse.Namespace) -> int:
    count = 0
    try:
        with _output(args.output) as out:
            write = _writer(out, args.format)
            async for a in store.export_addresses(integration.id, args.currency):
                # A deleted address stays in the store for its deposits; exported, it would be imported
                # elsewhere as one to watch: only with --all.
                if a.active or args.all:
                    write(a)
                    count += 1
    except BrokenPipeError:
        # The reader stopped early (`export | head`): no traceback, and nothing more to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if args.output is not None:
        print(f"exported {count:,} addresses to {args.output}", file=sys.stderr)
    return 0


def _writer(out: TextIO, fmt: str) -> Callable[[IssuedAddress], None]:
    if fmt == "ndjson":

        def ndjson(a: IssuedAddress) -> None:
            out.write(json.dumps(_export_fields(a), ensure_ascii=False) + "\n")

        return ndjson
    table = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    table.writerow(EXPORT_COLUMNS)

    def row(a: IssuedAddress) -> None:
        table.writerow(_export_fields(a).values())

    return row


def _export_fields(a: IssuedAddress) -> dict[str, Any]:
    fields = address_json(a)
    return {column: fields[column] for column in EXPORT_COLUMNS}


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as out:
        yield out


# ------------------------------------------------------------------------------------------ api-key


def api_key(config: Config, args: argparse.Namespace) -> int:
    """`api-key new`: print a new key once and the hash line that the config (or a key file) keeps."""
    integration = integration_of(config, args.integration)
    live = config.network == "mainnet" if args.live is None else args.live
    if live != (config.network == "mainnet"):
        kind = "live" if live else "test"
        print(f"warning: a {config.network} daemon refuses {kind} keys", file=sys.stderr)
    key, hashed = new_api_key(live)
    if args.append_to is not None:
        append_hash_line(args.append_to, hashed.line())
    if args.json:
        print(json.dumps({"key": key, "hash": hashed.line(), "integration": integration.id}))
        return 0
    print(f"key:  {key}")
    print(f"hash: {hashed.line()}")
    where = (
        f"appended to {args.append_to}" if args.append_to else f"add it to the api_keys of {integration.id}"
    )
    print(
        f"The key is shown only this once: give it to the merchant's backend now. The hash line is what the "
        f"daemon keeps ({where}; reload the daemon with SIGHUP).",
        file=sys.stderr,
    )
    return 0


def append_hash_line(path: str, line: str) -> None:
    """Append to a key file; on a new line even if the file's last line has no newline. Created 0644:
    hash lines are not secrets, and the service (its own user under systemd) must read the file."""
    try:
        existed = os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            os.fchmod(fd, 0o644)  # whatever the umask: the service must read it
    except OSError as exc:
        raise RequestRefused(
            400, "invalid_field", f"cannot write {path}: {exc.strerror}", "--append-to"
        ) from None
    with os.fdopen(fd, "a", encoding="ascii") as f:
        needs_newline = f.tell() > 0 and _last_byte(path) != b"\n"
        f.write(("\n" if needs_newline else "") + line + "\n")


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)
