"""Input and configuration errors a user must fix, and their one-line descriptions.
"""
from __future__ import annotations

import errno


class FeatgapError(Exception):
    """An input or configuration problem a user must fix; the CLI prints only its message."""


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def describe_os_error(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or first_line(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)
    hint = " (the disk is full: free space and run again; finished outputs are kept)" if full else ""
    return f"{where}{what}{hint}"
