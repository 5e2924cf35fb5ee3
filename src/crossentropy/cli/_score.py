"""``crossentropy score``: score a file of predicted probabilities against true labels.

Reads CSV (header row = class names), NPY (2-D probabilities) or Parquet in chunks of rows and feeds
each chunk to :class:`crossentropy.metrics.ScoreAccumulator`, so memory stays bounded whatever the
file size. Every problem with the input becomes a one-line :class:`CLIError` naming the file, the
line (CSV, 1-based, header = line 1) or row (NPY/Parquet, 1-based) and what is wrong.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from crossentropy._array import namespace
from crossentropy._tolerance import check_row_sums, rounded_tolerance
from crossentropy.cli._main import CLIError, _silence_stdout

DEFAULT_CHUNK_ROWS = 65536
MAX_BINS = 100_000
FORMATS = ("csv", "npy", "parquet")
# header names taken as the true label when no --label-column or --true is given
LABEL_NAMES = ("label", "y", "target")
# a first column with one of these names holds row ids when the other columns sum to 1
ID_NAMES = ("id", "index", "row")
# what the report and the messages call standard input (PRED or --true given as -)
STDIN = "<stdin>"
# values parsed from text are float64; each row's written decimals are read from them
TEXT_EPS = float(np.finfo(np.float64).eps)
_SUFFIXES = {".csv": "csv", ".txt": "csv", ".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "score",
        help="score a prediction file: log loss, perplexity, accuracy, Brier, calibration",
        description=(
            "Score predicted class probabilities against true labels. PRED is a CSV file whose "
            "header names the classes, a 2-D .npy array, or a Parquet file. The file is read in "
            "chunks, so its size is not limited by memory."
        ),
    )
    parser.add_argument(
        "pred", metavar="PRED", help="predictions: .csv, .npy or .parquet; - reads standard input "
        "(then --format is required)"
    )  # fmt: skip
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument(
        "--true",
        metavar="TRUE",
        help="true labels: .npy (class names, or integers: the class of that name when every "
        "class name is an integer, else the column position) or a text/CSV file with one label "
        "per line (an optional header line is skipped); - reads them from standard input",
    )
    truth.add_argument(
        "--label-column",
        metavar="NAME",
        help="column of PRED (CSV/Parquet) holding the true label: a class name, or an integer "
        "column position when no class is named by a number (default: the one column named "
        "label, y or target, in any case)",
    )
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="column of PRED (CSV/Parquet) holding row ids, which is not scored (default: a "
        "first column named id, index or row, in any case, when the other columns sum to 1)",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        metavar="NAME",
        help="class names of the probability columns, in order (default: the header, or 0..k-1 "
        "for .npy)",
    )
    parser.add_argument(
        "--base",
        type=float,
        default=None,
        help="unit of the per-class cross-entropy: 2 for bits (default: nats)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    parser.add_argument(
        "--renormalize",
        "--normalize",
        dest="renormalize",
        action="store_true",
        help="divide each row by its sum (any non-negative scores) instead of rejecting rows "
        "that do not sum to 1 (--normalize is its older name)",
    )
    parser.add_argument(
        "--eps",
        type=float,
        default=None,
        help="clip probabilities to [EPS, 1-EPS] before the log (default: no clipping, so a "
        "zero probability on the true class gives an infinite log loss)",
    )
    parser.add_argument(
        "--tol",
        "--sum-tol",
        dest="tol",
        type=float,
        default=None,
        help="how far from 1 a row's sum may be (default: the rounding the values may carry: "
        "1e-5 + 4 sqrt(k) float32 epsilons for k classes, plus the epsilon of a .npy's or "
        "Parquet column's dtype; for CSV, plus half a unit in the last decimal per value when "
        "the row is written with 3 to 8 decimals, e.g. %%.4f)",
    )
    parser.add_argument(
        "--bins", type=int, default=15, help="confidence bins for the ECE (default 15)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="format of PRED (default: from suffix)"
    )
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"rows read at a time; bounds memory (default {DEFAULT_CHUNK_ROWS})",
    )
    parser.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# Class names and label lookup


def _is_integer_text(text: str) -> bool:
    body = text.strip()
    body = body[1:] if body[:1] in "+-" else body
    return body.isdigit() and body.isascii() and len(body) <= 18


class Classes:
    """Class names in column order and the lookup from a label's text to its column."""

    def __init__(self, names: list[str], source: str) -> None:
        if len(names) < 2:
            raise CLIError(f"{source}: need at least two probability columns; got {len(names)}")
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise CLIError(f"{source}: class name {name!r} appears twice")
            seen.add(name)
        self.names = names
        self.index = {name: i for i, name in enumerate(names)}
        # the names as int64 when every one is an integer ("0", "1", "-3"), else None
        self.integer_names: np.ndarray | None = None
        if all(_is_integer_text(name) for name in names):
            ints = np.array([int(name) for name in names], dtype=np.int64)
            if np.unique(ints).shape[0] == ints.shape[0]:  # not "1" and "01"
                self.integer_names = ints
        # An integer label that names no class is a column position, but only when no class is
        # named by a number: then "2" can mean nothing else.
        self.positions_allowed = not any(_is_integer_text(name) for name in names)
        # set when an integer label was read as a column position, so the user can be told
        self.positions_used = False

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, text: str) -> int:
        """Column of the label ``text``: its name, a number naming it (``1.0`` for "1"), or, when
        no class is named by a number, an integer column position (``2`` for the third column)."""
        text = text.strip()
        found = self.index.get(text)
        if found is not None:
            return found
        try:
            value = float(text)
        except ValueError:
            return -1
        if not value.is_integer():
            return -1
        found = self.index.get(str(int(value)), -1)
        if found < 0 and self.positions_allowed and 0 <= value < len(self.names):
            self.positions_used = True
            return int(value)
        return found

    def unknown(self, text: str) -> str:
        """Why the label ``text`` was refused, for an error message."""
        message = f"label {text!r} is not one of the classes ({self.describe()})"
        try:
            integer = float(text).is_integer()
        except ValueError:
            integer = False
        if self.positions_allowed and integer:
            message += f" nor a column position in [0, {len(self.names)})"
        return message

    def positions_note(self) -> str:
        """The line that says integer labels were read as column positions."""
        first = self.names if len(self) <= 3 else self.names[:2]
        shown = ", ".join(f"{i} = {name!r}" for i, name in enumerate(first))
        more = f", ..., {len(self) - 1} = {self.names[-1]!r}" if len(self) > 3 else ""
        return (
            f"integer labels read as column positions ({shown}{more}), since no class is named "
            "by a number"
        )

    def lookup_many(self, texts: list[str]) -> np.ndarray:
        get = self.index.get
        out = np.fromiter((get(t, -1) for t in texts), dtype=np.intp, count=len(texts))
        for i in np.flatnonzero(out < 0):
            out[i] = self.lookup(texts[i])
        return out

    def describe(self, limit: int = 10) -> str:
        shown = ", ".join(self.names[:limit])
        return shown + (f", ... ({len(self.names)} classes)" if len(self.names) > limit else "")


