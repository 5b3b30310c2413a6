"""Writing outputs safely: the one atomic writer, the writability check and the one-writer lock.

- :func:`atomic_write` gives a temporary path beside the target; when the block ends without an
  error the file is flushed to disk (fsync) and renamed over the target, so a reader (or a run
  killed at any moment) sees either the previous complete file or the new one. Checkpoints,
  HDF5 results and figures are all written through it. A full disk becomes a one-line
  :class:`DiskFullError`; the temporary file is removed and the previous file stays as it was.
- :func:`check_writable` refuses an output that cannot be written (read-only or immutable
  folder, a folder where a file is wanted or the reverse) before any work starts.
- :func:`output_lock` lets one process at a time write an output (a run folder or a result
  file): an advisory ``flock`` on a lock file beside it, released by the kernel when the holder
  dies, so a killed run never leaves it stuck.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from .errors import UserError

DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS}


class DiskFullError(UserError):
    """``path`` could not be written because the disk (or a size quota) is full; nothing that was
    written before is damaged. ``rerun`` says how to continue once space is freed."""

    def __init__(self, path: Path, reason: str, rerun: str = "rerun the same command") -> None:
        self.path, self.reason, self.rerun = path, reason, rerun
        super().__init__(f"{path}: not written, no disk space left for it ({reason}); the files written "
                         f"before are intact — free some space and {rerun}.")


def _os_error_in(err: BaseException) -> Optional[OSError]:
    """The first OSError with an errno in ``err``'s chain (torch's zip writer, for one, reports
    the OSError of a refused write only as the context of its own RuntimeError)."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder to write the new file to; when the block ends
    without an error, fsync it, rename it over ``path`` and fsync the folder.

    On any error the temporary file is removed and ``path`` is left untouched. A full disk or
    size limit (ENOSPC, EFBIG, EDQUOT) raises :class:`DiskFullError`; a refused write (read-only
    or immutable folder) a :class:`UserError`."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except Exception as err:
        cause = _os_error_in(err)
        if cause is not None and cause.errno in DISK_FULL:
            raise DiskFullError(path, os.strerror(cause.errno)) from None
        if cause is not None and cause.errno in REFUSED:
            raise UserError(f"{path}: cannot write it ({os.strerror(cause.errno)}); "
                            "choose a writable --out.") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Raise a one-line :class:`UserError` unless ``path`` (a folder if ``folder``, else a file)
    can be written: it must not be a file where a folder is wanted or the reverse, and the
    nearest existing folder on its way must accept a new file (tried for real: permission bits
    alone say nothing for root, a read-only mount or an immutable folder)."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder; choose another --out.")
    if not folder and path.is_dir():
        raise UserError(f"{path} is a folder; --out needs a file name (a new one, or a file inside it).")
    where = _existing_ancestor(path if folder else path.parent)
    if not where.is_dir():
        raise UserError(f"{path}: {where} is a file, not a folder; choose another --out.")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=".alignsam-write-test-")
    except OSError as err:
        raise UserError(f"{path}: cannot write in {where} ({err.strerror}); choose a writable --out.") from None
    os.close(fd)
    os.unlink(probe)


def lock_path(path: str | os.PathLike, folder: bool = False) -> Path:
    """The lock file of an output: ``<folder>/.lock`` for a run folder, ``.<name>.lock`` beside a file."""
    path = Path(path)
    return path / ".lock" if folder else path.with_name(f".{path.name}.lock")


_held: dict[str, int] = {}  # lock files this process holds -> nesting depth
_held_guard = threading.Lock()


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        try:
            created.mkdir()
        except FileExistsError:
            pass  # made by a concurrent process meanwhile
        except OSError as err:
            raise UserError(f"{created}: cannot create the folder ({err.strerror}); "
                            "choose a writable --out.") from None
    return missing


def _holder(lock: Path) -> str:
    """' (pid N)' from the lock file, if it can be read."""
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(lock.read_text())})"
    return ""


def _acquire(lock: Path, output: Path) -> int:
    """Open and flock ``lock``; the inode is checked after locking, so a lock file unlinked by
    its releasing holder meanwhile (and maybe recreated by a third process) is never held."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"{output}: cannot write in {lock.parent} ({err.strerror}); "
                            "choose a writable --out.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{output}: another alignsam-diag run{_holder(lock)} is writing it; wait until it "
                            "ends, or choose another --out.") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                with contextlib.suppress(OSError):  # the pid is for messages only; a full disk may refuse it
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, folder: bool = False) -> Iterator[None]:
    """Be the only writer of ``path`` (a run folder if ``folder``, else a result file) while the
    block runs; another process is refused at once with a one-line :class:`UserError`.

    The output is first checked with :func:`check_writable`, and missing folders are created;
    on exit the lock file is removed, and so are the folders it created if they stayed empty
    (a job that failed leaves nothing behind). Re-entrant within a process: a library call that
    locks an output its caller already holds goes ahead."""
    key = os.path.abspath(lock_path(path, folder))
    with _held_guard:
        depth = _held.get(key, 0)
        _held[key] = depth + 1
    try:
        with contextlib.nullcontext() if depth else _exclusive(Path(path), folder):
            yield
    finally:
        with _held_guard:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]


@contextlib.contextmanager
def _exclusive(path: Path, folder: bool) -> Iterator[None]:
    """The flock of :func:`output_lock`, held from entry to exit."""
    check_writable(path, folder)
    lock = lock_path(path, folder)
    created = _make_folders(lock.parent)
    try:
        fd = _acquire(lock, path)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still holding it: see _acquire
            os.close(fd)
    finally:
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty."""
    for created in folders:
        with contextlib.suppress(OSError):
            created.rmdir()
