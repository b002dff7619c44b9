"""Address files for `deposit-watcher addresses import`: CSV or NDJSON rows of currency, address and
foreign_id, read and validated into the rows the store imports.

Pure apart from reading the stream it is given: no store, no network. Every row is checked the way the
config checks its address lists (the currency is configured, the address is valid for the network, as
`ChainAdapter.watch_key` says; the foreign_id is 1..255 characters without control characters), and the
first bad row stops the whole file with an error naming FILE:LINE and the field. The caller writes only
after the last row passed, so a bad row leaves nothing of the file written.

CSV: a header row naming the columns (`currency,address,foreign_id`, in any order), RFC 4180 quoting, UTF-8
(a byte-order mark is skipped: spreadsheets write one). NDJSON: one JSON object a line with those keys; a
numeric foreign_id keeps its digits as text. The extra columns `addresses export` writes (id, source,
derivation_path, created_at) are ignored, so an export can be imported into another store; any other
column is an error (a misspelt one would otherwise be dropped silently).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from chains import registry
from chains.base import AddressError, CurrencySpec
from watcher.address_book import MAX_FOREIGN_ID, check_foreign_id
from watcher.config import Config
from watcher.errors import ImportFileError, RequestRefused

FORMATS = ("csv", "ndjson")
COLUMNS = ("currency", "address", "foreign_id")
# What `addresses export` adds; read back without complaint, not imported (the store assigns its own).
EXPORT_COLUMNS = ("id", "source", "derivation_path", "created_at")
_EXTENSIONS = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}


def _refused(line: int, field: str, message: str) -> ImportFileError:
    """A row's problem; the command names the file (`ImportFileError.in_file`)."""
    return ImportFileError("", line, field, message)


@dataclass(frozen=True, slots=True)
class ValidRow:
    """A row that passed: what the store needs to watch the address, and the line it came from."""

    line: int
    chain: str
    currency: str
    watch_key: bytes
    address: str
    foreign_id: str


def format_of(path: str, given: str | None) -> str:
    """The file's format: `given` (--format), else from the extension; ImportFileError if neither says."""
    if given is not None:
        return given
    lower = path.lower()
    for extension, fmt in _EXTENSIONS.items():
        if lower.endswith(extension):
            return fmt
    what = "standard input" if path == "-" else "the file name"
    raise ImportFileError(
        path, None, "format", f"cannot tell the format from {what}: give --format csv or --format ndjson"
    )


# --------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True)
class _Asset:
    chain: str
    code: str
    spec: CurrencySpec
    adapter: Any  # the chain's adapter class: its static watch_key validates addresses


class RowValidator:
    """Checks one row against the configured currencies and the network, as the config's lists are."""

    def __init__(self, assets: Iterable[_Asset], network: str) -> None:
        self._assets = {a.code: a for a in assets}
        self._network = network
        self._known = ", ".join(sorted(self._assets))

    @classmethod
    def from_config(cls, config: Config) -> RowValidator:
        assets = [
            _Asset(chain.name, cur.code, cur.spec(), registry.adapter_class(chain.adapter))
            for chain in config.chains
            for cur in chain.currencies
        ]
        return cls(assets, config.network)

    def check(self, line: int, currency: str, address: str, foreign_id: str) -> ValidRow:
        """One row checked, as `checked` checks each; ImportFileError if it is refused."""
        [(_, (chain, code, watch_key, _, _))] = self.checked([(line, currency, address, foreign_id)])
        return ValidRow(line, chain, code, watch_key, address, foreign_id)

    def checked(
        self, rows: Iterable[tuple[int, str, str, str]]
    ) -> Iterator[tuple[int, tuple[str, str, bytes, str, str]]]:
        """(line, (chain, currency, watch_key, address, foreign_id)) of each raw (line, currency, address,
        foreign_id) row; ImportFileError at the first bad one. The import's loop: no object a row."""
        assets, network = self._assets, self._network
        for line, currency, address, foreign_id in rows:
            asset = assets.get(currency)
            if asset is None:
                raise _refused(line, "currency", f"unknown currency {currency!r} (configured: {self._known})")
            try:
                watch_key = asset.adapter.watch_key(asset.spec, address, network)
            except AddressError as exc:
                raise _refused(line, "address", str(exc)) from None
            # The API's rule, so a file and a request agree. Printable text has no control character (nor
            # a surrogate): the common case is decided in one C call, not a category lookup per character.
            if not (foreign_id.isprintable() and 0 < len(foreign_id) <= MAX_FOREIGN_ID):
                try:
                    check_foreign_id(foreign_id)
                except RequestRefused as exc:
                    raise _refused(line, "foreign_id", exc.message) from None
            # asset.code, not `currency`: one shared string instead of one per row (millions are staged).
            yield line, (asset.chain, asset.code, watch_key, address, foreign_id)