# ----------------------------------------------------------------------------------------------
# Chunks


@dataclass
class Chunk:
    """Probabilities of consecutive rows, their true classes when the file holds them, and where
    each row came from (1-based line numbers for text, row numbers for binary files)."""

    probs: np.ndarray
    target: np.ndarray | None
    positions: np.ndarray
    unit: str  # "line" or "row"
    eps: float = TEXT_EPS  # machine epsilon of the dtype the values were stored in
    stored: str = ""  # that dtype's name for binary files; "" for text

    def where(self, i: int) -> str:
        return f"{self.unit} {int(self.positions[i])}"


class _LabelTable(dict[str, float]):
    """Label text -> column (as float, for ``np.loadtxt`` converters); -1.0 for unknown labels."""

    def __init__(self, classes: Classes) -> None:
        super().__init__((name, float(i)) for i, name in enumerate(classes.names))
        self.classes = classes

    def __missing__(self, key: str) -> float:
        value = float(self.classes.lookup(key))
        if value >= 0:
            self[key] = value
        return value


def open_text(path: str) -> IO[str]:
    """A text file read with universal line splitting (\n, \r\n or a lone \r end a line) and no
    newline translation; utf-8-sig drops a BOM. Bytes that are not UTF-8 become lone surrogates
    instead of failing a whole buffer, so :func:`check_utf8` can name their line. ``-`` is
    standard input, read the same way (and left open)."""
    if path == "-":
        return open(
            sys.stdin.fileno(),
            encoding="utf-8-sig",
            errors="surrogateescape",
            newline="",
            closefd=False,
        )
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def display_name(path: str) -> str:
    """How messages and the report name a file; ``-`` is standard input."""
    return STDIN if path == "-" else path


def check_utf8(path: str, lines: list[str], first: int) -> None:
    """Refuse the first of ``lines`` (numbered from ``first``) that held bytes that are not UTF-8."""
    try:
        "".join(lines).encode("utf-8")
    except UnicodeEncodeError:
        for i, line in enumerate(lines):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = line[exc.start].encode("utf-8", "surrogateescape")
                raise CLIError(
                    f"{path}: line {first + i}: not UTF-8 text (byte 0x{byte.hex()} at "
                    f"character {exc.start + 1})"
                ) from None


