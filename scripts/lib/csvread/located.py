"""Errors that name the place: the file, the line, the column and what was expected.

Line numbers are counted only when reporting an error (a 13 GB file is not counted otherwise), and
a bad value is quoted as it is written in the file.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scripts.lib.csvread.columns import ChunkColumns
from scripts.lib.csvread.diagnose import NUMBER_TEXT, Layout, Problem, find_problem
from scripts.lib.csvread.source import count_lines, open_source
from scripts.lib.featio.errors import FeatgapError

FLOAT32_MAX = float(np.finfo(np.float32).max)


class ChunkErrors:
    """The one-line errors of one planned CSV (`parse_line`: the strict reader that refused a chunk)."""

    def __init__(self, plan_: dict, num_classes: int, parse_line: Callable[[bytes], object]):
        self.plan = plan_
        self.csv = Path(plan_["csv"])
        self.compression = plan_.get("compression", "none")
        self.layout = Layout.of(plan_)
        self.num_classes = num_classes
        self.parse_line = parse_line

    def diagnose(self, data: bytes, offset: int, fallback: str) -> FeatgapError:
        """The first bad line of a chunk, found with the slow, exact rules of diagnose.py."""
        problem = find_problem(data, self.layout, self.parse_line)
        if problem is not None:
            return self.error_at(offset, problem)
        first = self.line_number(offset, 0)
        last = first + data.count(b"\n")
        return FeatgapError(f"{self.csv}: lines {first}..{last}: could not parse ({fallback})")

    def line_number(self, offset: int, local_line: int) -> int:
        """1-based line number in the file (header = line 1); counted only when reporting an error."""
        with open_source(self.csv, self.compression) as handle:
            return count_lines(handle, 0, offset) + local_line + 1

    def raw_field(self, offset: int, local_line: int, position: int) -> str:
        """A field's text as written in the file (error messages only)."""
        with open_source(self.csv, self.compression) as handle:
            handle.seek(offset)
            for _ in range(local_line):
                handle.readline()
            line = handle.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        fields = next(csv.reader([line]), [])
        return fields[position] if position < len(fields) else ""

    def error(self, offset: int, local_line: int, column: str | None, what: str) -> FeatgapError:
        where = f"line {self.line_number(offset, local_line)}"
        col = f", column '{column}'" if column is not None else ""
        return FeatgapError(f"{self.csv}: {where}{col}: {what}")

    def error_at(self, offset: int, problem: Problem) -> FeatgapError:
        return self.error(offset, problem.line, problem.column, problem.what)

    def check_values(self, chunk: ChunkColumns, offset: int) -> None:
        names = self.plan["names"]
        matrix, labels = chunk.matrix, chunk.labels
        finite = None if chunk.known_finite else np.isfinite(matrix)
        if finite is not None and not finite.all():
            row, col = (int(i) for i in np.argwhere(~finite)[0])
            position = self.plan["features"][col]
            text = self.raw_field(offset, row, position)
            overflow = bool(NUMBER_TEXT.fullmatch(text)) and math.isfinite(float(text))
            what = (f"value {text!r} is outside the float32 range (±{FLOAT32_MAX:.4g})" if overflow
                    else f"value {text!r}, expected a finite number (no NaN or inf)")
            raise self.error(offset, row, names[position], what)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.error(offset, row, names[self.plan["label"]],
                             f"label {labels[row]}, expected an integer in 0..{self.num_classes - 1}")
        if chunk.empty_path_row is not None:
            raise self.error(offset, chunk.empty_path_row, names[self.plan["path"]],
                             "empty value, expected an image path")
