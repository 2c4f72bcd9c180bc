"""Atomic, no-clobber file output: a finished file or nothing, never a partial one."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import AecError, OutputExists


STDIO = "-"             # as an input: standard input; as an output: standard output (as in cwebp)
STDOUT_ALIASES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")    # outputs that mean -o -


def is_stdio(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDIO


def read_stdin() -> bytes:
    """All of standard input; refused when it is a terminal (nobody is piping anything in)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise AecError("'-' reads standard input, but it is a terminal: pipe a file in")
    return sys.stdin.buffer.read()


def write_stdout(data: bytes | memoryview) -> None:
    """Binary data to standard output, after all the work has succeeded (so a failure leaves nothing
    behind); refused when standard output is a terminal. Written with os.write until every byte is
    out: a full disk can take part of a buffered write without raising. A standard output without a
    file descriptor (a test runner's, an embedding program's) takes one buffered write."""
    if sys.stdout is None:
        raise AecError("standard output is closed: name a file")
    if sys.stdout.isatty():
        raise AecError("refusing to write binary data to a terminal: redirect standard output or name a file")
    try:
        sys.stdout.flush()
        try:
            fd = sys.stdout.buffer.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):
            fd = None
        if fd is None:
            if sys.stdout.buffer.write(data) != len(data):
                raise OSError(errno.EIO, "short write")
            sys.stdout.buffer.flush()
            return
        sys.stdout.buffer.flush()
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        raise AecError("standard output was closed before everything was written") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise AecError("no space left on device while writing to standard output") from None
        raise AecError(f"cannot write to standard output: {exc.strerror or exc}") from None


def first_writers(outputs: Iterable[Path | None]) -> list[int | None]:
    """For the outputs of one run, in order: the index of the first entry that writes the same file
    (an entry's own index when it is the first; None for None). A later entry whose first writer is
    another must not be written, even with --force: one run never overwrites its own results."""
    first: dict[Path | str, int] = {}
    # realpath, not resolve(): a loop of links is a path like any other here (it fails when written)
    return [None if out is None else first.setdefault(STDIO if is_stdio(out) else os.path.realpath(out), i)
            for i, out in enumerate(outputs)]


def taken(path: Path) -> bool:
    """Whether an output name is in use: a file, or a link, even one that leads nowhere (writing
    would replace it without --force; --skip-existing leaves it)."""
    return path.exists() or path.is_symlink()