def validate(
    rows: Iterable[tuple[int, str, str, str]], validator: RowValidator, *, duplicates: bool = True
) -> Iterator[ValidRow]:
    """Each raw (line, currency, address, foreign_id) checked; ImportFileError at the first bad one. An
    address listed twice for one currency is an error naming both lines, as in the config's lists
    (unless `duplicates` is False: the caller finds them another way)."""
    first_line: dict[tuple[str, bytes], int] = {}
    for line, currency, address, foreign_id in rows:
        row = validator.check(line, currency, address, foreign_id)
        if not duplicates:
            yield row
            continue
        seen = first_line.setdefault((row.currency, row.watch_key), line)
        if seen != line:
            raise _refused(line, "address", f"{currency} {address} is already listed at line {seen}")
        yield row


# --------------------------------------------------------------------------------------------- reading


def read_rows(stream: TextIO, fmt: str) -> Iterator[tuple[int, str, str, str]]:
    """(line, currency, address, foreign_id) of each row of a CSV or NDJSON stream; ImportFileError if a
    row is not shaped as one. Blank lines are skipped."""
    if fmt == "csv":
        return _csv_rows(stream)
    if fmt == "ndjson":
        return _ndjson_rows(stream)
    raise ValueError(f"unknown format {fmt!r}")


def _csv_rows(stream: TextIO) -> Iterator[tuple[int, str, str, str]]:
    reader = csv.reader(stream, strict=True)
    start = 1  # where the current record starts: a quoted field may span lines
    try:
        header = next(reader, None)
        if header is None:
            raise _refused(1, "header", f"the file is empty; expected the header row {','.join(COLUMNS)}")
        cur, addr, fid = _columns(header, reader.line_num)
        width = len(header)
        start = reader.line_num + 1
        for record in reader:
            if len(record) == width:
                yield start, record[cur], record[addr], record[fid]
            elif record:  # csv gives [] for a blank line
                raise _refused(start, "row", f"{len(record)} fields; the header has {width}")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _refused(start, "row", f"not valid CSV: {exc}") from None


def _columns(header: list[str], line: int) -> tuple[int, int, int]:
    """Where currency, address and foreign_id are in the header row."""
    names = [h.strip() for h in header]
    unknown = [n for n in names if n not in COLUMNS and n not in EXPORT_COLUMNS]
    if unknown:
        raise _refused(line, "header", f"unknown column {unknown[0]!r}; expected {','.join(COLUMNS)}")
    for name in COLUMNS:
        if names.count(name) != 1:
            problem = "missing" if name not in names else "listed twice"
            raise _refused(line, "header", f"column {name!r} is {problem}; expected {','.join(COLUMNS)}")
    currency, address, foreign_id = (names.index(n) for n in COLUMNS)
    return currency, address, foreign_id


def _ndjson_rows(stream: TextIO) -> Iterator[tuple[int, str, str, str]]:
    for line, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError as exc:
            raise _refused(line, "row", f"not valid JSON: {exc}") from None
        currency, address, foreign_id = _ndjson_fields(line, item)
        yield line, currency, address, foreign_id


def _ndjson_fields(line: int, item: object) -> tuple[str, str, str]:
    if not isinstance(item, dict):
        raise _refused(line, "row", f"expected a JSON object with keys {', '.join(COLUMNS)}")
    for key in item:
        if key not in COLUMNS and key not in EXPORT_COLUMNS:
            raise _refused(line, str(key)[:40], "unknown key")
    values = [_ndjson_text(line, item, key) for key in COLUMNS]
    return values[0], values[1], values[2]


def _ndjson_text(line: int, item: Mapping[str, object], key: str) -> str:
    if key not in item:
        raise _refused(line, key, "missing")
    value = item[key]
    if isinstance(value, str):
        return value
    # Customer ids are often numbers; their digits are the id (bool is an int in Python: refused).
    if key == "foreign_id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _refused(line, key, f"expected a string, got {type(value).__name__}")