class CSVReader:
    """Reads a CSV prediction file in chunks of lines (header = class names)."""

    def __init__(
        self,
        path: str,
        label_column: str | None,
        names: list[str] | None,
        chunk_rows: int,
        find_label: bool = False,
        id_column: str | None = None,
        sum_tol: float | None = None,
    ) -> None:
        self.path = display_name(path)
        self.chunk_rows = chunk_rows
        self.file: IO[str] = open_text(path)  # a BOM is not a class name
        self._pending: list[str] = []  # lines read ahead to decide on an id column
        header_at = 0
        while True:  # blank lines before the header are skipped, as blank lines elsewhere
            header_line = self.file.readline()
            header_at += 1
            self._check_utf8([header_line], header_at)
            if not header_line or header_line.strip():
                break
        path = self.path
        if not header_line.strip():
            raise CLIError(f"{path}: empty file: expected a header line of class names")
        if _unbalanced_quote(header_line):
            raise _quote_error(path, header_at)
        header = [h.strip() for h in next(csv.reader([header_line], skipinitialspace=True))]
        if len(header) == 1:
            for sep, name in (("\t", "tabs"), (";", "semicolons")):
                if sep in header_line:
                    raise CLIError(
                        f"{path}: line {header_at}: the header has one comma-separated field "
                        f"but contains {name}; CSV files are read as comma-separated"
                    )
        empty = [j + 1 for j, h in enumerate(header) if not h]
        if empty:
            raise CLIError(
                f"{path}: line {header_at}: column {empty[0]} of the header has no name (a "
                "trailing comma?); the header line names the classes"
            )
        self.n_fields = len(header)
        self.columns = header
        self.label_col: int | None = None
        self.found_label: str | None = None
        if label_column is None and find_label:
            label_column = self.found_label = find_label_column(header)
        if label_column is not None:
            if label_column not in header:
                raise CLIError(
                    f"{path}: line {header_at}: no column named {label_column!r}; the columns are "
                    f"{', '.join(header)}"
                )
            self.label_col = header.index(label_column)
        self.next_line = header_at + 1
        self.id_col: int | None = None
        self.found_id: str | None = None
        self.id_candidate: str | None = None  # a first column named id that is scored
        if id_column is not None:
            self.id_col = _id_column(path, id_column, header, label_column)
        elif _looks_like_id(header, label_column):
            self._pending = self._read_lines()
            rest = [j for j in range(1, len(header)) if j != self.label_col]
            if rest and _sums_to_one(self._parse(self._pending, rest), sum_tol):
                self.id_col, self.found_id = 0, header[0]
            else:
                self.id_candidate = header[0]
        self.prob_cols = [j for j in range(len(header)) if j not in (self.label_col, self.id_col)]
        header_names = [header[j] for j in self.prob_cols]
        if names is not None and len(names) != len(header_names):
            raise CLIError(
                f"{path}: --labels gives {len(names)} names but the file has "
                f"{len(header_names)} probability columns ({', '.join(header_names)})"
            )
        self.header = header
        self.classes = Classes(names if names is not None else header_names, path)

    def _parse(self, lines: list[str], columns: list[int]) -> np.ndarray | None:
        """The numbers of ``columns`` in ``lines`` (blank lines skipped), or None if any is not a
        number: the read ahead only decides, the chunk reader reports problems."""
        kept = [line for line in lines if line.strip()]
        if not kept:
            return None
        try:
            return np.loadtxt(
                kept,
                delimiter=",",
                dtype=np.float64,
                comments=None,
                quotechar='"',
                ndmin=2,
                usecols=columns,
            )
        except (ValueError, IndexError):
            return None

    def close(self) -> None:
        self.file.close()

    def _check_utf8(self, lines: list[str], first: int) -> None:
        check_utf8(self.path, lines, first)

    def _read_lines(self) -> list[str]:
        if self._pending:
            lines, self._pending = self._pending, []
            return lines
        lines = list(itertools.islice(self.file, self.chunk_rows))
        self._check_utf8(lines, self.next_line)
        return lines

    def chunks(self) -> Iterator[Chunk]:
        classes = self.classes
        converters: dict[int | str, Callable[[str], Any]] | None = None
        if self.label_col is not None:
            # a dict lookup called from NumPy's C parser; unusual spellings go to __missing__
            converters = {self.label_col: _LabelTable(classes).__getitem__}
        while True:
            lines = self._read_lines()
            if not lines:
                return
            first = self.next_line
            self.next_line += len(lines)
            if any(not line.strip() for line in lines):  # blank lines are skipped
                keep = [bool(line.strip()) for line in lines]
                kept = [line for line, k in zip(lines, keep) if k]
                positions = first + np.flatnonzero(keep)
            else:
                kept = lines
                positions = np.arange(first, first + len(lines))
            if not kept:
                continue
            try:
                table = np.loadtxt(
                    kept,
                    delimiter=",",
                    dtype=np.float64,
                    converters=converters,
                    comments=None,
                    quotechar='"',
                    ndmin=2,
                )
            except ValueError as exc:
                raise self._diagnose(kept, positions, str(exc)) from None
            if table.shape[1] != self.n_fields:
                raise CLIError(
                    f"{self.path}: line {positions[0]}: expected {self.n_fields} fields like the "
                    f"header, got {table.shape[1]}"
                )
            probs = table[:, self.prob_cols]
            target = None
            if self.label_col is not None:
                target = table[:, self.label_col].astype(np.intp)
                unknown = np.flatnonzero(target < 0)
                if unknown.size:
                    i = int(unknown[0])
                    if _unbalanced_quote(kept[i]):
                        raise _quote_error(self.path, int(positions[i]))
                    text = next(csv.reader([kept[i]]))[self.label_col].strip()
                    raise CLIError(f"{self.path}: line {positions[i]}: {classes.unknown(text)}")
            yield Chunk(probs, target, positions, "line")

    def _diagnose(self, kept: list[str], positions: np.ndarray, fallback: str) -> CLIError:
        """Find the first malformed line of a chunk that NumPy refused, and say what is wrong."""
        for line, pos in zip(kept, positions):
            if _unbalanced_quote(line):
                return _quote_error(self.path, int(pos))
            fields = next(csv.reader([line]))
            if len(fields) != self.n_fields:
                return CLIError(
                    f"{self.path}: line {pos}: expected {self.n_fields} fields like the header, "
                    f"got {len(fields)}"
                )
            for j in self.prob_cols:
                if not _parses_as_one_float(fields[j]):
                    return CLIError(
                        f"{self.path}: line {pos}: column {self.header[j]!r}: {fields[j].strip()!r} "
                        "is not a number"
                    )
        return CLIError(f"{self.path}: line {positions[0]} or later: {fallback}")


def _looks_like_id(columns: list[str], label_column: str | None) -> bool:
    """Whether the first column is named like a row id (and is not the label column)."""
    return (
        len(columns) > 2 and columns[0].strip().lower() in ID_NAMES and columns[0] != label_column
    )


def _id_column(path: str, name: str, columns: list[str], label_column: str | None) -> int:
    """Position of the --id-column ``name``, checked."""
    if name not in columns:
        raise CLIError(
            f"{path}: no column named {name!r} (--id-column); the columns are {', '.join(columns)}"
        )
    if name == label_column:
        raise CLIError(f"{path}: column {name!r} cannot hold both the labels and the row ids")
    return columns.index(name)


