"""The data side of ``rtagx review``: everything the pages show and every change they make.

At start it loads the cached vectors of every file under the reviewed roots (no image is decoded)
with the settings the deepest root was tagged with, in the background: pages are served at once
and each waits only for what it reads. A tag's grid is one matrix-vector product over
those vectors, sorted once and memoized, so paging is a slice. Only files in the cache under the
reviewed roots can be named: :meth:`ReviewLibrary.photo_for` refuses anything else (``..``, a
symlink out of the root, any other absolute path).

Decisions (accept / reject a tag on a photo) go into the cache keyed by content; the file is then
rewritten by ``retag`` on that file alone, so the write goes through the same scoring hook, atomic
keyword writer and cache lock as any run.
"""

from __future__ import annotations

import bisect
import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.analysis.evaluate import Explanation, explain_scores
from rtagx.analysis.search import text_path
from rtagx.cache.store import FileRecord, WriterLock, open_store, path_key
from rtagx.cache.thumbs import prune_thumbnails, thumbnail_bytes
from rtagx.cache.thumbs import thumbs_dir as default_thumbs
from rtagx.errors import CacheError, FileSkip, UsageError
from rtagx.keywords import metadata
from rtagx.run.common import check_paths, load_vocabulary_for, owning_root, written_place
from rtagx.run.events import FileOutcome, RunEvents, RunSummary
from rtagx.run.retag import run_retag
from rtagx.run.tagger import scoring_options
from rtagx.settings import Settings, load_settings
from rtagx.tags import scoring
from rtagx.tags.reviews import ACCEPTED, REJECTED

PAGE_SIZE = 60
THUMB_SIZES = (256, 768)
THUMB_BUDGET = 256 << 20  # bytes of thumbnails kept on disk; the oldest go first


class OutsideRoots(UsageError):
    """A path that is not a cached photo under the reviewed roots."""


@dataclass(frozen=True)
class Photo:
    name: str  # the path as text (a Path per photo costs seconds on 100k photos)
    content_id: int
    fingerprint: str
    row: int  # row in the vector matrix

    @property
    def path(self) -> Path:
        return Path(self.name)


@dataclass
class GridItem:
    photo: Photo
    score: float
    written: bool  # the tag is among the keywords rtagx wrote into the file
    decision: int  # +1 accepted, -1 rejected, 0 none


@dataclass
class TagGrid:
    tag: str
    threshold: float
    total: int
    above: int  # photos scoring at or above the threshold
    page: int
    pages: int
    items: list[GridItem] = field(default_factory=list)


@dataclass
class PhotoView:
    photo: Photo
    explanation: Explanation
    written: list[str]
    decisions: dict[str, int]


@dataclass
class FolderView:
    folder: Path
    subfolders: list[tuple[Path, int]]
    photos: list[tuple[Photo, list[str]]]
    total: int
    page: int
    pages: int


