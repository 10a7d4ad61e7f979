"""How a step learns where to write: the rule owns every output path.

A step declares the names and formats of what it writes (`OUTPUTS = {"summary": ".json", ...}`,
`<SUBCOMMAND>_OUTPUTS` for each subcommand of a step that has them);
the rule alone chooses the paths and passes each as `--output NAME=PATH` (workflow/rules/common.smk:
`output_args`). The step function takes them as `outputs` and checks them with `output_paths`
before any work, so a step writes exactly the paths it is given and nothing else.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from scripts.lib.featio.errors import FeatgapError


def add_output_args(parser: argparse.ArgumentParser, outputs: Mapping[str, str]) -> None:
    """`--output NAME=PATH`, repeated: one per named output of the step."""
    parser.add_argument("--output", action="append", default=[], metavar="NAME=PATH",
                        help=f"one per output: {', '.join(f'{n}=PATH ({s})' for n, s in outputs.items())}")


def parse_outputs(pairs: Sequence[str], flag: str = "--output") -> dict[str, Path]:
    """`NAME=PATH` arguments as {NAME: PATH}; a path may contain `=` (split at the first one).
    The report's named inputs (`--input NAME=PATH`) are parsed the same way."""
    named: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise FeatgapError(f"{flag} {pair!r}: expected NAME=PATH")
        if name in named:
            raise FeatgapError(f"{flag} {name}: given twice ({named[name]} and {path})")
        named[name] = Path(path)
    return named


def output_paths(outputs: Mapping[str, str | os.PathLike], expected: Mapping[str, str], step: str) -> dict[str, Path]:
    """The step's output paths by name, checked before any work: exactly the names it writes (a
    missing one would fail only after the work, an unknown one would never be written), each with
    the suffix of the format written there (a table is CSV or Parquet by its suffix)."""
    missing = [name for name in expected if name not in outputs]
    unknown = sorted(set(outputs) - set(expected))
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] * bool(missing) + [f"unknown {', '.join(unknown)}"] * bool(unknown)
        raise FeatgapError(f"{step}: --output names needed: {', '.join(expected)} ({'; '.join(problems)})")
    paths = {name: Path(outputs[name]) for name in expected}
    for name, suffix in expected.items():
        if paths[name].suffix != suffix:
            raise FeatgapError(f"{step}: --output {name}={paths[name]}: expected a {suffix} file")
    return paths