def _sums_to_one(table: np.ndarray | None, sum_tol: float | None, eps: float = TEXT_EPS) -> bool:
    """Whether every row of ``table`` is a probability distribution by the library's rule."""
    if table is None or table.shape[0] == 0 or table.shape[1] < 2:
        return False
    if not np.all((table >= 0) & (table <= 1)):  # also False for NaN
        return False
    sums = table.sum(axis=1, keepdims=True)
    check = check_row_sums(namespace(table), table, sums, 1, sum_tol=sum_tol, eps=eps)
    return not bool(np.any(check.off))


def _unbalanced_quote(line: str) -> bool:
    """An odd number of double quotes: a quoted field left open (or one that spans lines)."""
    return line.count('"') % 2 == 1


def _quote_error(path: str, line: int) -> CLIError:
    return CLIError(
        f"{path}: line {line}: a double-quoted field is not closed on this line (fields that "
        "span lines are not supported)"
    )


def _parses_as_one_float(text: str) -> bool:
    """Whether the chunk parser (``np.loadtxt``) reads ``text`` as exactly one float64."""
    if not text.strip():
        return False
    try:
        value = np.loadtxt([text], delimiter=",", dtype=np.float64, comments=None, ndmin=1)
    except ValueError:
        return False
    return bool(value.size == 1)


def _npy_header(path: str, f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise CLIError(f"{path}: not a valid .npy file ({exc})") from None
    return shape, fortran, dtype


class NPYArray:
    """Rows of a .npy file read a chunk at a time, without loading or memory-mapping it all."""

    def __init__(self, path: str, what: str, ndims: tuple[int, ...]) -> None:
        self.stdin = path == "-"
        self.path = path = display_name(path)
        self.file: IO[bytes] = sys.stdin.buffer if self.stdin else open(path, "rb")
        # the size checks need a regular file; a pipe's length is known only at its end
        regular = stat.S_ISREG(os.fstat(self.file.fileno()).st_mode)
        if regular and os.fstat(self.file.fileno()).st_size == 0:
            raise CLIError(f"{path}: empty file")
        self.shape, fortran, self.dtype = _npy_header(path, self.file)
        if len(self.shape) not in ndims:
            raise CLIError(f"{path}: expected {what}; got an array of shape {self.shape}")
        if self.dtype.hasobject:
            raise CLIError(f"{path}: holds Python objects (dtype {self.dtype}); expected {what}")
        self.fortran = fortran and len(self.shape) > 1
        self.row_items = int(np.prod(self.shape[1:]))
        self.n_rows = int(self.shape[0])
        # a damaged header must not make us build 10**9 class names or map a short file
        row_bytes = self.row_items * self.dtype.itemsize
        data_bytes = (
            os.fstat(self.file.fileno()).st_size - self.file.tell()
            if regular
            else row_bytes * self.n_rows  # a pipe: a short one is found as it is read
        )
        if row_bytes * self.n_rows > data_bytes:
            whole = data_bytes // row_bytes if row_bytes else 0
            raise CLIError(
                f"{path}: row {whole + 1}: file ends early (truncated); the header promises shape "
                f"{self.shape}, {row_bytes * self.n_rows:,} bytes of data, and {data_bytes:,} "
                "follow it"
            )
        self.done = 0
        self._mmap: np.ndarray | None = None
        if self.fortran and not regular:
            # column-major rows are not contiguous, and a pipe cannot be mapped: read it whole
            data = self.file.read(row_bytes * self.n_rows)
            if len(data) < row_bytes * self.n_rows:
                raise CLIError(
                    f"{path}: row {len(data) // max(1, row_bytes) + 1}: file ends early "
                    f"(truncated); the header promises {self.n_rows} rows"
                )
            flat = np.frombuffer(data, dtype=self.dtype)
            self._mmap = flat.reshape(self.shape, order="F")
        elif self.fortran:
            # column-major rows are not contiguous; the OS pages this mapping in and out as needed
            self._mmap = np.load(path, mmap_mode="r")

    def close(self) -> None:
        if not self.stdin:
            self.file.close()

    def read(self, count: int) -> np.ndarray:
        count = min(count, self.n_rows - self.done)
        if self._mmap is not None:
            rows = np.array(self._mmap[self.done : self.done + count])
        else:
            nbytes = count * self.row_items * self.dtype.itemsize
            data = self.file.read(nbytes)
            if len(data) != nbytes:
                got = len(data) // max(1, self.row_items * self.dtype.itemsize)
                raise CLIError(
                    f"{self.path}: row {self.done + got + 1}: file ends early (truncated); the "
                    f"header promises {self.n_rows} rows"
                )
            rows = np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:]))
        self.done += count
        return rows


class NPYReader:
    """Reads a 2-D (rows x classes) .npy array of probabilities, or 1-D positive-class ones."""

    def __init__(self, path: str, names: list[str] | None, chunk_rows: int) -> None:
        self.path = display_name(path)
        self.chunk_rows = chunk_rows
        self.array = NPYArray(path, "a 2-D array of probabilities (rows x classes)", (1, 2))
        path = self.path
        if self.array.dtype.kind not in "fiu":
            raise CLIError(
                f"{path}: expected floating-point probabilities; got dtype {self.array.dtype}"
            )
        self.binary = len(self.array.shape) == 1
        k = 2 if self.binary else int(self.array.shape[1])
        if self.array.n_rows == 0:
            raise CLIError(f"{path}: no rows (shape {self.array.shape})")
        if names is not None and len(names) != k:
            raise CLIError(
                f"{path}: --labels gives {len(names)} names but the array has {k} columns"
            )
        self.classes = Classes(names if names is not None else [str(i) for i in range(k)], path)
        dtype = self.array.dtype
        self.eps = float(np.finfo(dtype).eps) if dtype.kind == "f" else 0.0

    def close(self) -> None:
        self.array.close()

    def chunks(self) -> Iterator[Chunk]:
        while self.array.done < self.array.n_rows:
            first = self.array.done + 1
            rows = self.array.read(self.chunk_rows).astype(np.float64)
            if self.binary:
                # check the stored positive-class value itself, so errors quote it
                bad = np.flatnonzero(~((rows >= 0) & (rows <= 1)))
                if bad.size:
                    i = int(bad[0])
                    what = "is missing (NaN)" if np.isnan(rows[i]) else "is not inside [0, 1]"
                    raise CLIError(
                        f"{self.path}: row {first + i}: probability {float(rows[i])!r} of "
                        f"{self.classes.names[1]!r} {what}"
                    )
                rows = np.stack([1 - rows, rows], axis=1)
            positions = np.arange(first, first + rows.shape[0])
            yield Chunk(rows, None, positions, "row", self.eps, str(self.array.dtype))


