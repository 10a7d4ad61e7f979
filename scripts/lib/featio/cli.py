"""A step's command line: a FeatgapError or OSError becomes one line on stderr and exit code 1.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from scripts.lib.featio.errors import FeatgapError, describe_os_error


def run_cli(main_fn, argv: Sequence[str] | None = None) -> None:
    """Run a step's CLI; a FeatgapError becomes one clear line on stderr and exit code 1.

    So does an operating-system error (disk full, permission denied, a file gone): it names the
    file and what happened, which is all a user can act on.
    """
    try:
        main_fn(argv)
    except FeatgapError as err:
        print(f"featgap error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:
        print(f"featgap error: {describe_os_error(err)}", file=sys.stderr)
        raise SystemExit(1) from None
