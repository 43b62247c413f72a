"""Reading pool text: .jsonl, .jsonl.gz, .jsonl.zst and parquet, one file, several, or globs.

Bad lines stay countable instead of fatal: ``parse_record`` gives each line a status. Inputs are
expanded in a stable order (each argument in turn, a glob's matches sorted by path, duplicates
dropped). A document's id is its ``--id-key`` field, or ``FILE:LINE`` (1-based line or row, FILE the
input's name, or its path when two inputs share a name) when the field is absent.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

from megatron_gm.errors import GMError

try:  # optional: a faster parser for the common case (see parse_record)
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    _orjson_loads = None

FORMATS = ".jsonl, .jsonl.gz, .jsonl.zst or .parquet"
STATUSES = ("ok", "blank", "utf8", "json", "not_object", "missing_key", "surrogate")


def input_format(path: str | os.PathLike) -> str:
    """'parquet' for .parquet files, else 'jsonl' (plain, .gz or .zst)."""
    return "parquet" if str(path).endswith(".parquet") else "jsonl"


def expand_inputs(specs: str | os.PathLike | list) -> list[Path]:
    """Files named by ``specs`` (paths or globs), in a stable order; a one-line error if none match."""
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    out: list[Path] = []
    seen = set()
    for spec in specs:
        spec = str(spec)
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise GMError(f"{spec}: no file matches; pass {FORMATS} files or a glob with --input")
        for m in matches:
            p = Path(m)
            if not p.is_file():
                raise GMError(f"{p}: input not found; pass a {FORMATS} file (or a glob) with --input")
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                out.append(p)
    if not out:
        raise GMError(f"no input given; pass {FORMATS} files or a glob with --input")
    return out


def input_labels(paths: list[Path]) -> list[str]:
    """How ids name each input: its file name, or the path as given when names collide."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


def open_input(path: str | os.PathLike):
    """A binary stream of a jsonl file's bytes (decompressed for .gz and .zst)."""
    path = Path(path)
    if not path.is_file():
        raise GMError(f"{path}: input not found; pass a {FORMATS} file with --input")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        return _ZstdReader(path)
    return open(path, "rb")


