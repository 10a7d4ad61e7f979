"""Library: how a step uses the cores its rule gives it. No CLI.

Every rule with `threads:` passes them one way, `--threads N` (never an environment prefix), and
the step calls `limit_threads(N)` first thing: BLAS and OpenMP pools already loaded (numpy,
scipy, scikit-learn) are limited at run time with threadpoolctl, which exists for exactly this
(an `OMP_NUM_THREADS` prefix only works if it is set before those libraries load), and PyTorch's
intra-op pool when the step uses PyTorch.
"""
from __future__ import annotations

import argparse
import sys

from threadpoolctl import threadpool_limits

# Kept for the life of the process: the limit holds until the step exits.
_LIMITS: list[threadpool_limits] = []


def add_threads_arg(parser: argparse.ArgumentParser, default: int = 1) -> None:
    parser.add_argument("--threads", type=int, default=default,
                        help=f"cores this step may use (the rule's threads; default {default})")


def limit_threads(threads: int | None) -> int:
    """Limit every thread pool of this process to `threads` (at least 1); returns the number."""
    n = max(1, int(threads or 1))
    _LIMITS.append(threadpool_limits(limits=n))
    if "torch" in sys.modules:  # only when the step uses it: importing torch costs ~1.5 s
        sys.modules["torch"].set_num_threads(n)
    return n
