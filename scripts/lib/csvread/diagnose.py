"""Find the line and column of bad CSV input: the slow, exact path, run only after polars refused a
chunk (or returned empty values), so the fast path pays nothing for it.

The rules are polars' own (what `pl.read_csv` accepts for Float32 / Int64 columns), written out so
that the message can say which value is wrong: a trailing space, `1_000`, a Unicode digit or a
thousands separator are refused here exactly as polars refuses them. When these rules find nothing,
each line is handed to polars alone, which still yields a line and a column.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

NUMBER_TEXT = re.compile(r" *[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)",
                         re.IGNORECASE | re.ASCII)
INTEGER_TEXT = re.compile(r" *[+-]?[0-9]+", re.ASCII)
POLARS_COLUMN = re.compile(r"column '?c(\d+)'?")


@dataclass(frozen=True)
class Problem:
    """What is wrong where: `line` counts from 0 within the chunk; `column` is a header name or None."""

    line: int
    column: str | None
    what: str


@dataclass(frozen=True)
class Layout:
    names: list[str]
    features: frozenset[int]
    integers: frozenset[int]  # label and index
    path: int | None
    wanted: tuple[int, ...]

    @classmethod
    def of(cls, plan: dict) -> Layout:
        integers = {plan["label"]} | ({plan["index"]} if plan["index"] is not None else set())
        return cls(plan["names"], frozenset(plan["features"]), frozenset(integers), plan["path"],
                   tuple(sorted(integers | set(plan["features"]) | ({plan["path"]} if plan["path"] is not None
                                                                      else set()))))


def unbalanced_quote(data: bytes, layout: Layout) -> Problem | None:
    """The first line whose quotes do not close on it (a stray `"`, or a quoted newline).

    Byte-range parts and chunks are cut at newlines, so a record must be one line; an RFC-4180
    line has an even number of `"` (escaped quotes come in pairs). Called only on chunks with a `"`.
    """
    for number, line in enumerate(data.split(b"\n")):
        if line.count(b'"') % 2:
            return Problem(number, _name(layout, _open_quote_field(line)),
                           'a `"` that does not close on this line (a stray quote, or a newline inside a '
                           "quoted field, which is not supported: one record per line)")
    return None


STRAY_CR = re.compile(rb"\r(?!\n)")


def stray_carriage_return(data: bytes, layout: Layout) -> Problem | None:
    """The first CR that does not end a line (CRLF is a line end; a lone CR is not).

    Polars reads a lone CR inside a line as part of a value (`0.1\r` as 0.1, a path keeps it), and
    CR-only files are refused when planned, so any lone CR in a chunk is refused. Called only on
    chunks whose CR count differs from their CRLF count."""
    found = STRAY_CR.search(data)
    if found is None:
        return None
    start = data.rfind(b"\n", 0, found.start()) + 1
    return Problem(data.count(b"\n", 0, found.start()), _name(layout, data[start : found.start()].count(b",")),
                   "a carriage return (CR) inside the line; expected CR only as part of a CRLF line end")


def _open_quote_field(line: bytes) -> int:
    field, quoted, opened_in = 0, False, 0
    for byte in line:
        if byte == 0x22:  # '"'
            quoted = not quoted
            opened_in = field
        elif byte == 0x2C and not quoted:  # ','
            field += 1
    return opened_in


def _name(layout: Layout, position: int) -> str | None:
    return layout.names[position] if 0 <= position < len(layout.names) else None


def find_problem(data: bytes, layout: Layout, parse_line: Callable[[bytes], None]) -> Problem | None:
    """The first bad line of a chunk and why; None if every line parses on its own."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        return Problem(data.count(b"\n", 0, err.start), _name(layout, data[start : err.start].count(b",")),
                       f"byte 0x{data[err.start]:02x} is not UTF-8 (save the file as UTF-8)")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the chunk's final newline
    for number, line in enumerate(lines):
        problem = check_line(line.removesuffix("\r"), layout)
        if problem is not None:
            return Problem(number, problem[0], problem[1])
    for number, line in enumerate(lines):  # rules above found nothing: ask polars line by line
        try:
            parse_line(line.encode() + b"\n")
        except (pl.exceptions.PolarsError, ValueError, OSError) as err:
            message = str(err).splitlines()[0]
            match = POLARS_COLUMN.search(message)
            column = _name(layout, int(match.group(1))) if match else None
            return Problem(number, column, f"could not be parsed ({message})")
    return None


def check_line(line: str, layout: Layout) -> tuple[str | None, str] | None:
    if not line:
        return None, "an empty line (expected a data row; blank lines are allowed only at the end)"
    fields = next(csv.reader([line]))
    if len(fields) != len(layout.names):
        return None, f"{len(fields)} fields, expected {len(layout.names)} as in the header"
    for position in layout.wanted:
        value, name = fields[position], layout.names[position]
        if position in layout.features:
            if value == "":
                return name, "empty value, expected a number"
            if not NUMBER_TEXT.fullmatch(value):
                return name, f"value {value!r}, expected a number (ASCII digits, '.', 'e'; no spaces after it)"
        elif position in layout.integers:
            if value == "":
                return name, "empty value, expected an integer"
            if not INTEGER_TEXT.fullmatch(value):
                return name, f"value {value!r}, expected an integer"
        elif position == layout.path and value == "":
            return name, "empty value, expected an image path"
    return None