class ParquetReader:
    """Reads a Parquet file in record batches (pyarrow, imported here only)."""

    def __init__(
        self,
        path: str,
        label_column: str | None,
        names: list[str] | None,
        chunk_rows: int,
        find_label: bool = False,
        id_column: str | None = None,
        sum_tol: float | None = None,
    ) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CLIError(
                f"{display_name(path)}: reading Parquet needs pyarrow; install it with "
                "`pip install 'crossentropy[parquet]'`"
            ) from None
        self.path = display_name(path)
        self.chunk_rows = chunk_rows
        try:
            # Parquet keeps its schema at the end of the file: standard input is read whole
            source = pa.BufferReader(sys.stdin.buffer.read()) if path == "-" else path
            self.file = pq.ParquetFile(source)
        except Exception as exc:
            raise CLIError(
                f"{self.path}: not a readable Parquet file ({' '.join(str(exc).split())})"
            ) from None
        path = self.path
        columns = list(self.file.schema_arrow.names)
        self.columns = columns
        self.found_label: str | None = None
        if label_column is None and find_label:
            label_column = self.found_label = find_label_column(columns)
        if label_column is not None and label_column not in columns:
            raise CLIError(
                f"{path}: no column named {label_column!r}; the columns are {', '.join(columns)}"
            )
        self.label_column = label_column
        self.found_id: str | None = None
        self.id_candidate: str | None = None
        id_name: str | None = None
        if id_column is not None:
            id_name = columns[_id_column(path, id_column, columns, label_column)]
        elif _looks_like_id(columns, label_column) and self.file.metadata.num_rows:
            rest = [c for c in columns[1:] if c != label_column]
            if self._first_rows_sum_to_one(rest, sum_tol):
                id_name = self.found_id = columns[0]
            else:
                self.id_candidate = columns[0]
        self.prob_columns = [c for c in columns if c not in (label_column, id_name)]
        if names is not None and len(names) != len(self.prob_columns):
            raise CLIError(
                f"{path}: --labels gives {len(names)} names but the file has "
                f"{len(self.prob_columns)} probability columns"
            )
        if self.file.metadata.num_rows == 0:
            raise CLIError(f"{path}: no rows")
        self.classes = Classes(names if names is not None else self.prob_columns, path)

    def close(self) -> None:
        self.file.close()

    def _first_rows_sum_to_one(self, columns: list[str], sum_tol: float | None) -> bool:
        """Whether the first batch of ``columns`` holds rows that sum to 1 (numbers only)."""
        try:
            batch = next(self.file.iter_batches(batch_size=self.chunk_rows, columns=columns))
        except StopIteration:
            return False
        values = [batch.column(c).to_numpy(zero_copy_only=False) for c in columns]
        if not all(v.dtype.kind in "fiub" for v in values):
            return False
        floats = [v.dtype for v in values if v.dtype.kind == "f"]
        eps = max((float(np.finfo(d).eps) for d in floats), default=0.0)
        return _sums_to_one(np.column_stack(values).astype(np.float64), sum_tol, eps)

    def chunks(self) -> Iterator[Chunk]:
        done = 0
        for batch in self.file.iter_batches(batch_size=self.chunk_rows):
            cols = []
            dtypes = []
            for name in self.prob_columns:
                col = batch.column(name)
                values = col.to_numpy(zero_copy_only=False)
                if values.dtype.kind not in "fiub":
                    raise CLIError(
                        f"{self.path}: column {name!r} has type {col.type}; expected numbers"
                    )
                dtypes.append(values.dtype)
                cols.append(values.astype(np.float64))
            probs = np.column_stack(cols)
            # the coarsest float type among the columns sets the rounding the values carry
            floats = [d for d in dtypes if d.kind == "f"]
            coarse = max(floats, key=lambda d: float(np.finfo(d).eps)) if floats else None
            eps = float(np.finfo(coarse).eps) if coarse is not None else 0.0
            positions = np.arange(done + 1, done + 1 + probs.shape[0])
            target = None
            if self.label_column is not None:
                texts = [str(v) for v in batch.column(self.label_column).to_pylist()]
                target = self.classes.lookup_many(texts)
                unknown = np.flatnonzero(target < 0)
                if unknown.size:
                    i = int(unknown[0])
                    raise CLIError(
                        f"{self.path}: row {positions[i]}: {self.classes.unknown(texts[i])}"
                    )
            done += probs.shape[0]
            yield Chunk(probs, target, positions, "row", eps, str(coarse or "int"))


# ----------------------------------------------------------------------------------------------
# True labels from a separate file


