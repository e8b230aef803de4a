"""The one implementation of atomic file replacement, with a guard against other writers.

Every write rtagx makes to a user's file (photo, sidecar, caption, a report) goes through
:func:`atomic_write`: a temporary file in the same folder, fsync, rename over the original with its
permissions and ownership kept, fsync of the folder. A reader never sees a half-written file.

Another program may write the same file while rtagx works on it (digiKam, Lightroom, an exiftool
loop). :class:`FileState` is the file's identity when rtagx read it (size, mtime and ctime in
nanoseconds, inode); :func:`atomic_write` compares it with the file just before the rename and raises
:class:`ChangedDuringWrite` instead of replacing a newer file. The caller re-reads and redoes its edit.
On Linux the check and the rename are one step: the new file and the original are swapped with
``renameat2(RENAME_EXCHANGE)``, the displaced file is compared with what was read, and on a mismatch
swapped back. Elsewhere a stat just before ``os.replace`` leaves a window of microseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rtagx.errors import MetadataError

TEMP_SUFFIX = ".rtagx-tmp"
_cleaned_folders: set[str] = set()


@dataclass(frozen=True)
class FileState:
    """A file's identity as read: any write by another program changes at least one of these."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @classmethod
    def at(cls, path: Path) -> FileState | None:
        """The state of ``path`` now, or None when there is no file."""
        try:
            return cls.of(os.stat(path))
        except FileNotFoundError:
            return None


class ChangedDuringWrite(MetadataError):
    """The file changed after rtagx read it: the edit must be redone on the new content."""

    def __init__(self, path: Path) -> None:
        super().__init__("changed-during-write", f"{path} was changed by another program while rtagx wrote it")