class ReviewLibrary:
    """The reviewed roots' cached photos, scored with the settings their root was tagged with."""

    def __init__(
        self,
        paths: Sequence[Path],
        overrides: dict[str, Any] | None = None,
        *,
        config_path: Path | None = None,
        thumbs_dir: Path | None = None,
        thumb_budget: int = THUMB_BUDGET,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.config_path = config_path
        self.roots = check_paths(paths)
        self.real_roots = [Path(os.path.realpath(r)) for r in self.roots]
        base = load_settings(self.overrides, config_path=config_path)
        self.cache = base.cache_path()
        if not self.cache.exists():
            raise UsageError(f"no cache at {self.cache}: run `rtagx tag PATH` first")
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._scores: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.thumbs_dir = thumbs_dir or default_thumbs(self.cache)
        self.thumb_budget = thumb_budget
        self._thumb_bytes: int | None = None
        self.load()

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> None:
        """What every page needs (settings, vocabulary, prompt vectors) now; the photo list and then
        their vectors in the background, so the first page is served at once. Each view waits only
        for what it reads: the tag list for nothing, a folder or a photo for the list, a tag's grid
        for the vectors (a photo's own view reads its one vector from the cache meanwhile)."""
        with open_store(self.cache, readonly=True) as store:
            roots = store.roots()
            owner = owning_root(self.roots[0], roots)
            if owner is None:  # a folder holding tagged folders: the settings of the first one inside
                inside = [(r, st) for r, st, _ in roots if self.roots[0] in r.parents]
                owner = inside[0] if inside else None
            remembered = owner[1] if owner else {}
            self.settings: Settings = load_settings(self.overrides, config_path=self.config_path, base=remembered)
            self.vocab = load_vocabulary_for(self.settings)
            model_key = remembered.get("model_key")
            model_id = store.find_model(model_key) if model_key else None
            if model_id is None:
                raise CacheError(f"no model recorded for {self.roots[0]}: run `rtagx tag` on it first")
            info = store.model_info(model_id)
            self.model_id = model_id
            self.model_name = str(info.get("name") or "")
            self.logit_scale, self.logit_bias = info.get("logit_scale"), info.get("logit_bias")
            self.probabilities = self.logit_bias is not None or scoring.is_probability_model(self.model_name)
            prompts = self.vocab.all_prompts()
            cached = store.text_vectors(model_id, prompts)
            missing = [p for p in prompts if p not in cached]
            if missing:
                raise CacheError(f"{len(missing)} prompt vectors are not cached: run `rtagx retag` once first")
            self.tag_matrix = scoring.build_tag_matrix(self.vocab, cached)
        self.options = scoring_options(self.settings)
        self.thresholds = scoring.tag_thresholds(self.vocab, self.options, self.model_name, self.probabilities)
        self.tag_index = {t.keyword.casefold(): i for i, t in enumerate(self.vocab.tags)}
        with self._lock:
            self._scores.clear()
        self._counts: np.ndarray | None = None
        self._counted = threading.Event()
        self._listed = threading.Event()
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        threading.Thread(target=self._load_photos, name="rtagx-review-load", daemon=True).start()

    def _load_photos(self) -> None:
        try:
            with open_store(self.cache, readonly=True) as store:
                records: dict[bytes, FileRecord] = {}
                for root in self.roots:
                    records.update(store.files_under(root))
                have = store.contents_with_vectors(self.model_id, [r.content_id for r in records.values()])
                # a cached file whose real path leaves the roots (a symlink out) is neither listed nor served
                real_dirs: dict[str, bool] = {}
                keys = sorted(k for k, r in records.items() if r.content_id in have and self._inside_fast(k, real_dirs))
                self._photos = [
                    Photo(os.fsdecode(k), records[k].content_id, records[k].fingerprint, n) for n, k in enumerate(keys)
                ]
                self._by_path = {p.name: p for p in self._photos}
                self._web_folders = self._web_names(self._by_path)
                self._sorted_paths = sorted((p.name, p.row) for p in self._photos)
                self._path_strs = [s for s, _ in self._sorted_paths]
                self._listed.set()
                dim = int(self.tag_matrix.shape[1])
                vectors = np.asarray(store.vectors(self.model_id, [p.content_id for p in self._photos], dim))
            vectors = vectors.astype(np.float32, copy=False)
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]  # as score_images, without a copy
            vectors /= np.maximum(norms, 1e-12)
            self._vectors = vectors
        except Exception as e:  # handed to every request that waits for the photos
            self._load_error = e
            self._listed.set()
            self._counted.set()
            return
        finally:
            self._loaded.set()
        self._count_tags()

    def _web_names(self, by_path: dict[str, Photo]) -> dict[str, str]:
        """Make every photo reachable by the name the pages show. A name that is not UTF-8 is shown
        (and sent back) as :func:`text_path` makes it, with U+FFFD: add that name for the photo, and
        return the same for the folders above it. A shown name that another file has for real, or
        that two names share, names nothing (never the wrong file)."""
        folders: dict[str, str | None] = {}
        shown: dict[str, Photo | None] = {}
        for name, photo in by_path.items():
            if name.isascii() or (web := text_path(name)) == name:
                continue
            shown[web] = None if web in shown else photo
            folder = os.path.dirname(name)
            while (web_folder := text_path(folder)) != folder:
                if folders.setdefault(web_folder, folder) != folder:
                    folders[web_folder] = None
                folder = os.path.dirname(folder)
        by_path.update({web: p for web, p in shown.items() if p is not None and web not in by_path})
        return {web: real for web, real in folders.items() if real is not None}

    def _wait(self, event: threading.Event) -> None:
        event.wait()
        if self._load_error is not None:
            raise CacheError(f"cannot load the reviewed photos: {self._load_error}")

    def wait_loaded(self) -> None:
        """Block until every photo and its vector is loaded (tests, benchmarks)."""
        self._wait(self._loaded)

    @property
    def photos(self) -> list[Photo]:
        self._wait(self._listed)
        return self._photos

    @property
    def by_path(self) -> dict[str, Photo]:
        self._wait(self._listed)
        return self._by_path

    @property
    def vectors(self) -> np.ndarray:
        self._wait(self._loaded)
        return self._vectors

    def photo_count(self) -> int | None:
        """How many photos are reviewed, or None while they are still being listed."""
        return len(self._photos) if self._listed.is_set() and self._load_error is None else None

    # -- the only way from a name in a request to a file ---------------------------------------
    def photo_for(self, raw: str) -> Photo:
        """The cached photo ``raw`` names, or :class:`OutsideRoots`. Only exact paths of cached files
        under the reviewed roots are accepted, and only when their real path (symlinks resolved) is
        still inside a reviewed root."""
        if not raw or "\x00" in raw or ".." in Path(raw).parts or not os.path.isabs(raw):
            raise OutsideRoots(f"not a reviewed photo: {raw!r}")
        photo = self.by_path.get(os.path.normpath(raw))
        if photo is None or not self.inside_roots(photo.path):
            raise OutsideRoots(f"not a reviewed photo: {raw!r}")
        return photo

    def _inside_fast(self, key: bytes, real_dirs: dict[str, bool]) -> bool:
        """:meth:`inside_roots` for many files: each folder resolved once, then one lstat per file.
        A file gone from disk is out too: the cache keeps a renamed or deleted file's old path until
        ``cache prune``, and a page must not offer a photo no decision can be written to."""
        name = os.fsdecode(key)
        folder = os.path.dirname(name)
        ok = real_dirs.get(folder)
        if ok is None:
            ok = real_dirs[folder] = self.inside_roots(Path(folder))
        if not ok:
            return False
        try:
            link = stat.S_ISLNK(os.lstat(key).st_mode)
        except OSError:
            return False
        return not link or self.inside_roots(Path(name))

    def inside_roots(self, path: Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in self.real_roots)

    def folder_for(self, raw: str) -> Path:
        if not raw or "\x00" in raw or ".." in Path(raw).parts or not os.path.isabs(raw):
            raise OutsideRoots(f"not a reviewed folder: {raw!r}")
        folder = Path(os.path.normpath(raw))
        if not os.path.lexists(folder):  # a name shown with U+FFFD: the folder it stands for
            self._wait(self._listed)
            folder = Path(self._web_folders.get(str(folder), folder))
        if not any(folder == r or r in folder.parents for r in self.roots) or not self.inside_roots(folder):
            raise OutsideRoots(f"not a reviewed folder: {raw!r}")
        return folder

    def tag_for(self, name: str) -> int:
        i = self.tag_index.get(name.casefold())
        if i is None:
            raise UsageError(f"not a tag of the vocabulary: {name!r}")
        return i

    # -- scores ---------------------------------------------------------------------------------
    def _tag_scores(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores of every photo for tag ``i``, photo rows best first), memoized for a few tags."""
        with self._lock:
            hit = self._scores.get(i)
            if hit is not None:
                self._scores.move_to_end(i)
                return hit
        s = self._scores_of(self.vectors, self.tag_matrix[i])
        order = np.argsort(-s, kind="stable")
        with self._lock:
            self._scores[i] = (s, order)
            while len(self._scores) > 16:
                self._scores.popitem(last=False)
        return s, order

    def _scores_of(self, unit_vectors: np.ndarray, tags: np.ndarray) -> np.ndarray:
        """:func:`scoring.score_images` on vectors normalized at load (no per-request copy of them)."""
        cos = unit_vectors @ np.asarray(tags, dtype=np.float32).T
        if self.logit_bias is None:
            return np.asarray(cos, dtype=np.float32)
        logits = np.float64(self.logit_scale) * cos.astype(np.float64) + np.float64(self.logit_bias)
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def photo_scores(self, photo: Photo) -> np.ndarray:
        if self._loaded.is_set():
            one = self.vectors[photo.row : photo.row + 1]
        else:  # the vectors are still loading: this photo's own from the cache
            with open_store(self.cache, readonly=True) as store:
                one = store.vectors(self.model_id, [photo.content_id], int(self.tag_matrix.shape[1]))
        return scoring.score_images(
            one,
            self.tag_matrix,
            logit_scale=self.logit_scale,
            logit_bias=self.logit_bias,
        )[0]

    def _written(self, photos: Sequence[Photo]) -> dict[bytes, list[str]]:
        with open_store(self.cache, readonly=True) as store:
            recs = store.written(path_key(p.path) for p in photos)
        return {k: list(r.keywords) for k, r in recs.items()}

    def _decisions(self, photos: Sequence[Photo]) -> dict[int, dict[str, int]]:
        with open_store(self.cache, readonly=True) as store:
            found = store.reviews_for(p.content_id for p in photos)
        return {cid: {t.casefold(): d for t, d in ds.items()} for cid, ds in found.items()}

    # -- views ----------------------------------------------------------------------------------
    def tag_summary(self, wait: bool = False) -> list[tuple[str, int | None, float]]:
        """(tag, photos at or above its threshold, threshold) per tag, most photos first. The counts
        need every photo scored against every tag (seconds on 100k photos x 1,000 tags): they are
        counted once in the background, and are None (alphabetical order) until then."""
        if wait:
            self._counted.wait()
        counts = self._counts
        if counts is None:
            return sorted((t.keyword, None, float(self.thresholds[i])) for i, t in enumerate(self.vocab.tags))
        out = [(t.keyword, int(counts[i]), float(self.thresholds[i])) for i, t in enumerate(self.vocab.tags)]
        return sorted(out, key=lambda t: (-(t[1] or 0), t[0]))

    def _count_tags(self) -> None:
        counts = np.zeros(len(self.vocab.tags), dtype=np.int64)
        for start in range(0, len(self.photos), 8192):
            s = self._scores_of(self.vectors[start : start + 8192], self.tag_matrix)
            counts += (s >= self.thresholds[None, :]).sum(axis=0)
        self._counts = counts
        self._counted.set()

    def tag_grid(self, name: str, page: int = 0, per_page: int = PAGE_SIZE) -> TagGrid:
        i = self.tag_for(name)
        keyword = self.vocab.tags[i].keyword
        s, order = self._tag_scores(i)
        threshold = float(self.thresholds[i])
        total = len(order)
        pages = max(1, -(-total // per_page))
        page = min(max(page, 0), pages - 1)
        rows = order[page * per_page : (page + 1) * per_page]
        photos = [self.photos[int(r)] for r in rows]
        written = self._written(photos)
        decisions = self._decisions(photos)
        items = [
            GridItem(
                p,
                float(s[p.row]),
                keyword.casefold() in {k.casefold() for k in written.get(path_key(p.path), [])},
                decisions.get(p.content_id, {}).get(keyword.casefold(), 0),
            )
            for p in photos
        ]
        return TagGrid(keyword, threshold, total, int((s >= threshold).sum()), page, pages, items)

    def photo_view(self, photo: Photo) -> PhotoView:
        scores = self.photo_scores(photo)
        explanation = explain_scores(
            scores,
            self.vocab,
            self.options,
            model_name=self.model_name,
            probabilities=self.probabilities,
            top=len(scores),
        )
        written = self._written([photo]).get(path_key(photo.path), [])
        return PhotoView(photo, explanation, written, self._decisions([photo]).get(photo.content_id, {}))

    def folder_view(self, folder: Path, page: int = 0, per_page: int = PAGE_SIZE) -> FolderView:
        self._wait(self._listed)
        prefix = str(folder).rstrip("/") + "/"
        subs: dict[str, int] = {}
        here: list[Photo] = []
        lo = bisect.bisect_left(self._path_strs, prefix)
        hi = bisect.bisect_left(self._path_strs, prefix[:-1] + "0")  # "0" follows "/"
        for s, row in self._sorted_paths[lo:hi]:
            rest = s[len(prefix) :]
            cut = rest.find("/")
            if cut >= 0:
                sub = rest[:cut]
                subs[sub] = subs.get(sub, 0) + 1
            else:
                here.append(self.photos[row])
        pages = max(1, -(-len(here) // per_page))
        page = min(max(page, 0), pages - 1)
        shown = here[page * per_page : (page + 1) * per_page]
        written = self._written(shown)
        return FolderView(
            folder,
            [(folder / name, n) for name, n in sorted(subs.items())],
            [(p, written.get(path_key(p.path), [])) for p in shown],
            len(here),
            page,
            pages,
        )

    def search(self, text: str, top: int = PAGE_SIZE) -> list[tuple[Photo, float]]:
        """The reviewed photos best matching a text (``rtagx search`` over the reviewed roots). Only
        text: a word naming an image file would make it an image query, read from disk; refused."""
        from rtagx.analysis.search import search
        from rtagx.imaging.formats import SUPPORTED_EXTENSIONS

        tokens = text.split()
        if not tokens:
            return []
        if any(Path(t).suffix.lower() in SUPPORTED_EXTENSIONS or "/" in t or t.startswith("~") for t in tokens):
            raise UsageError("search by text only: no file names")
        result = search(tokens, self.settings, scope=self.roots, top=top)
        out = []
        for hit in result.hits:
            photo = self.by_path.get(os.fsdecode(hit.path))
            if photo is not None:
                out.append((photo, float(hit.score)))
        return out

    # -- changes --------------------------------------------------------------------------------
    def decide(self, photos: Sequence[Photo], tag: str, decision: int) -> list[FileOutcome]:
        """Record a decision (+1 accept, -1 reject, 0 forget) on ``tag`` for ``photos`` in the cache,
        then rewrite their keywords with ``retag`` (scoring hook, atomic writer, cache lock)."""
        i = self.tag_for(tag)
        keyword = self.vocab.tags[i].keyword
        if decision not in (ACCEPTED, REJECTED, 0):
            raise UsageError(f"decision must be 1, -1 or 0, not {decision}")
        with self._write_lock:
            lock = WriterLock(self.cache)
            lock.acquire(wait=True, timeout=60)
            try:
                with open_store(self.cache) as store:
                    rows = [
                        (p.content_id, keyword, decision, self.model_id, float(self.photo_scores(p)[i])) for p in photos
                    ]
                    store.put_reviews(rows)
            finally:
                lock.release()
            # every reviewed copy of the same content gets the decision too (it is kept by content)
            contents = {p.content_id for p in photos}
            copies = [p.path for p in self.photos if p.content_id in contents]
            # a copy deleted since the listing is a skip of its own: retag refuses a missing path
            # (for every path of the call), and with no path at all it would cover every root
            here = [c for c in copies if os.path.lexists(c)]
            gone = [
                FileOutcome(c, "skipped", [], reason="missing", detail="deleted since the page was listed")
                for c in copies
                if c not in here
            ]
            return (self._retag(here, dry_run=False) if here else []) + gone

    def add_by_hand(self, photos: Sequence[Photo], tag: str) -> list[FileOutcome]:
        """A person adds ``tag`` to ``photos``: it is the person's keyword, never rtagx's. It is
        written into each reviewed copy (where rtagx writes that file's keywords: IPTC + XMP, sidecar
        or caption) through the atomic writer, under the cache lock, without entering rtagx's record
        (a keyword rtagx had written is handed over), so no untag, retag or replace-own removes it.
        The tag is also recorded as accepted on the content, as the person's verdict on it."""
        i = self.tag_for(tag)
        t = self.vocab.tags[i]
        keyword = self.vocab.rename(t.keyword)
        hier = "|".join(scoring.hierarchy_levels(t, self.vocab))
        contents = {p.content_id for p in photos}
        outcomes: list[FileOutcome] = []
        with self._write_lock:
            lock = WriterLock(self.cache)
            lock.acquire(wait=True, timeout=60)
            try:
                with open_store(self.cache) as store:
                    store.put_reviews(
                        [
                            (p.content_id, t.keyword, ACCEPTED, self.model_id, float(self.photo_scores(p)[i]))
                            for p in photos
                        ]
                    )
                    roots = store.roots()
                    for p in [p for p in self.photos if p.content_id in contents]:
                        key = path_key(p.path)
                        record = store.written([key]).get(key)
                        place = written_place(self.settings, record, owning_root(p.path, roots))
                        score = [(t.keyword, float(self.photo_scores(p)[i]))]
                        try:
                            result = metadata.add_person_keywords(
                                p.path,
                                [keyword],
                                hierarchical=[hier] if hier else [],
                                target=place["write"],
                                sidecar_style=place["sidecar_style"],
                                caption_ext=place["caption_ext"],
                                preserve_mtime=self.settings.preserve_mtime,
                            )
                        except FileSkip as e:
                            outcomes.append(FileOutcome(p.path, "skipped", score, reason=e.reason, detail=e.detail))
                            continue
                        folded = keyword.casefold()
                        if record is not None and any(k.casefold() == folded for k in record.keywords):
                            # handed over: rtagx's record of what it wrote no longer holds it
                            store.put_written(
                                [
                                    record._replace(
                                        keywords=[k for k in record.keywords if k.casefold() != folded],
                                        hierarchical=[
                                            h for h in record.hierarchical if h.rsplit("|", 1)[-1].casefold() != folded
                                        ],
                                    )
                                ]
                            )
                        outcomes.append(
                            FileOutcome(
                                p.path,
                                "written" if result.changed else "unchanged",
                                score,
                                added=list(result.added),
                                target=result.target,
                                written_to=result.written_to,
                                warnings=list(result.warnings),
                            )
                        )
            finally:
                lock.release()
        with self._lock:
            self._scores.clear()
        return outcomes

    def plan(self) -> list[FileOutcome]:
        """What the next ``retag`` of the reviewed roots would change (nothing is written)."""
        return [o for o in self._retag(self.roots, dry_run=True) if o.action != "unchanged"]

    def apply(self) -> list[FileOutcome]:
        with self._write_lock:
            return [o for o in self._retag(self.roots, dry_run=False) if o.action != "unchanged"]

    def _retag(self, paths: Sequence[Path], *, dry_run: bool) -> list[FileOutcome]:
        outcomes: list[FileOutcome] = []
        events = RunEvents(on_file=outcomes.append)
        summary: RunSummary = run_retag(
            list(paths), self.overrides, dry_run=dry_run, events=events, config_path=self.config_path
        )
        del summary
        with self._lock:
            self._scores.clear()
        return outcomes

    # -- thumbnails -----------------------------------------------------------------------------
    def thumbnail(self, photo: Photo, size: int) -> bytes | None:
        """A JPEG of the photo fitted into ``size`` pixels (draft-mode decode), cached on disk by
        content; None when the file cannot be decoded."""
        size = min(THUMB_SIZES, key=lambda s: abs(s - size))
        name = f"{photo.fingerprint.replace('/', '_')[:64]}-{size}.jpg"
        cached = self.thumbs_dir / name
        try:
            data = cached.read_bytes()
            os.utime(cached)  # recently used: evicted last
            return data
        except OSError:
            pass
        from PIL import Image

        from rtagx.imaging.decode import PreprocessSpec, decode_for_model

        spec = PreprocessSpec(
            size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode="longest", fill_color=13
        )
        try:
            pixels = decode_for_model(photo.path, spec)
        except Exception:  # an unreadable file gets a placeholder; the page still lists it
            return None
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=82)
        data = buf.getvalue()
        self._keep_thumbnail(cached, data)
        return data

    def _keep_thumbnail(self, target: Path, data: bytes) -> None:
        try:
            self.thumbs_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            return
        with self._lock:
            if self._thumb_bytes is None:
                self._thumb_bytes = thumbnail_bytes(self.thumbs_dir)
            else:
                self._thumb_bytes += len(data)
            if self._thumb_bytes > self.thumb_budget:
                self._thumb_bytes = prune_thumbnails(self.thumbs_dir, int(self.thumb_budget * 0.8))[1]