class TrueLabels:
    """Labels from ``--true``, handed out in the chunk sizes the prediction reader produces."""

    def __init__(self, path: str, classes: Classes) -> None:
        self.path = display_name(path)
        self.classes = classes
        self.count = 0
        self._npy: NPYArray | None = None
        self._text: IO[str] | None = None
        if path != "-" and os.path.isdir(path):
            raise CLIError(f"{path}: is a directory, expected a file of labels")
        if path != "-" and not os.path.isfile(path):
            raise CLIError(f"{path}: no such file")
        if path.endswith(".npy"):
            self._npy = NPYArray(path, "a 1-D array of labels", (1,))
            self.unit = "row"
            self.total: int | None = self._npy.n_rows
            if self.total == 0:
                raise CLIError(f"{path}: no labels (empty array)")
        else:
            self._text = open_text(path)
            self.unit = "line"
            self.total = None
            self.line = 0
            self._header_checked = False

    def close(self) -> None:
        if self._npy is not None:
            self._npy.close()
        if self._text is not None:
            self._text.close()

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``count`` class indices and their positions (fewer only at the end of the file)."""
        if self._npy is not None:
            first = self._npy.done + 1
            values = self._npy.read(count)
            positions = np.arange(first, first + values.shape[0])
            index = self._encode_npy(values, positions)
        else:
            index, positions = self._take_text(count)
        self.count += int(index.shape[0])
        return index, positions

    def _encode_npy(self, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        k = len(self.classes)
        if values.dtype.kind in "iu" and self.classes.integer_names is not None:
            return self._encode_ints_by_name(values, positions)
        if values.dtype.kind in "iu":
            bad = np.flatnonzero((values < 0) | (values >= k))
            if bad.size:
                i = int(bad[0])
                raise CLIError(
                    f"{self.path}: row {positions[i]}: label {int(values[i])} is not a class "
                    f"index in [0, {k})"
                )
            self.classes.positions_used = True
            return values.astype(np.intp)
        if values.dtype.kind in "US":
            texts = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
            return self._encode_texts(texts, positions)
        raise CLIError(
            f"{self.path}: labels must be integers (class indices) or strings (class names); got "
            f"dtype {values.dtype}"
        )

    def _encode_ints_by_name(self, values: np.ndarray, positions: np.ndarray) -> np.ndarray:
        # Class names that are all integers ("1", "0" or "3", "5", "7") are what integer labels
        # mean, as for text labels; positions would silently disagree with the header.
        names = self.classes.integer_names
        assert names is not None
        order = np.argsort(names)
        keys = names[order]
        at = np.clip(np.searchsorted(keys, values), 0, keys.shape[0] - 1)
        bad = np.flatnonzero(keys[at] != values)
        if bad.size:
            i = int(bad[0])
            raise CLIError(
                f"{self.path}: row {positions[i]}: label {int(values[i])} is not one of the "
                f"classes ({self.classes.describe()}); integer labels name classes when every "
                "class name is an integer"
            )
        return order[at].astype(np.intp)

    def _encode_texts(self, texts: list[str], positions: np.ndarray) -> np.ndarray:
        index = self.classes.lookup_many(texts)
        bad = np.flatnonzero(index < 0)
        if bad.size:
            i = int(bad[0])
            raise CLIError(
                f"{self.path}: {self.unit} {positions[i]}: {self.classes.unknown(texts[i].strip())}"
            )
        return index

    def _take_text(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._text is not None  # only called for text files
        texts: list[str] = []
        positions: list[int] = []
        while len(texts) < count:
            block = list(itertools.islice(self._text, count - len(texts)))
            if not block:
                break
            check_utf8(self.path, block, self.line + 1)
            for raw in block:
                self.line += 1
                text = raw.strip()
                if not text:
                    continue
                if not self._header_checked:
                    self._header_checked = True
                    # a first line that names no class is a column header ("label", "y")
                    if self.classes.lookup(_unquote(text)) < 0 and "," not in text:
                        continue
                if "," in text:
                    raise CLIError(
                        f"{self.path}: line {self.line}: expected one label per line, got {text!r}"
                    )
                texts.append(_unquote(text))
                positions.append(self.line)
        pos = np.asarray(positions, dtype=np.int64)
        return self._encode_texts(texts, pos), pos

    def remaining(self) -> bool:
        """Whether labels are left after the predictions ran out."""
        index, _ = self.take(1)
        return index.shape[0] > 0


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


# ----------------------------------------------------------------------------------------------
# Scoring


def _open_reader(args: argparse.Namespace) -> CSVReader | NPYReader | ParquetReader:
    path = args.pred
    if path == "-":
        if args.format is None:
            raise CLIError(
                "PRED is - (standard input): pass --format csv, --format npy or --format parquet"
            )
        if args.true == "-":
            raise CLIError("PRED and --true cannot both be - (standard input)")
    elif not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    elif os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, expected a prediction file")
    fmt = args.format
    if fmt is None:
        fmt = _SUFFIXES.get(os.path.splitext(path)[1].lower())
        if fmt is None:
            raise CLIError(
                f"{path}: cannot tell the format from the suffix; use .csv, .npy or .parquet, "
                "or pass --format"
            )
    if fmt == "npy":
        for flag, given in (("--label-column", args.label_column), ("--id-column", args.id_column)):
            if given is not None:
                raise CLIError(
                    f"{display_name(path)}: a .npy file has no columns ({flag}); give labels with "
                    "--true"
                )
        return NPYReader(path, args.labels, args.chunk_rows)
    find = args.true is None  # without --true, a column named label, y or target holds the labels
    reader = ParquetReader if fmt == "parquet" else CSVReader
    return reader(
        path, args.label_column, args.labels, args.chunk_rows, find, args.id_column, args.tol
    )


def find_label_column(columns: list[str]) -> str | None:
    """The one column named label, y or target (in any case), or None if there are none or more."""
    found = [c for c in columns if c.strip().lower() in LABEL_NAMES]
    return found[0] if len(found) == 1 else None


def _check_chunk(
    path: str,
    chunk: Chunk,
    classes: Classes,
    renormalize: bool,
    tol: float | None,
    hint: str = "",
) -> np.ndarray:
    """Validate a chunk's probabilities; return them (divided by their row sums with
    --renormalize). Row sums follow the library's rule (:mod:`crossentropy._tolerance`): the
    epsilon of a binary file's dtype, and for text the decimals each row was written with; or
    ``tol`` when given."""
    p = chunk.probs
    nan = np.isnan(p)
    if nan.any():
        i, j = (int(v) for v in np.argwhere(nan)[0])
        raise CLIError(
            f"{path}: {chunk.where(i)}: probability of {classes.names[j]!r} is missing (NaN)"
        )
    # with --renormalize any non-negative finite scores are divided by their row sum
    outside = ((p < 0) | np.isinf(p)) if renormalize else ((p < 0) | (p > 1))
    if outside.any():
        i, j = (int(v) for v in np.argwhere(outside)[0])
        allowed = "non-negative and finite" if renormalize else "inside [0, 1]"
        raise CLIError(
            f"{path}: {chunk.where(i)}: probability {float(p[i, j])!r} of {classes.names[j]!r} "
            f"is not {allowed}{hint}"
        )
    if renormalize:
        # scaled by the row maximum first, so that huge finite scores do not overflow the sum
        top = p.max(axis=1)
        zero = np.flatnonzero(top <= 0)
        if zero.size:
            raise CLIError(
                f"{path}: {chunk.where(int(zero[0]))}: probabilities sum to 0; cannot renormalize"
            )
        q = p / top[:, None]
        return q / q.sum(axis=1)[:, None]
    sums = p.sum(axis=1, keepdims=True)
    text = chunk.unit == "line"
    check = check_row_sums(namespace(p), p, sums, 1, sum_tol=tol, eps=chunk.eps, from_text=text)
    off = np.flatnonzero(check.off[:, 0])
    if off.size:
        i = int(off[0])
        # a binary file has no decimals; say which --tol fits if its values are rounded ones
        rounded = None
        if not text and tol is None:
            rounded = rounded_tolerance(np, p, float(sums[i, 0]) - 1, p.shape[1], chunk.eps)
        hint = ""
        if rounded is not None:
            hint = (
                f" (its values are all multiples of 1e-{rounded[0]:02d}: if they were rounded to "
                f"{rounded[0]} decimals, --tol {rounded[1]:.3g} allows that rounding)"
            )
        raise CLIError(
            f"{path}: {chunk.where(i)}: probabilities sum to {float(sums[i, 0]):.10g}, not 1 "
            f"({check.describe((i, 0), chunk.stored)}); pass --renormalize to divide each row by "
            f"its sum, or --tol to set the tolerance{hint}"
        )
    return p


def _note(text: str) -> None:
    """One line on stderr saying what the command inferred from the file."""
    print(f"crossentropy score: {text}", file=sys.stderr)


def score_file(args: argparse.Namespace) -> tuple[Any, Classes]:
    """Stream the prediction file (and the label file) through a ScoreAccumulator."""
    from crossentropy.metrics import ScoreAccumulator

    if args.chunk_rows < 1:
        raise CLIError(f"--chunk-rows must be at least 1; got {args.chunk_rows}")
    if args.tol is not None and (args.tol < 0 or not math.isfinite(args.tol)):
        raise CLIError(f"--tol must be a non-negative number; got {args.tol}")
    reader = _open_reader(args)
    pred = reader.path
    truth: TrueLabels | None = None
    try:
        classes = reader.classes
        if args.true is not None:
            truth = TrueLabels(args.true, classes)
        elif isinstance(reader, NPYReader) or (
            reader.label_col is None
            if isinstance(reader, CSVReader)
            else reader.label_column is None
        ):
            columns = getattr(reader, "columns", [])
            named = [c for c in columns if c.strip().lower() in LABEL_NAMES]
            several = f" (several columns could be: {', '.join(named)})" if len(named) > 1 else ""
            raise CLIError(
                f"{pred}: no true labels{several}; pass --label-column NAME (a column of the "
                "file) or --true FILE"
            )
        found = getattr(reader, "found_label", None)
        if found is not None:
            _note(
                f"true labels from column {found!r} of {pred} (choose another with "
                "--label-column or --true)"
            )
        found_id = getattr(reader, "found_id", None)
        if found_id is not None:
            _note(
                f"column {found_id!r} of {pred} taken as row ids, not probabilities: the other "
                "columns sum to 1 (choose another with --id-column)"
            )
        candidate = getattr(reader, "id_candidate", None)
        hint = ""
        if candidate is not None:
            hint = f"; or --id-column {candidate} if column {candidate!r} holds row ids"
            if args.renormalize:
                _note(
                    f"column {candidate!r} of {pred} is scored as a class, since the other "
                    f"columns do not sum to 1; pass --id-column {candidate} if it holds row ids"
                )
        acc = ScoreAccumulator(list(classes.names), n_bins=args.bins, eps=args.eps)
        n = 0
        for chunk in reader.chunks():
            probs = _check_chunk(pred, chunk, classes, args.renormalize, args.tol, hint)
            if truth is not None:
                target, _ = truth.take(probs.shape[0])
                if target.shape[0] < probs.shape[0]:
                    raise CLIError(
                        f"{truth.path}: has {truth.count} labels but {pred} has more rows "
                        f"({pred} {chunk.where(target.shape[0])} has no label)"
                    )
            else:
                assert chunk.target is not None  # the reader holds the label column
                target = chunk.target
            acc._add(target, probs, None)
            n += probs.shape[0]
        if n == 0:
            raise CLIError(f"{pred}: no data rows (only a header)")
        if truth is not None and truth.remaining():
            raise CLIError(
                f"{truth.path}: has more labels than {pred} has rows ({n}); the lengths must match"
            )
        if classes.positions_used:
            _note(classes.positions_note())
        return acc.compute(), classes
    finally:
        reader.close()
        if truth is not None:
            truth.close()


# JSON has no infinity: an infinite value is written as this string (float("Infinity") in
# Python, Number("Infinity") in JavaScript), and null means "not defined" (a class without
# samples, an empty calibration bin), so the two cannot be confused.
INFINITY = "Infinity"


def _finite(x: float) -> float | str | None:
    """``x`` for the JSON report: a float, ``"Infinity"``/``"-Infinity"``, or None for NaN."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return INFINITY if x > 0 else "-" + INFINITY
    return x


