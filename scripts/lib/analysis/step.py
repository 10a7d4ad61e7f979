"""What every analysis step does first, and its command line.

An analysis step is a function `name(*, <inputs>, outputs, options, seed, head_name, …) -> summary`
(tests call it) and a thin CLI that parses exactly those arguments. Both ends are the same for
every analysis, so they are written once here:

* `begin(name, options, outputs, declared)`: the timer, the options over the schema's defaults
  (`analysis.<name>`, scripts/lib/options.py) and the checked output paths (scripts/lib/step_outputs.py);
* `analysis_cli(fn, …)`: `--<input> PATH` per input, `--output NAME=PATH` per declared output,
  `--options JSON`, `--seed`, `--threads`, and `--head-name` (and `--test-name`), which are
  required: a step never works out which head a file belongs to from its path.
"""
from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.jsonio import parse_json_arg
from scripts.lib.options import merge_options
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.lib.threads import add_threads_arg, limit_threads


class Begun(NamedTuple):
    started: float  # time.perf_counter() at the start (the summary's wall time)
    opts: dict[str, Any]  # the step's options, every default filled from the schema
    files: dict[str, Path]  # output name → path, checked against what the step declares


def begin(name: str, options: Mapping[str, Any] | None, outputs: Mapping[str, str | Path],
          declared: Mapping[str, str]) -> Begun:
    """Start an analysis step: timer, options of `analysis.<name>`, output paths (checked before any work)."""
    started = time.perf_counter()
    return Begun(started, merge_options(options, f"analysis.{name}"), output_paths(outputs, declared, name))


def analysis_cli(fn: Callable[..., dict[str, Any]], *, description: str, declared: Mapping[str, str],
                 inputs: Mapping[str, str], per_head: bool = True, per_test: bool = False,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None,
                 argv: Sequence[str] | None = None) -> None:
    """Run `fn` from the command line: each input `--flag` becomes the keyword `flag` (dashes as
    underscores), plus outputs, options, seed and the names; `extra` adds a step's own arguments
    (passed on under their own names). Prints the summary's verdict."""

    def main(args_in: Sequence[str] | None) -> None:
        parser = argparse.ArgumentParser(description=description)
        for flag, help_text in inputs.items():
            parser.add_argument(f"--{flag}", required=True, help=help_text)
        add_output_args(parser, declared)
        parser.add_argument("--options", default="{}", help="the step's config section as JSON")
        parser.add_argument("--seed", type=int, default=0)
        if per_head:
            parser.add_argument("--head-name", required=True, help="the head or baseline the inputs belong to")
        if per_test:
            parser.add_argument("--test-name", required=True, help="test1 or test2")
        add_threads_arg(parser)
        own: set[str] = set()
        if extra is not None:
            before = {action.dest for action in parser._actions}
            extra(parser)
            own = {action.dest for action in parser._actions} - before
        args = parser.parse_args(args_in)
        limit_threads(args.threads)
        kwargs: dict[str, Any] = {flag.replace("-", "_"): getattr(args, flag.replace("-", "_")) for flag in inputs}
        kwargs.update({dest: getattr(args, dest) for dest in own})
        if per_head:
            kwargs["head_name"] = args.head_name
        if per_test:
            kwargs["test_name"] = args.test_name
        if "threads" in inspect.signature(fn).parameters:  # a step that sizes its own pools (t-SNE)
            kwargs["threads"] = args.threads
        summary = fn(**kwargs, outputs=parse_outputs(args.output), options=parse_json_arg(args.options, "options"),
                     seed=args.seed)
        print(summary["verdict"])

    run_cli(main, argv)
