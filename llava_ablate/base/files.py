"""Files that several processes share: a lock for "one does it, the others wait", and writes that
readers see whole or not at all."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created with its folder) for the block.

    Several ranks on one node may ask for the same conversion or download: one does it, the
    others wait here and then find it done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file or fill a directory at; when the
    block ends, it replaces `path` in one `os.replace`, so a reader (another rank, a later run)
    finds the old `path` or the new one, never half of it. A crash leaves only the temporary
    (`.<name>.<pid>.tmp`, named so that concurrent writers never share one); an error in the
    block removes it.

    A directory at `path` is removed just before the replace (`os.replace` cannot replace a
    non-empty one); callers that may race hold a `file_lock` or tolerate the loser's OSError.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
