"""``rtagx export``: every cached vector of one model, with its path, content and chosen tags, as files
that data tools read: clip-retrieval's layout (``img_emb/img_emb_0000.npy`` float16 shards beside
``metadata/metadata_0000.parquet`` with rows in the same order), or Parquet shards with a
``fixed_size_list<float>`` column ``embedding`` beside the same metadata columns (pyarrow, DuckDB,
Spark, autofaiss's ``embedding_column_name="embedding"``).

No image is decoded and no image tower is loaded: the model is chosen as ``search`` chooses it, and
each file's tags are scored from its cached vector with the settings of the root that holds it, as
``retag --dry-run`` scores them (a person's review decisions included). The export reads the cache
only: it does not look at the files, so a file edited since its last ``tag`` run exports the vector
the cache has for it.

Vectors are exported exactly as the cache keeps them: float16 in ``.npy`` (clip-retrieval's choice,
half the bytes; autofaiss and faiss read it), float32 in Parquet (every float16 is a float32 exactly,
and DuckDB and Spark have no half-precision type). The cache does not record image sizes, so there
are no width/height columns (reading every file for them would cost more than the export).

Memory stays bounded: one cursor walks the cache in path order in blocks of 8192 files, each block
is scored and appended to the open shard (npy rows straight to the file, Parquet as one row group),
and a shard is written to a hidden temporary file and renamed when complete, so a killed export
leaves only whole shards (and a hidden temporary that readers skip). ``_rtagx_export.json``, written
last, says the export finished and what it holds.

Measured (bench/export_speed.py: 512-dim vectors scored against ImageNet's 1,000 tags, the CLI as a
child process, "Intel(R) Xeon(R) Processor", 2 cores shared at load average ~10): 100,000 vectors
in 5.6 s of CPU as npy (6.7 s as Parquet), ~1.5 s of it start-up and imports; peak RSS 255 MB at
20,000 and at 100,000 vectors (npy), 294-312 MB (Parquet): memory does not grow with the library.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtagx import __version__
from rtagx.analysis.search import CachedModel, choose_model, text_path
from rtagx.cache.store import Store, is_untagged, key_path, open_store, path_key
from rtagx.errors import RtagxError, UsageError
from rtagx.model.encoder import Encoder
from rtagx.run.common import load_vocabulary_for, open_locked, owning_root
from rtagx.run.events import RunEvents, RunSummary
from rtagx.run.retag import cached_model_encoder
from rtagx.run.tagger import Tagger
from rtagx.settings import Settings, load_settings, validate_settings

FORMATS = ("npy", "parquet")
#: Rows per shard: 100k ViT-B vectors are a 100 MB float16 .npy (200 MB as float32 Parquet), a size
#: faiss, autofaiss and Spark read comfortably and that keeps the number of files small.
DEFAULT_SHARD_ROWS = 100_000
#: Files read and written per step (one Parquet row group).
BLOCK_ROWS = 8192
#: Files scored at once, as ``retag`` scores them: scoring takes ~35 KB per file against the
#: 1,000 ImageNet tags (peak RSS 218 MB at 2,048, 430 MB at 8,192, measured on 20,000 files).
SCORE_ROWS = 2048
MANIFEST = "_rtagx_export.json"
#: Where each format's shards go, as (folder, name prefix, suffix) inside DIR.
LAYOUT = {
    "npy": [("img_emb", "img_emb_", ".npy"), ("metadata", "metadata_", ".parquet")],
    "parquet": [("", "part_", ".parquet")],
}


@dataclass
class ExportResult:
    to: Path
    format: str
    model: CachedModel
    rows: int
    files: list[str]  # the shard files written, relative to ``to``
    dtype: str
    tags_from: Counter = field(default_factory=Counter)  # scored / written / untagged / none
    seconds: float = 0.0
    bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "summary": True,
            "to": text_path(self.to),
            "format": self.format,
            "model": self.model.name,
            "model_key": self.model.key,
            "dim": self.model.dim,
            "dtype": self.dtype,
            "rows": self.rows,
            "shards": len([f for f in self.files if not f.startswith("metadata/")]),
            "files": self.files,
            "tags_from": dict(sorted(self.tags_from.items())),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else 0.0,
        }


def require_pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or the one-line error that says how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError("rtagx export needs pyarrow: pip install 'rtagx[export]'") from None
    return pyarrow, pyarrow.parquet


class _NeedsEncoder(Exception):
    """A vocabulary's prompts are not in the cache yet: they are encoded under the writer lock."""


def _no_encoder() -> Encoder:
    raise _NeedsEncoder


