"""A CRM as a folder of files: `clients.csv managers.csv touches.csv ...` (or `.jsonl`).

Column names are the model fields; an empty cell is a missing value; `tags` are separated by `;` or `,`.
A missing file means no rows. Rows are validated in chunks and streamed into a store inside one
transaction, so a bad row anywhere (reported as file:line, id and field) writes nothing.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import stat
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from typing import IO, Any

from .errors import DataError, RepeatedKeyError, did_you_mean, not_utf8, unique_keys
from .model import ENTITIES
from .stores import MemoryStore, Store, open_store
from .stores._ingest import Batch, validate_rows
from .stores.base import Pred
from .timeutil import END_OF_TIME

__all__ = ["data_files", "import_data", "open_source", "read_batches"]

CHUNK = 50_000


def data_files(folder: Path) -> dict[str, Path]:
    """The file of each entity present in `folder`; both .csv and .jsonl for one entity is an error."""
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    found: dict[str, Path] = {}
    for entity in ENTITIES:
        paths = [p for p in (folder / f"{entity}.csv", folder / f"{entity}.jsonl") if p.exists() or p.is_symlink()]
        if len(paths) > 1:
            raise DataError(f"both {paths[0].name} and {paths[1].name} exist; keep one", file=str(folder))
        if paths:
            _regular(paths[0])
            found[entity] = paths[0]
    expected = f"expected {', '.join(e + '.csv' for e in ENTITIES)} (or .jsonl)"
    # a file that is not read would silently drop every row in it (every client looks forgotten): refuse a
    # misspelt name (`Touches.csv`) and an entity's rows in a format retainer does not read (`touches.ndjson`,
    # `touches.xlsx`); other files (README.md, .gitkeep, an editor's lock file) are not meant as data
    for p in sorted(folder.iterdir()):
        if p in found.values():
            continue
        suffix, stem = p.suffix.lower(), p.name.split(".", 1)[0].lower()
        if suffix in (".csv", ".jsonl"):
            did = did_you_mean(p.name.lower(), [e + suffix for e in ENTITIES], quote=False)
            raise DataError(f"unknown data file {p.name}{did} ({expected})", file=str(p))
        if stem in ENTITIES:
            raise DataError(
                f"not read; retainer reads {stem}.csv or {stem}.jsonl (one JSON object per line): "
                "convert or rename it, or move it out of the folder",
                file=str(p),
            )
    if not found:
        raise DataError(f"no data files in {folder}: {expected}")
    return found


def _regular(path: Path) -> None:
    """Refuse a data file that is not a regular file (itself or where its link points): a FIFO named
    deals.csv hung `plan` for ever, a link to /dev/zero read one endless line, and a folder named
    deals.csv was an IsADirectoryError traceback."""
    try:
        st = path.stat()
    except OSError as exc:  # a dangling link
        raise DataError(f"cannot read it: {exc.strerror or exc}", file=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else "a device"
        raise DataError(f"not a regular file ({what}): a data file must be a file", file=str(path))


def _open_regular(path: Path, **options: Any) -> IO[str]:
    """`path` opened for reading, once it is known to be a regular file: opened without blocking (a pipe
    swapped in after the check is not waited on), checked again on the open file, then read as text."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError("not a regular file: a data file must be a file", file=str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, encoding="utf-8-sig", **options)  # the caller closes it
    except BaseException:
        os.close(fd)
        raise


#: The longest JSONL line read (a CSV cell is capped at 128 KB; bigger rows go to .jsonl).
MAX_JSONL_LINE = 16 * 1024 * 1024


def _not_utf8(path: Path) -> DataError:
    line, message = not_utf8(path)
    return DataError(message, file=str(path), row=line)