class _ZstdReader:
    """Decompressed bytes of a (multi-frame) .zst file; a file cut inside a frame is an error."""

    def __init__(self, path):
        import zstandard

        self._zstd = zstandard
        self._f = open(path, "rb")
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._started = False

    def read(self, n: int) -> bytes:
        while True:
            raw = self._f.read(max(n // 4, 1 << 16))
            if not raw:
                if self._started and not self._d.eof:
                    raise EOFError("compressed file ended before the end-of-frame marker was reached")
                return b""
            out = self._d.decompress(raw)
            self._started = True
            while self._d.eof and self._d.unused_data:  # the next frame starts in this read
                rest = self._d.unused_data
                self._d = self._zstd.ZstdDecompressor().decompressobj()
                out += self._d.decompress(rest)
            if self._d.eof:
                self._started = False
            if out:
                return out

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unreadable(path, e) -> GMError:
    return GMError(f"{path}: unreadable ({e}); check the file is complete {FORMATS}")


def _read_errors():
    errors: tuple = (gzip.BadGzipFile, EOFError, OSError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def iter_blocks(path: str | os.PathLike, block_bytes: int = 1 << 22) -> Iterator[tuple[int, bytes]]:
    """(index of the block's first line, bytes of whole lines) of a jsonl file, ~``block_bytes`` each."""
    errors = _read_errors()
    line = 0
    rest = b""
    try:
        with open_input(path) as f:
            while True:
                data = f.read(block_bytes)
                if not data:
                    break
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
                yield line, block
                line += block.count(b"\n")
    except errors as e:
        raise _unreadable(path, e) from e
    if rest:
        yield line, rest + b"\n"


def split_lines(block: bytes) -> list[bytes]:
    """Lines of a block from ``iter_blocks`` (newline and a trailing carriage return dropped)."""
    lines = block.split(b"\n")
    lines.pop()  # the block ends with a newline
    return [x[:-1] if x.endswith(b"\r") else x for x in lines]


def iter_lines(path: str | os.PathLike) -> Iterator[bytes]:
    """Raw lines (bytes, newline stripped) of a jsonl, jsonl.gz or jsonl.zst file."""
    for _, block in iter_blocks(path):
        yield from split_lines(block)


def iter_parquet(
    path: str | os.PathLike, columns: list[str], rows: int = 8192
) -> Iterator[tuple[int, dict[str, list]]]:
    """(index of the first row, {column: values}) batches of a parquet file; absent columns are None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        present = [c for c in dict.fromkeys(columns) if c in f.schema_arrow.names]
        first = 0
        for batch in f.iter_batches(batch_size=rows, columns=present):
            cols = {c: batch.column(c).to_pylist() for c in present}
            n = batch.num_rows
            cols.update({c: [None] * n for c in columns if c not in cols})
            yield first, cols
            first += n
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(path, e) from e


def check_text(rec: dict, keys: list[str], utf8: bool = False) -> str:
    """'ok', 'missing_key' (a key absent or not a string) or 'surrogate' (text that is not UTF-8).
    ``utf8``: the strings are known to be UTF-8 (orjson's), so the surrogate check is skipped."""
    for k in keys:
        v = rec.get(k)
        if not isinstance(v, str):
            return "missing_key"
    if utf8:
        return "ok"
    for k in keys:
        try:
            rec[k].encode("utf-8")
        except UnicodeEncodeError:  # a lone UTF-16 surrogate escaped in valid JSON, e.g. "\ud800"
            return "surrogate"
    return "ok"


def parse_record(line: bytes, keys: list[str], id_key: str | None = None) -> tuple[str, dict | None]:
    """(status, record): 'ok', 'blank', 'utf8', 'json', 'not_object', 'missing_key' or 'surrogate'.

    With orjson installed, a line it parses into an object is taken from it (several times faster than
    ``json``); anything else goes through ``json`` so every status stays ``json``'s. orjson rejects lone
    surrogates and invalid UTF-8, so its strings are those ``json`` gives. It reads integers beyond 64 bits
    as floats: a numeric ``id_key`` value is re-read with ``json``. Use it where only ``keys`` and
    ``id_key`` are read (other numeric fields may differ in type)."""
    if _orjson_loads is not None:
        try:
            rec = _orjson_loads(line)
        except ValueError:  # orjson.JSONDecodeError subclasses ValueError
            rec = None
        if isinstance(rec, dict) and not (id_key and isinstance(rec.get(id_key), (int, float))):
            return check_text(rec, keys, utf8=True), rec
    if not line.strip():
        return "blank", None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "utf8", None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return "json", None
    if not isinstance(rec, dict):
        return "not_object", None
    status = check_text(rec, keys)
    return status, rec


def doc_id(rec: dict | None, id_key: str | None, label: str, index: int) -> str:
    """The record's ``id_key`` value, or ``label:line`` (1-based) when it has none."""
    value = rec.get(id_key) if rec is not None and id_key else None
    return str(value) if value is not None else f"{label}:{index + 1}"


def iter_records(
    inputs, keys: list[str], id_key: str | None = "id"
) -> Iterator[tuple[str, dict | None, str]]:
    """(status, record, id) of every line or row of every input, in order."""
    paths = expand_inputs(inputs)
    for path, label in zip(paths, input_labels(paths)):
        if input_format(path) == "parquet":
            cols = list(keys) + ([id_key] if id_key else [])
            for first, batch in iter_parquet(path, cols):
                n = len(batch[cols[0]])
                for i in range(n):
                    rec = {c: batch[c][i] for c in cols}
                    status = check_text(rec, keys)
                    yield status, rec, doc_id(rec, id_key, label, first + i)
        else:
            index = 0
            for line in iter_lines(path):
                status, rec = parse_record(line, keys, id_key)
                yield status, rec, doc_id(rec, id_key, label, index)
                index += 1


def iter_texts(inputs, key: str = "text", max_docs: int | None = None) -> Iterator[str]:
    """Non-empty texts under ``key`` of one or more inputs; bad lines are skipped."""
    for text, _ in iter_texts_counted(inputs, key, max_docs):
        yield text


def iter_texts_counted(inputs, key: str = "text", max_docs: int | None = None, skipped=None):
    """(text, id) of non-empty texts; ``skipped`` (a Counter) counts the bad lines by status."""
    n = 0
    for status, rec, rid in iter_records(inputs, [key]):
        if status == "ok" and rec[key].strip():
            yield rec[key], rid
            n += 1
            if max_docs is not None and n >= max_docs:
                return
        elif skipped is not None:
            skipped["empty" if status == "ok" else status] += 1