def check_writable(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless force is set, and never replace anything but a
    regular file (a folder, a device such as /dev/null, a named pipe), even with force."""
    path = Path(path)
    if taken(path) and not force:
        raise OutputExists(f"{path} exists (use --force to overwrite)")
    if path.is_dir():
        raise AecError(f"{path} is a folder")
    if path.exists() and not path.is_file():
        raise AecError(f"{path} is not a regular file (a device or a pipe): name a file")


def check_folder_writable(path: Path) -> None:
    """Refuse, before any work, an output whose folder (or, where it is still to be made, the
    nearest folder above it that exists) cannot take a new file: a folder without write permission,
    or on a read-only file system. The write itself would fail the same way, but only after the work:
    a batch into such a folder denoised every image before failing to write each. An output that is
    a link (written where it leads) is left to the write."""
    path = Path(path)
    if path.is_symlink():
        return
    folder = path.parent
    while not folder.exists():
        if folder.parent == folder:
            return
        folder = folder.parent
    if not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
        return                          # a file where a folder should be: the write names it
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        read_only = False
    raise AecError(f"cannot write {path}: " + ("read-only file system" if read_only else "permission denied"))


def write_target(path: Path) -> Path:
    """Where an atomic write to `path` lands: through a symbolic link to the file it names (the link
    stays a link, as when a program opens it for writing), else `path` itself. A file that is this
    process's standard input, output or error, however it is spelled (/dev/fd/1, a link into
    /proc/self/fd, `-o out.aez >> out.aez`), is refused: renaming over it would replace the file a
    shell redirected into, with everything already in it."""
    path = Path(path)
    if _through_open_files(path):
        raise AecError(f"{path} names an open file descriptor: name a file (or - for standard output)")
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None:
        for fd, name in ((0, "input"), (1, "output"), (2, "error")):
            try:
                other = os.fstat(fd)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                raise AecError(f"{path} is this command's standard {name}: name another file")
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _through_open_files(path: Path) -> bool:
    """Whether `path`, followed link by link (folders resolved at every hop, so no spelling hides
    it), passes through /dev/fd or /proc/*/fd: names for whatever a process has open, which an
    atomic rename would replace (a shell's `3>>log`) or turn into junk (a deleted file's fd)."""
    link = os.path.abspath(path)
    for _ in range(40):
        link = os.path.join(os.path.realpath(os.path.dirname(link)), os.path.basename(link))
        parts = Path(link).parts
        if link.startswith("/dev/fd/") or (len(parts) > 3 and parts[1] == "proc" and parts[3] == "fd"):
            return True
        if not os.path.islink(link):
            return False
        link = os.path.join(os.path.dirname(link), os.readlink(link))
    return False


def refuse_device(path: Path) -> None:
    """A device or socket as an input never ends (/dev/zero) or waits on a terminal: refused. Pipes
    are inputs like files (/dev/stdin in a pipeline, a shell's <(...)); a folder is the caller's."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return                                      # the read that follows names the problem
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise AecError(f"{path} is a device, not a file")


def chmod_as_created(path: Path, mode: int = 0o666) -> None:
    """Give a file (mode 0o666) or folder (0o777) made by mkstemp/mkdtemp, which are private (0600,
    0700), the permissions a plain open() or mkdir() would have given it under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _describe(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on device while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied"
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: read-only file system"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):          # a file where a folder should be
        blocker = next((p for p in Path(path).parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"cannot write {path}: {blocker} is not a folder"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs and deliver them when it ends, so that a second
    Ctrl-C or `kill` cannot cut a cleanup short (main thread only: elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is None:            # a handler not set from Python: left alone
            continue
        try:
            old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if pending:                                # now handled as usual; `kill` wins over Ctrl-C
            signal.raise_signal(signal.SIGTERM if signal.SIGTERM in pending else pending[0])


NAME_MAX = 255          # bytes in one file name on the usual file systems


def part_prefix(path: Path) -> str:
    """The start of the temporary files' names for `path`: `.NAME.`, or for a name too long to take
    the 15 extra bytes, its first bytes and a hash of the whole (batch resumes find both kinds)."""
    name = Path(path).name
    if len(os.fsencode(name)) + 15 <= NAME_MAX:
        return f".{name}."
    short = os.fsencode(name)[:NAME_MAX - 40].decode(errors="ignore")
    return f".{short}~{hashlib.sha1(os.fsencode(name)).hexdigest()[:10]}."


@contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target folder; on success it replaces `path` in one rename.

    On any failure (exception, Ctrl-C, full disk) the temporary file is removed and `path` is
    untouched; making the temporary file and removing it are not interrupted by a further signal.
    """
    check_writable(path, force)
    path = write_target(path)
    check_writable(path, force)
    tmp_path: Path | None = None
    held: int | None = None             # the temporary file's descriptor, locked while it is in use
    made: list[Path] = []               # folders this write created: removed again if it fails
    done = False
    try:
        with interrupts_deferred():     # a signal held here is delivered inside the try: the file goes
            try:
                for attempt in range(3):
                    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()][::-1]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        fd, tmp = tempfile.mkstemp(prefix=part_prefix(path), suffix=".part", dir=path.parent)
                        break
                    except FileNotFoundError:   # another write's cleanup took the folder meanwhile
                        if attempt == 2:
                            raise
                tmp_path = Path(tmp)
                held = _hold(fd)
                chmod_as_created(tmp_path)
            except OSError as exc:
                raise AecError(_describe(exc, path)) from None
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(tmp_path, path)
        else:
            _place_new(tmp_path, path)
        done = True
    except OSError as exc:
        raise AecError(_describe(exc, path)) from None
    finally:
        with interrupts_deferred():
            if held is not None:
                os.close(held)
            if tmp_path is not None and tmp_path.exists():
                try:
                    tmp_path.unlink()
                except OSError:
                    pass
            for d in reversed(made if not done else []):    # deepest first; a folder in use stays
                try:
                    d.rmdir()
                except OSError:
                    break


def _hold(fd: int) -> int | None:
    """Lock a temporary file while its write is in progress (flock, where there is one) and keep its
    descriptor open; None (descriptor closed) where files cannot be locked. StaleParts leaves a
    locked file alone: another process is writing it (two batches into one folder)."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except (ImportError, OSError):
        os.close(fd)
        return None


def _in_use(path: Path) -> bool:
    """Whether another writer holds the lock of a temporary file (see _hold)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _place_new(tmp: Path, path: Path) -> None:
    """Give the finished temporary file its name only if no file has it: a hard link, which fails
    when the name is taken, so a file another process wrote meanwhile is never replaced (a check,
    then a rename, left a moment in which it was). Where links cannot be made (some network and
    FAT file systems), the check and the rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExists(f"{path} exists (use --force to overwrite)") from None
    except OSError:
        if taken(path):
            raise OutputExists(f"{path} exists (use --force to overwrite)") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def write_bytes_atomic(path: Path, data: bytes | memoryview, force: bool = False) -> None:
    with atomic_output(path, force) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


class StaleParts:
    """Temporary files a run killed outright (kill -9, a power cut) left beside its outputs: removed
    for every output a run writes, and for those --skip-existing skips (denoise, encode, decode). Each output folder is listed
    once, at its first output (a listing per output would cost the square of a flat folder's size);
    files this run creates later belong to its own outputs, never to one it has yet to write."""

    def __init__(self) -> None:
        self._parts: dict[Path, list[str]] = {}
        self._lock = threading.Lock()

    def remove(self, dst: Path) -> None:
        folder = dst.parent
        with self._lock:
            names = self._parts.get(folder)
            if names is None:
                try:
                    with os.scandir(folder) as entries:
                        names = [e.name for e in entries if e.name.startswith(".") and e.name.endswith(".part")]
                except OSError:
                    names = []
                self._parts[folder] = names
            # mkstemp's random part is 8 characters: `a.png`'s must not match `a.png.x.png`'s files
            prefix = part_prefix(dst)
            mine = [n for n in names if n.startswith(prefix) and len(n) == len(prefix) + 8 + len(".part")]
            for n in mine:
                names.remove(n)
        for n in mine:
            if _in_use(folder / n):         # another process is writing it now, not a killed run
                continue
            try:
                (folder / n).unlink()
            except OSError:
                pass