def _utf8(path: Path, rows: Iterator[Any]) -> Iterator[Any]:
    """`rows`, with a decoding error turned into a DataError naming the file and line."""
    try:
        yield from rows
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _csv_rows(path: Path, entity: str) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and the (line, cells) of each non-blank row; cells stay text ("" is empty) for
    the compiled converters of `validate_rows`."""
    fields = set(ENTITIES[entity].model_fields)
    f = _open_regular(path, newline="")
    reader = csv.reader(f)

    def path_line(n: int) -> str:
        """Line n of the file (on the error path only)."""
        with path.open(encoding="utf-8-sig", errors="replace") as g:
            return next(itertools.islice(g, n - 1, None), "")

    def runaway(start: int, what: str) -> str | None:
        """Why the row from line `start` ran on to the current line, if a quote opened there never closed."""
        if reader.line_num > start and '"' in path_line(start):
            return (f'a quote (") opened on this line is not closed, so lines {start} to {reader.line_num} were '
                    f"read as one {what}")  # fmt: skip
        return None

    def unreadable(exc: csv.Error, start: int) -> DataError:
        """A cell over the csv module's limit (128 KB): as a rule a quote that never closed in a big file."""
        if quote := runaway(start, "cell"):
            return DataError(quote, file=str(path), row=start)
        if "field larger" in str(exc):
            return DataError(f"a cell is longer than {csv.field_size_limit():,} characters, the most a CSV cell may "
                             f"hold; write such rows to {entity}.jsonl", file=str(path), row=start)  # fmt: skip
        return DataError(f"not readable as CSV: {exc}", file=str(path), row=reader.line_num)

    try:
        header = next(reader, None)
    except UnicodeDecodeError:
        f.close()
        raise _not_utf8(path) from None
    except csv.Error as exc:
        f.close()
        raise unreadable(exc, 1) from None
    if header is None:  # not even a header: an export that failed, not a table with no rows
        f.close()
        raise DataError("the file is empty, without even its header line (an export that failed?): a table with "
                        "no rows still has its header; with none of these rows, leave the file out",
                        file=str(path), row=1)  # fmt: skip
    header = [h.strip() for h in header]
    for h in header:
        if h not in fields:
            f.close()
            sep = next((c for c in ";\t|" if c in h), None)
            hint = (f"; the header looks separated by {sep!r}: retainer reads comma-separated CSV" if sep
                    else "; an empty column name (a comma at the end of the header?)" if not h
                    else f"; valid columns: {', '.join(ENTITIES[entity].model_fields)}")  # fmt: skip
            raise DataError(f"unknown column {h!r}{hint}", file=str(path), row=1, field=h)
    if "id" not in header:
        f.close()
        raise DataError("the header has no 'id' column", file=str(path), row=1)
    twice = next((h for n, h in enumerate(header) if h in header[:n]), None)
    if twice is not None:  # csv would keep the last cell, silently: `status` twice made active clients archived
        f.close()
        raise DataError(f"column {twice!r} appears twice in the header", file=str(path), row=1, field=twice)

    def rows() -> Iterator[tuple[int, list[str]]]:
        width = len(header)
        with f:
            start = reader.line_num + 1
            try:
                for row in reader:
                    if len(row) != width or not row[0] or row[0].isspace():
                        if not "".join(row).strip():  # a blank line, or only empty cells
                            start = reader.line_num + 1
                            continue
                        if len(row) != width:
                            if quote := runaway(start, "row"):
                                raise DataError(f"expected {width} cells, found {len(row)}: {quote}", file=str(path),
                                                row=start)  # fmt: skip
                            raise DataError(f"expected {width} cells, found {len(row)}", file=str(path), row=start)
                    yield start, row  # where the row begins: a quoted cell may run over lines
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise unreadable(exc, start) from None

    return header, rows()


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_regular(path) as f:  # a byte-order mark, as Windows tools write it, as in CSV
        n = 0
        while line := f.readline(MAX_JSONL_LINE + 1):
            n += 1
            if len(line) > MAX_JSONL_LINE:
                raise DataError(f"the line is longer than {MAX_JSONL_LINE:,} characters", file=str(path), row=n)
            if not line.strip():
                continue
            try:
                obj = json.loads(line, object_pairs_hook=unique_keys)
            except RepeatedKeyError as exc:
                raise DataError(f"{exc}: json would keep the last value silently", file=str(path), row=n,
                                field=exc.key) from None  # fmt: skip
            except RecursionError:
                raise DataError("not valid JSON: nested too deeply", file=str(path), row=n) from None
            except ValueError as exc:  # an integer of over 4,300 digits is a ValueError without `msg`
                why = getattr(exc, "msg", None) or "a number with more than 4,300 digits"
                raise DataError(f"not valid JSON: {why}", file=str(path), row=n) from None
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", file=str(path), row=n)
            yield n, obj


def read_batches(folder: str | Path, tz: tzinfo, *, chunk: int = CHUNK) -> Iterator[Batch]:
    """Validated batches in load order (managers, clients, then the facts that refer to them)."""
    for entity, path in data_files(Path(folder)).items():
        header: list[str] | None = None
        rows: Iterator[tuple[int, Any]]
        if path.suffix == ".csv":
            header, rows = _csv_rows(path, entity)
        else:
            rows = _jsonl_rows(path)
        rows = _utf8(path, rows)
        buf: list[Any] = []
        lines: list[int] = []
        for line, row in rows:
            buf.append(row)
            lines.append(line)
            if len(buf) >= chunk:
                yield _batch(entity, buf, tz, path, lines, header)
                buf, lines = [], []
        if buf:
            yield _batch(entity, buf, tz, path, lines, header)


def _batch(entity: str, rows: list[Any], tz: tzinfo, path: Path, lines: list[int], header: list[str] | None) -> Batch:
    """A chunk validated, with the fields its source gives: a JSONL exporter that leaves out empty values
    still writes each key in some row of a chunk."""
    columns = frozenset(header) if header is not None else frozenset(k for r in rows for k in r)
    return Batch(entity, validate_rows(entity, rows, tz, file=str(path), lines=lines, header=header), str(path),
                 lines, columns)  # fmt: skip