def report_dict(path: str, scores: Any, base: float | None) -> dict[str, Any]:
    """The JSON report. An infinite value (a zero probability on a true class, without --eps;
    ``n_zero_prob`` counts those rows) is the string ``"Infinity"``; a value that is not defined
    (the cross-entropy of a class with no samples, an empty bin's accuracy) is null."""
    unit = 1.0 if base is None else math.log(base)
    cal = scores.calibration
    pc = scores.per_class
    return {
        "file": path,
        "n": scores.n,
        "classes": [str(x) for x in pc.labels.tolist()],
        "log_loss_nats": _finite(scores.log_loss),
        "log_loss_bits": _finite(scores.log_loss_bits),
        "base": base,
        "log_loss": _finite(scores.log_loss / unit),
        "perplexity": _finite(scores.perplexity),
        "accuracy": _finite(scores.accuracy),
        "brier_score": _finite(scores.brier_score),
        "ece": _finite(cal.ece),
        "mce": _finite(cal.mce),
        "n_bins": int(cal.counts.shape[0]),
        "n_zero_prob": scores.n_zero_prob,
        "per_class": [
            {
                "label": str(label),
                "count": int(count),
                "cross_entropy": _finite(ce / unit),
                "accuracy": _finite(acc),
            }
            for label, count, ce, acc in zip(
                pc.labels.tolist(), pc.counts.tolist(), pc.cross_entropy, pc.accuracy
            )
        ],
        "reliability": [
            {
                "lower": float(cal.bin_edges[b]),
                "upper": float(cal.bin_edges[b + 1]),
                "count": int(cal.counts[b]),
                "confidence": _finite(cal.confidence[b]),
                "accuracy": _finite(cal.accuracy[b]),
            }
            for b in range(cal.counts.shape[0])
        ],
    }