def scorer(
    store: Store, model: CachedModel, settings: Settings, remembered: dict[str, Any], events: RunEvents
) -> Tagger:
    """A dry-run Tagger of ``model`` with ``settings`` on the read-only ``store``, its tag matrix
    ready. Prompts the cache lacks are encoded (text tower only) and stored under the writer lock
    first, as ``retag`` would store them; the read-only store then finds them all."""
    vocabulary = load_vocabulary_for(settings)
    summary = RunSummary(dry_run=True)

    def make(on: Store) -> Tagger:
        tagger = Tagger(on, settings, vocabulary, model.id, model.key, events, summary, dry_run=True)
        tagger.several_models = bool(remembered.get("extra_models"))
        return tagger

    tagger = make(store)
    try:
        tagger.prepare_text(_no_encoder)
    except _NeedsEncoder:
        writable = open_locked(settings, events)
        try:
            make(writable).prepare_text(lambda: cached_model_encoder(writable, model.id, settings, text_only=True))
        finally:
            writable.close()
        tagger.prepare_text(_no_encoder)
    return tagger


def vocabulary_given(settings: Settings) -> bool:
    """Was a vocabulary named (option, config file, environment), not left at the default?"""
    return settings.sources.get("tags", "default") != "default"


class Scorers:
    """Each file's tags, as ``retag --dry-run`` would choose them: scored with the settings of the
    deepest root that holds the file (options override); a file no root holds is scored when a
    vocabulary is named, else it gets the tags rtagx last wrote into it; a file ``untag`` cleared
    gets none."""

    def __init__(
        self,
        store: Store,
        model: CachedModel,
        overrides: dict[str, Any],
        config_path: Path | None,
        scope: Sequence[Path],
        events: RunEvents,
    ) -> None:
        self.store = store
        self.roots = store.roots()
        self.untagged = store.untagged_marks()
        self.by_parent: dict[bytes, Tagger | None] = {}
        self.by_root: dict[Path, Tagger] = {}
        by_settings: dict[str, Tagger] = {}
        for root, remembered, _ in self.roots:
            if scope and not any(root == s or s in root.parents or root in s.parents for s in scope):
                continue
            settings = load_settings(overrides, config_path=config_path, base=remembered)
            validate_settings(settings)
            same = json.dumps({k: v for k, v in remembered.items() if k != "model_key"}, sort_keys=True, default=str)
            if same not in by_settings:
                by_settings[same] = scorer(store, model, settings, remembered, events)
            self.by_root[root] = by_settings[same]
        self.by_root_key = {path_key(root): tagger for root, tagger in self.by_root.items()}
        orphan_settings = load_settings(overrides, config_path=config_path)
        self.orphans = scorer(store, model, orphan_settings, {}, events) if vocabulary_given(orphan_settings) else None

    def tagger_for(self, key: bytes) -> Tagger | None:
        """The scorer of the file ``key`` (None: no root holds it and no vocabulary was named)."""
        if key in self.by_root_key:  # a single file tagged on its own is a root of its own
            return self.by_root_key[key]
        parent = key.rsplit(b"/", 1)[0] or b"/"
        if parent not in self.by_parent:  # the files of one folder share their deepest root
            owner = owning_root(key_path(parent), self.roots)
            self.by_parent[parent] = self.by_root.get(owner[0], self.orphans) if owner else self.orphans
        return self.by_parent[parent]

    @staticmethod
    def fill(
        rows: list[int],
        chosen: list[list[Any]],
        tags: list[list[str]],
        scores: list[list[float]],
        source: list[str],
    ) -> None:
        """Put a scored group's chosen tags into the block's columns, at the group's rows."""
        for i, picked in zip(rows, chosen):
            tags[i] = [c.tag.keyword for c in picked]
            scores[i] = [float(c.score) for c in picked]
            source[i] = "scored"

    def tags(
        self, keys: Sequence[bytes], content_ids: np.ndarray, vectors: np.ndarray
    ) -> tuple[list[list[str]], list[list[float]], list[str]]:
        """(tags, scores, where they came from) for one block of files."""
        n = len(keys)
        tags: list[list[str]] = [[] for _ in range(n)]
        scores: list[list[float]] = [[] for _ in range(n)]
        source = ["none"] * n
        groups: dict[int, tuple[Tagger, list[int]]] = {}
        unscored: list[int] = []
        for i, key in enumerate(keys):
            if self.untagged and is_untagged(key, self.untagged):
                source[i] = "untagged"
                continue
            tagger = self.tagger_for(key)
            if tagger is None:
                unscored.append(i)
            else:
                groups.setdefault(id(tagger), (tagger, []))[1].append(i)
        for tagger, group in groups.values():
            for start in range(0, len(group), SCORE_ROWS):
                rows = group[start : start + SCORE_ROWS]
                chosen = tagger.choose(vectors[rows], [int(content_ids[i]) for i in rows])
                self.fill(rows, chosen, tags, scores, source)
        if unscored:
            written = self.store.written(keys[i] for i in unscored)
            for i in unscored:
                rec = written.get(keys[i])
                if rec is not None:
                    tags[i] = [t for t, _ in rec.tags]
                    scores[i] = [float(s) for _, s in rec.tags]
                    source[i] = "written"
        return tags, scores, source


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a file, and a folder that holds anything unless ``overwrite``."""
    if target.exists() and not target.is_dir():
        raise UsageError(f"--to {target} is a file: give a folder to export into")
    entries = sorted(os.listdir(target)) if target.is_dir() else []
    if entries and not overwrite:
        raise UsageError(
            f"--to {target} is not empty ({', '.join(entries[:3])}{' ...' if len(entries) > 3 else ''}): "
            "give a new or empty folder, or --overwrite to replace an earlier export there"
        )


def prepare_target(target: Path) -> None:
    """Remove an earlier export's files (and hidden temporaries of a killed one), never anything else."""
    for folder, prefix, suffix in [("", "", "")] + [x for layout in LAYOUT.values() for x in layout]:
        place = target / folder
        if not place.is_dir():
            continue
        for name in os.listdir(place):
            ours = (prefix and name.startswith(prefix) and name.endswith(suffix)) or name == MANIFEST
            if ours or (name.startswith(".") and ".tmp-" in name):
                (place / name).unlink()
    target.mkdir(parents=True, exist_ok=True)


