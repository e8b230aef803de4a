"""Find image files under the given paths.

Walks with ``os.scandir`` (one ``stat`` per file, which the change detection needs anyway),
skips hidden entries and our own sidecars, never follows a directory symlink unless asked (and
then guards against loops by device+inode), and reports problems (a folder that cannot be read, a
broken symlink) as skips instead of stopping.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rtagx.errors import UsageError
from rtagx.imaging.decode import SUPPORTED_EXTENSIONS
from rtagx.settings import Settings, where


@dataclass(frozen=True)
class ScannedFile:
    path: Path  # absolute, not resolved through symlinks (the name the user sees)
    size: int
    mtime_ns: int
    root: Path
    ctime_ns: int = 0  # with the inode: what ``touch -r`` or a copy over the file cannot restore
    inode: int = 0


@dataclass(frozen=True)
class ScanProblem:
    path: Path
    reason: str
    detail: str


@dataclass
class ScanResult:
    files: list[ScannedFile] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)


def selected_extensions(settings: Settings) -> frozenset[str]:
    """The extensions ``--ext`` asks for (".jpg,png" -> {".jpg", ".png"}), or every supported one."""
    if not settings.extensions:
        return frozenset(SUPPORTED_EXTENSIONS)
    exts = set()
    for ext in settings.extensions.split(","):
        ext = ext.strip().lower()
        if ext:
            exts.add(ext if ext.startswith(".") else "." + ext)
    unknown = sorted(exts - set(SUPPORTED_EXTENSIONS))
    if unknown:  # a typo (--ext .jpgg) would otherwise scan nothing and say nothing
        raise UsageError(
            f"{where(settings, 'extensions')}: rtagx cannot read {', '.join(unknown)} "
            f"(supported: {' '.join(sorted(SUPPORTED_EXTENSIONS))})"
        )
    return frozenset(exts)


def _excluded(name: str, rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def scan_would_yield(
    path: Path, root: Path, extensions: frozenset[str], *, exclude: Sequence[str] = (), include_hidden: bool = False
) -> bool:
    """Whether a walk of ``root`` would reach the file ``path`` (no stat): the same hidden, exclude
    and extension rules as :func:`iter_scan`, applied to each folder on the way down. For callers
    told about single files (``rtagx watch``)."""
    rel_parts = os.path.relpath(path, root).split(os.sep)
    if rel_parts[0] in (os.pardir, os.curdir):
        return False
    for depth, name in enumerate(rel_parts):
        if not include_hidden and name.startswith("."):
            return False
        if exclude and _excluded(name, os.path.join(*rel_parts[: depth + 1]), exclude):
            return False
    return os.path.splitext(rel_parts[-1])[1].lower() in extensions


def scan_with_settings(
    roots: Iterable[Path], settings: Settings, *, on_temp_file: Callable[[Path], object] | None = None
) -> Iterator[ScannedFile | ScanProblem]:
    """:func:`iter_scan` with the scanning options of ``settings`` (--ext, --exclude, --hidden,
    --follow-symlinks): every command walks folders the same way."""
    return iter_scan(
        roots,
        selected_extensions(settings),
        exclude=settings.exclude,
        include_hidden=settings.include_hidden,
        follow_symlinks=settings.follow_symlinks,
        on_temp_file=on_temp_file,
    )


def iter_scan(
    roots: Iterable[Path],
    extensions: frozenset[str],
    *,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    follow_symlinks: bool = False,
    on_temp_file: Callable[[Path], object] | None = None,
) -> Iterator[ScannedFile | ScanProblem]:
    """Yield image files (and problems) under ``roots`` in a stable, sorted order.

    ``on_temp_file(folder)`` is called once per folder holding an rtagx temporary file (a write
    killed mid-way leaves one): the caller may clean it up."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        root = Path(os.path.abspath(os.path.expanduser(root)))
        try:
            st = root.stat()
        except FileNotFoundError:
            yield ScanProblem(root, "missing", "no such file or folder")
            continue
        except OSError as e:
            yield ScanProblem(root, "permission-denied", e.strerror or str(e))
            continue
        if stat.S_ISREG(st.st_mode):
            if str(root) not in seen_files:
                seen_files.add(str(root))
                yield ScannedFile(root, st.st_size, st.st_mtime_ns, root.parent, st.st_ctime_ns, st.st_ino)
            continue
        if not stat.S_ISDIR(st.st_mode):  # a FIFO, socket or device: reading it would block or never end
            yield ScanProblem(root, "not-an-image", "not a regular file or folder (a FIFO, socket or device)")
            continue
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                dst = folder.stat()
            except OSError as e:
                yield ScanProblem(folder, "permission-denied", e.strerror or str(e))
                continue
            ident = (dst.st_dev, dst.st_ino)
            if ident in seen_dirs:
                continue  # a symlink loop or a folder reached twice
            seen_dirs.add(ident)
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                yield ScanProblem(folder, "permission-denied", f"cannot list folder: {e.strerror or e}")
                continue
            subdirs: list[Path] = []
            temp_seen = False
            for entry in entries:
                name = entry.name
                if on_temp_file is not None and not temp_seen and name.endswith(".rtagx-tmp"):
                    temp_seen = True
                    on_temp_file(folder)
                if not include_hidden and name.startswith("."):
                    continue
                if exclude and _excluded(name, os.path.relpath(entry.path, root), exclude):
                    continue
                path = Path(entry.path)
                try:
                    is_link = entry.is_symlink()
                    if entry.is_dir(follow_symlinks=follow_symlinks):
                        if not is_link or follow_symlinks:
                            subdirs.append(path)
                        continue
                except OSError:
                    continue
                if os.path.splitext(name)[1].lower() not in extensions:
                    continue
                if is_link and not follow_symlinks and not os.path.exists(entry.path):
                    yield ScanProblem(path, "broken-symlink", "symlink points to nothing")
                    continue
                try:
                    st = entry.stat(follow_symlinks=True)
                except FileNotFoundError:
                    yield ScanProblem(path, "broken-symlink" if is_link else "missing", "vanished or dangling link")
                    continue
                except OSError as e:
                    yield ScanProblem(path, "permission-denied", e.strerror or str(e))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if entry.path in seen_files:
                    continue
                seen_files.add(entry.path)
                yield ScannedFile(path, st.st_size, st.st_mtime_ns, root, st.st_ctime_ns, st.st_ino)
            stack.extend(reversed(subdirs))


def scan(roots: Iterable[Path], extensions: frozenset[str], **options: object) -> ScanResult:
    result = ScanResult()
    for item in iter_scan(roots, extensions, **options):  # type: ignore[arg-type]
        (result.files if isinstance(item, ScannedFile) else result.problems).append(item)  # type: ignore[arg-type]
    return result