def import_data(
    folder: str | Path, store: Store, *, replace: bool = False, archive_missing: bool = False
) -> dict[str, int]:
    """Load a data folder into a store atomically; returns rows per entity.

    `archive_missing` (with `replace`, for a full export loaded every night): a stored client the folder's
    clients file does not list any more (deleted or merged in the CRM) is archived, in the same load, so
    it gets no more actions; its history stays. `"archived"` in the result counts them. Without it, such
    a client stays as it was, since an import never deletes."""
    if archive_missing and not replace:
        raise DataError("archive_missing needs replace: it is for a full export loaded over the store")
    batches = read_batches(folder, store.tz)
    if replace:
        batches = _keeping(batches, store)
    files = data_files(Path(folder))
    if archive_missing and "clients" not in files:  # what would be archived is everyone: a failed export
        raise DataError("archive_missing is for a full export, and this folder has no clients file "
                        "(clients.csv or clients.jsonl); nothing imported", file=str(folder))  # fmt: skip
    if not archive_missing:
        return store.load(batches, replace=replace)  # type: ignore[attr-defined,no-any-return]
    archived: list[Any] = []
    counts: dict[str, int] = store.load(_archiving(batches, store, archived, str(files["clients"])),  # type: ignore[attr-defined]
                                        replace=True)  # fmt: skip
    counts["clients"] -= len(archived)
    counts["archived"] = len(archived)
    return counts


def _keeping(batches: Iterator[Batch], store: Store) -> Iterator[Batch]:
    """`batches`, refusing a replacement that would reset a stored value only because the export left its
    column (in JSONL, a key no row of the chunk has) out: a saved CRM report that lost its `contact_policy`
    column made every do-not-contact client contactable, silently. An empty cell still resets a value: that
    is said outright."""
    for b in batches:
        missing = sorted(ENTITIES[b.entity].model_fields.keys() - b.columns) if b.columns is not None else []
        stored = _stored(store, b.entity, [m.id for m in b.models]) if missing else {}
        for n, m in enumerate(b.models if stored else ()):
            if (old := stored.get(m.id)) is None:
                continue
            for f in missing:
                if f == "status" and old.status == "archived":  # archived as missing, in the export again: back
                    continue
                if (was := getattr(old, f)) != (now := getattr(m, f)):
                    where = "column" if b.file and b.file.endswith(".csv") else "key"
                    raise DataError(
                        f"the row has no {where} {f!r}, so --replace would reset the stored {f} "
                        f"{_shown(was)} to {_shown(now)}; add the {where} to the export (an empty value resets it "
                        f"on purpose); nothing imported", **b.where(n), id=m.id, field=f,
                    )  # fmt: skip
        yield b


def _stored(store: Store, entity: str, ids: list[str]) -> dict[str, Any]:
    """The stored rows of these ids, read at once: one lookup a row cost 10 µs, a second a night at 100k."""
    if entity == "managers":
        wanted = set(ids)
        return {m.id: m for m in store.managers() if m.id in wanted}
    rows = (store.clients(END_OF_TIME, ids) if entity == "clients"
            else store.facts(entity, END_OF_TIME, (Pred("id", "in", frozenset(ids)),)))  # fmt: skip
    return {r.id: r for r in rows}


def _shown(v: Any) -> str:
    if isinstance(v, frozenset):
        v = sorted(v)
    return repr(v) if not isinstance(v, datetime) else v.isoformat()


def _archiving(batches: Iterator[Batch], store: Store, archived: list[Any], file: str) -> Iterator[Batch]:
    """`batches`, then the stored clients they did not list, archived (a last batch of the same load)."""
    listed: set[str] = set()
    for b in batches:
        if b.entity == "clients":
            listed.update(m.id for m in b.models)
        yield b
    archived += [c.model_copy(update={"status": "archived"}) for c in store.iter("clients")  # type: ignore[attr-defined]
                 if c.id not in listed and c.status != "archived"]  # fmt: skip
    if archived and not listed:  # raised inside the load: nothing of it is written
        raise DataError(f"the clients file lists no client: archiving all {len(archived):,} stored clients is more "
                        "likely a failed export than a closed business; nothing imported", file=file)  # fmt: skip
    if archived:
        yield Batch("clients", archived, "(clients missing from the import: archived)")


def open_source(src: str, tz: tzinfo) -> Store:
    """What `--data` accepts: a store URL, a `.db` file, or a folder of data files (read into memory)."""
    p = Path(src)
    if p.is_dir():
        store = MemoryStore(f"memory://{p}", timezone=tz)
        import_data(p, store)
        return store
    if "://" in src or p.suffix in (".db", ".sqlite", ".sqlite3"):
        return open_store(src, timezone=tz, create=False)
    if not p.exists():  # a mistyped folder: say so, not what kinds of --data there are
        raise DataError(f"--data {src!r}: no such file or folder (a store URL, a .db file, or a folder of data files)")
    raise DataError(f"--data {src!r} is neither a store URL, a .db file, nor a folder of data files")
