"""Atomic file and directory writes that leave nothing behind on an exception, Ctrl-C or SIGTERM,
and real-path checks that keep outputs away from the source model."""

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from typing import Callable, Iterable, Iterator


class OutputWriteError(OSError):
    """The output could not be written (a full disk, a quota, ``ulimit -f``)."""


_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# torch.save's C++ writer reports a short write without an errno
_SHORT_WRITE = ("unexpected pos", "file write failed", "No space left", "File too large")


def out_of_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return True
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _SHORT_WRITE)


@contextlib.contextmanager
def _out_of_space_as_error(what: str, after: str = "") -> Iterator[None]:
    """Turn a full disk, a quota or ``ulimit -f`` into one OutputWriteError line."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if out_of_space(e):
            text = str(e).strip()
            first = text.splitlines()[0][:200] if text else type(e).__name__
            raise OutputWriteError(f"cannot write {what}: no space left on the device or over the "
                                   f"file size limit ({first}){after}") from None
        raise


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM as KeyboardInterrupt in the block, so that ``finally`` clauses (temporary files)
    run on ``kill`` as they do on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def directory_mode() -> int:
    """What ``mkdir`` gives under the user's umask (mkdtemp gives 0700)."""
    return 0o777 & ~_umask()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)``, renamed onto ``path``: a crash or a signal never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    os.close(fd)
    try:
        with sigterm_as_interrupt():
            with _out_of_space_as_error(path):
                write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600, not what open() would give
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def real_path(path: str) -> str:
    """``path`` with every symlink resolved (also for a path that does not exist yet)."""
    return os.path.realpath(os.path.abspath(path))


def is_within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or lies below it, after resolving symlinks."""
    path, directory = real_path(path), real_path(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_output_dir(output_dir: str, source_files: Iterable[str] = (), overwrite: bool = False,
                     source_dirs: Iterable[str] = ()) -> None:
    """Refuse, before any work, an output dir that would hold or replace one of ``source_files`` or
    sit inside one of ``source_dirs`` (the source exp dir), that is a file, that exists non-empty
    without ``overwrite``, or whose parent cannot be written. Symlinks are resolved."""
    out = real_path(output_dir)
    for src in source_files:
        if is_within(src, out):
            raise ValueError(f"output dir {output_dir} holds the source file {src} (real path "
                             f"{real_path(src)}); choose another output dir")
    for src_dir in source_dirs:
        if is_within(out, src_dir):
            raise ValueError(f"output dir {output_dir} is inside the source model's dir "
                             f"{real_path(src_dir)}; choose a dir beside it")
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output dir {output_dir} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"output directory {output_dir} exists and is not empty (use --overwrite)")
    parent = os.path.dirname(out)
    while not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise ValueError(f"cannot create output dir {output_dir}: {parent} is not a directory")
        parent = os.path.dirname(parent)
    try:  # os.access says yes to root even on read-only mounts: probe for real
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"cannot write the output dir {output_dir}: {parent} is not writable "
                              f"({e.strerror})") from None


@contextlib.contextmanager
def atomic_output_dir(path: str, overwrite: bool = False, source_files: Iterable[str] = ()) -> Iterator[str]:
    """A temporary sibling directory that replaces ``path`` on success; on failure (an exception,
    Ctrl-C or SIGTERM) it is removed and ``path`` is untouched. Checked as :func:`check_output_dir`."""
    source_files = tuple(source_files)
    check_output_dir(path, source_files, overwrite)
    path = real_path(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path))
    try:
        with sigterm_as_interrupt():
            os.chmod(tmp, directory_mode())  # readable by others as mkdir would make it
            with _out_of_space_as_error(f"the output dir {path}", "; nothing was written"):
                yield tmp
            # Checked again just before the swap: nothing that holds a source file is ever deleted.
            check_output_dir(path, source_files, overwrite)
            if os.path.exists(path):
                old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(path))
                os.replace(path, os.path.join(old, "dir"))
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        _remove(tmp)