def _short_name(name: str, limit: int = 100) -> str:
    """The photo's name cut to ``limit`` bytes on a character boundary: a 255-byte name plus the
    temporary suffix would exceed the file system's name limit."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    return os.fsdecode(raw[:limit].decode("utf-8", "ignore").encode("utf-8")) or "photo"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: Path) -> int:
    """Remove dead writers' temporary files in ``folder`` now (the scanner calls this for folders
    where it saw one); unlike the check before each write, not limited to once per process."""
    _cleaned_folders.discard(os.fspath(folder))
    return _clean_stale_temps(folder)


def _clean_stale_temps(folder: Path) -> int:
    """Remove temporary files a killed rtagx left in ``folder`` (``.NAME.PID.XXXX.rtagx-tmp`` whose
    process is gone), once per folder per process. The originals were never touched by them."""
    key = os.fspath(folder)
    if key in _cleaned_folders:
        return 0
    _cleaned_folders.add(key)
    removed = 0
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    for entry in entries:
        if not (entry.startswith(".") and entry.endswith(TEMP_SUFFIX)):
            continue
        parts = entry[: -len(TEMP_SUFFIX)].split(".")
        pid = next((int(p) for p in reversed(parts[:-1]) if p.isdigit()), None)
        if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
            continue
        if pid is None:  # an older rtagx's name without a pid: remove only when clearly stale
            try:
                if time.time() - os.stat(os.path.join(folder, entry)).st_mtime < 3600:
                    continue
            except OSError:
                continue
        try:
            os.unlink(os.path.join(folder, entry))
            removed += 1
        except OSError:
            pass
    return removed


_UNCHECKED = object()


def atomic_write(
    dest: Path,
    content: bytes | Callable[[IO[bytes], str], object],
    *,
    preserve_mtime: bool = False,
    mode_like: Path | None = None,
    expect: FileState | object | None = _UNCHECKED,
) -> None:
    """Write through a temporary file in the same folder, fsync, then replace ``dest`` in one step.

    ``content`` is the bytes, or ``fill(file, tmp_path)`` that writes them. Permissions and ownership
    of the file being replaced are kept (a new file takes ``mode_like``'s, without execute bits).
    ``expect`` is the state ``dest`` had when its content was read (None: it did not exist); when it
    is given and ``dest`` differs just before the rename, :class:`ChangedDuringWrite` is raised and
    ``dest`` is left as the other program wrote it.
    """
    dest = Path(os.path.realpath(dest))
    folder = dest.parent
    old = check_writable(dest)
    if expect is not _UNCHECKED and (FileState.of(old) if old is not None else None) != expect:
        raise ChangedDuringWrite(dest)
    try:
        _clean_stale_temps(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{_short_name(dest.name)}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
    except PermissionError as e:
        raise MetadataError("read-only", f"cannot create a file in {folder}: {e.strerror}") from None
    except OSError as e:
        raise MetadataError("write-failed", f"cannot create a temporary file in {folder}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f, tmp)
            f.flush()
        with open(tmp, "rb") as f:  # by name: a fill that went through exiv2 may have replaced the file
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(OSError):
                    os.chown(tmp, old.st_uid, old.st_gid)
            if preserve_mtime:
                os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
        else:
            like = stat.S_IMODE(os.stat(mode_like).st_mode) & 0o666 if mode_like is not None else 0o644
            os.chmod(tmp, like | 0o600)
        if expect is _UNCHECKED:
            os.replace(tmp, dest)
        else:
            _replace_if_unchanged(tmp, dest, expect)  # type: ignore[arg-type]
        _fsync_dir(folder)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, MetadataError):
            raise
        if isinstance(e, PermissionError):
            raise MetadataError("read-only", f"cannot write {dest}: {e.strerror}") from None
        if isinstance(e, OSError):
            raise MetadataError("write-failed", f"cannot write {dest}: {e.strerror or e}") from None
        raise


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():  # -> the libc function, or None where there is none (not Linux, old glibc)
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


_renameat2 = _load_renameat2()
_exchange_works = _renameat2 is not None


def _exchange(a: str, b: str) -> bool:
    """Swap two names atomically; False where the system or file system cannot."""
    global _exchange_works
    if not _exchange_works:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        _exchange_works = False
        return False
    if err == errno.ENOENT:  # the original is gone: another program removed or is renaming it
        raise ChangedDuringWrite(Path(b))
    raise OSError(err, os.strerror(err), b)


def _replace_if_unchanged(tmp: str, dest: Path, expect: FileState | None) -> None:
    """Put ``tmp`` at ``dest`` only if ``dest`` is still the file ``expect`` describes."""
    if expect is None:  # a new file: create it only if nobody else did meanwhile
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise ChangedDuringWrite(dest) from None
        except OSError:  # no hard links here (FAT, some network shares): check, then rename
            if os.path.lexists(dest):
                raise ChangedDuringWrite(dest) from None
            os.replace(tmp, dest)
            return
        os.unlink(tmp)
        return
    if FileState.at(dest) != expect:
        raise ChangedDuringWrite(dest)
    if not _exchange(tmp, os.fspath(dest)):
        os.replace(tmp, dest)
        return
    # ``tmp`` now names the file we displaced (a rename changes its ctime, not the rest).
    st = os.stat(tmp)
    if (st.st_ino, st.st_size, st.st_mtime_ns) != (expect.inode, expect.size, expect.mtime_ns):
        try:
            _exchange(tmp, os.fspath(dest))  # put the other program's file back
        except OSError:  # never delete it: keep it beside the photo for the person to find
            os.replace(tmp, f"{dest}.rtagx-displaced")
        raise ChangedDuringWrite(dest)
    os.unlink(tmp)


def check_writable(dest: Path) -> os.stat_result | None:
    """Refuse read-only files and folders up front (mode bits too: root passes os.access checks).

    Returns the stat of the existing file, or None for a new one.
    """
    dest = Path(os.path.realpath(dest))
    folder = dest.parent
    old = None
    try:
        old = os.stat(dest)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise MetadataError("write-failed", f"cannot stat {dest}: {e.strerror}") from None
    if old is not None and (not old.st_mode & 0o222 or not os.access(dest, os.W_OK)):
        raise MetadataError("read-only", f"{dest} is read-only")
    try:
        folder_mode = os.stat(folder).st_mode
    except OSError as e:
        raise MetadataError("write-failed", f"cannot stat folder {folder}: {e.strerror}") from None
    if not folder_mode & 0o222 or not os.access(folder, os.W_OK | os.X_OK):
        raise MetadataError(
            "read-only", f"folder {folder} is not writable (rtagx writes a temporary file beside the photo)"
        )
    return old


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