def _fmt(x: float | str | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):  # an infinite value
        return "-inf" if x.startswith("-") else "inf"
    return f"{x:.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich exits with status 1 here; let `run` end quietly with 0 instead
            self.quiet = True
            raise BrokenPipeError

    console = _Console(highlight=False)
    unit = (
        "nats"
        if report["base"] is None
        else ("bits" if report["base"] == 2 else f"base {report['base']:g}")
    )
    console.print(f"[bold]crossentropy score[/bold] {escape(report['file'])}")
    summary = Table(show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("samples", f"{report['n']:,}")
    summary.add_row("log loss (nats)", _fmt(report["log_loss_nats"]))
    summary.add_row("log loss (bits)", _fmt(report["log_loss_bits"]))
    if report["base"] not in (None, 2):
        summary.add_row(f"log loss ({unit})", _fmt(report["log_loss"]))
    summary.add_row("perplexity", _fmt(report["perplexity"]))
    summary.add_row("accuracy", _fmt(report["accuracy"]))
    summary.add_row("Brier score", _fmt(report["brier_score"]))
    summary.add_row(f"ECE ({report['n_bins']} bins)", _fmt(report["ece"]))
    if report["n_zero_prob"]:
        summary.add_row("rows with p(true) = 0", f"{report['n_zero_prob']:,} (pass --eps to clip)")
    console.print(summary)
    per_class = Table(title=f"per class (cross-entropy in {unit})")
    per_class.add_column("class")
    per_class.add_column("count", justify="right")
    per_class.add_column("cross-entropy", justify="right")
    per_class.add_column("accuracy", justify="right")
    for row in report["per_class"]:
        label = escape(row["label"])  # class names such as "[pad]" are text, not markup
        shown = _fmt(row["cross_entropy"])
        per_class.add_row(label, f"{row['count']:,}", shown, _fmt(row["accuracy"]))
    console.print(per_class)


def run(args: argparse.Namespace) -> int:
    if args.base is not None and (not math.isfinite(args.base) or args.base <= 0 or args.base == 1):
        raise CLIError(f"--base must be a positive number other than 1; got {args.base:g}")
    if args.eps is not None and not 0 < args.eps < 0.5:
        raise CLIError(f"--eps must be in (0, 0.5); got {args.eps:g}")
    if not 1 <= args.bins <= MAX_BINS:
        raise CLIError(f"--bins must be between 1 and {MAX_BINS:,}; got {args.bins}")
    scores, _ = score_file(args)
    report = report_dict(display_name(args.pred), scores, args.base)
    try:
        if args.json:
            sys.stdout.write(json.dumps(report, indent=2, allow_nan=False) + "\n")
            sys.stdout.flush()
        else:
            print_report(report)
    except BrokenPipeError:
        # The reader left early (`crossentropy score ... | head -2`): it has what it wanted, so
        # this is success, not an error. Later writes (the interpreter's final flush) go to
        # /dev/null.
        _silence_stdout()
    return 0
