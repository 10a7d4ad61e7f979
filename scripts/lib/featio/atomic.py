"""Atomic outputs: a file or folder appears only when its step succeeded.

A failed step leaves nothing that looks finished; a temporary left by a killed job is removed by
the next attempt at the same output.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds.

    Works for files and folders. A failed step leaves nothing that looks finished.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TMP_INFIX}{os.getpid()}")
    # A job killed with SIGKILL cannot clean up: its temporary (hundreds of MB for a shard) is
    # removed by the next attempt at the same output.
    for stale in final.parent.glob(f".{glob.escape(final.name)}{TMP_INFIX}*"):
        if _is_dead_temporary(stale):
            _remove(stale)
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


TMP_INFIX = ".tmp-"


def _is_dead_temporary(path: Path) -> bool:
    """A `.NAME.tmp-PID` whose process no longer runs on this machine (or this process's own)."""
    pid = path.name.rpartition(TMP_INFIX)[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove every `.NAME.tmp-PID` in `folder` whose writer is gone (after kill -9); return them."""
    removed = [p for p in Path(folder).glob(f".*{TMP_INFIX}*") if _is_dead_temporary(p)]
    for path in removed:
        _remove(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