@contextmanager
def writing_into(target: Path) -> Iterator[None]:
    """Turn a failed write into the export folder (a path below a file, a read-only or full disk)
    into one line naming the folder, instead of an internal error with a traceback."""
    try:
        yield
    except OSError as e:
        raise RtagxError(f"cannot write the export into {target}: {e.strerror or e}") from None


def _fsync_rename(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


class ShardWriter:
    """Writes rows in order into shards of ``shard_rows``; each shard's files appear whole or not at all."""

    def __init__(self, pa: Any, pq: Any, target: Path, fmt: str, model: CachedModel, total: int, shard_rows: int):
        self.pa, self.pq = pa, pq
        self.target, self.fmt, self.model = target, fmt, model
        self.total, self.shard_rows = total, shard_rows
        shards = max(1, -(-total // shard_rows))
        self.width = max(4, len(str(shards - 1)))
        self.files: list[str] = []
        self.written = 0  # rows in finished shards and the open one
        self.number = -1
        self.open_rows = 0  # rows the open shard will hold
        self.pending: list[tuple[Path, Path]] = []  # (temporary, final) of the open shard
        self.npy: Any = None
        self.parquet: Any = None
        fields = [
            pa.field("image_path", pa.string()),
            pa.field("content_id", pa.int64()),
            pa.field("fingerprint", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("scores", pa.list_(pa.float32())),
            pa.field("tags_source", pa.string()),
        ]
        if fmt == "parquet":
            fields.append(pa.field("embedding", pa.list_(pa.float32(), model.dim)))
        about = {"rtagx.model": model.name, "rtagx.model_key": model.key, "rtagx.dim": str(model.dim)}
        self.schema = pa.schema(fields, metadata=about)

    def _open(self) -> None:
        self.number += 1
        self.open_rows = min(self.shard_rows, self.total - self.number * self.shard_rows)
        number = str(self.number).zfill(self.width)
        self.pending = []
        for folder, prefix, suffix in LAYOUT[self.fmt]:
            place = self.target / folder
            place.mkdir(exist_ok=True)
            final = place / f"{prefix}{number}{suffix}"
            self.pending.append((place / f".{final.name}.tmp-{os.getpid()}", final))
        if self.fmt == "npy":
            self.npy = open(self.pending[0][0], "wb")  # noqa: SIM115  # closed when the shard is
            header = {"descr": "<f2", "fortran_order": False, "shape": (self.open_rows, self.model.dim)}
            np.lib.format.write_array_header_1_0(self.npy, header)
        self.parquet = self.pq.ParquetWriter(self.pending[-1][0], self.schema)

    def _close(self) -> None:
        if self.npy is not None:
            self.npy.close()
            self.npy = None
        self.parquet.close()
        self.parquet = None
        for tmp, final in self.pending:
            _fsync_rename(tmp, final)
            self.files.append(final.relative_to(self.target).as_posix())
        self.pending = []

    def abandon(self) -> None:
        """An export that stops: the open shard's temporaries go, finished shards stay. A close that
        fails too (the disk is still full) must not hide why the export stopped."""
        if self.npy is not None:
            with suppress(OSError):
                self.npy.close()
            self.npy = None
        if self.parquet is not None:
            with suppress(OSError):
                self.parquet.close()
            self.parquet = None
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)

    def add(
        self,
        keys: Sequence[bytes],
        content_ids: np.ndarray,
        fingerprints: Sequence[str],
        vectors: np.ndarray,
        tags: Sequence[list[str]],
        scores: Sequence[list[float]],
        source: Sequence[str],
    ) -> None:
        pa = self.pa
        start = 0
        while start < len(keys):
            if self.number < 0 or self.written == self.number * self.shard_rows + self.open_rows:
                if self.number >= 0:
                    self._close()
                self._open()
            room = self.number * self.shard_rows + self.open_rows - self.written
            end = min(len(keys), start + room)
            part = slice(start, end)
            columns = [
                pa.array([text_path(k) for k in keys[part]], pa.string()),
                pa.array(content_ids[part], pa.int64()),
                pa.array(fingerprints[part], pa.string()),
                pa.array(tags[part], pa.list_(pa.string())),
                pa.array(scores[part], pa.list_(pa.float32())),
                pa.array(source[part], pa.string()),
            ]
            rows = vectors[part]
            if self.fmt == "npy":
                self.npy.write(np.ascontiguousarray(rows, dtype="<f2").tobytes())
            else:
                flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).ravel(), pa.float32())
                columns.append(pa.FixedSizeListArray.from_arrays(flat, self.model.dim))
            self.parquet.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.written += end - start
            start = end

    def finish(self) -> None:
        if self.written != self.total:
            self.abandon()
            raise UsageError(f"the cache changed during the export ({self.written} rows, {self.total} counted)")
        if self.number >= 0:
            self._close()


def export_vectors(
    paths: Sequence[Path],
    overrides: dict[str, Any],
    *,
    to: Path,
    fmt: str = "npy",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    events: RunEvents | None = None,
    config_path: Path | None = None,
) -> ExportResult:
    """Export every cached vector of the current model (files at or below ``paths``; none: every
    file the cache knows) with its tags into ``to``. Raises before writing anything when pyarrow is
    missing, the folder is not empty (without ``overwrite``) or there is nothing to export."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    if shard_rows < 1:
        raise UsageError("--shard-size must be at least 1")
    pa, pq = require_pyarrow()
    events = events or RunEvents()
    started = time.perf_counter()
    base = load_settings(overrides, config_path=config_path)
    validate_settings(base)
    scope = [Path(os.path.abspath(os.path.expanduser(p))) for p in paths]
    target = Path(os.path.abspath(os.path.expanduser(to)))
    check_target(target, overwrite)
    if not base.cache_path().exists():
        raise UsageError(f"nothing to export: there is no cache at {base.cache_path()}; run `rtagx tag PATH` first")
    with open_store(base.cache_path(), readonly=True) as store:
        model = choose_model(store, base, scope)
        scorers = Scorers(store, model, overrides, config_path, scope, events)
        with store.snapshot():
            total = store.count_files_with_vectors(model.id, scope)
            if not total:
                where = f" under {', '.join(map(str, scope))}" if scope else ""
                raise UsageError(
                    f"nothing to export: the cache {store.path} has no vectors of {model.name or model.key}{where}"
                )
            with writing_into(target):
                prepare_target(target)
            writer = ShardWriter(pa, pq, target, fmt, model, total, shard_rows)
            result = ExportResult(target, fmt, model, total, writer.files, "float16" if fmt == "npy" else "float32")
            events.stage("export", total)
            try:
                with writing_into(target):
                    for keys, ids, fingerprints, vectors in store.iter_files_with_vectors(
                        model.id, model.dim, scope, BLOCK_ROWS
                    ):
                        tags, scores, source = scorers.tags(keys, ids, vectors)
                        result.tags_from.update(source)
                        writer.add(keys, ids, fingerprints, vectors, tags, scores, source)
                        events.progress("export", len(keys))
                    writer.finish()
            except BaseException:
                writer.abandon()
                raise
        info = store.model_info(model.id)
    result.seconds = time.perf_counter() - started
    result.bytes = sum((target / f).stat().st_size for f in result.files)
    manifest = {
        **{k: v for k, v in result.as_json().items() if k not in ("summary", "seconds", "rows_per_second")},
        "pretrained": info.get("pretrained") or info.get("checkpoint_path"),
        "scope": [text_path(p) for p in scope],
        "shard_rows": shard_rows,
        "columns": writer.schema.names,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rtagx": __version__,
    }
    tmp = target / f".{MANIFEST}.tmp-{os.getpid()}"
    try:
        with writing_into(target):
            tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            _fsync_rename(tmp, target / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
    return result
