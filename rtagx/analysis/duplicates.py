"""``rtagx duplicates``: groups of near-duplicate photos from the cached vectors, each with a keeper.

Nothing is decoded but the group members' headers (for pixel counts and dates), and nothing is
ever deleted or moved. Two kinds of evidence:

* files sharing one cached content (byte-identical copies, or copies whose keywords alone differ)
  are duplicates whatever the model says;
* vectors whose cosine reaches the threshold (re-encoded, resized, lightly cropped copies, bursts).
  Pairs are found by blocked matrix products (bfloat16 tiles, then an exact float32 check of each
  candidate), never an n x n matrix: memory is one tile plus the pairs found.

The default threshold follows the model's scale: cosines between unrelated photos sit around 0.5
for CLIP ViT-B models but around 0.95 for a model with random weights, so a fixed number cannot
serve both. The default keeps pairs closer than ``AUTO_FRACTION`` of the typical distance among all
the model's cached vectors, whatever the scope (one minus the mean cosine of all pairs, which their
sum gives exactly in one pass): a folder of five burst shots does not set its own scale.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.analysis.search import CachedModel, choose_model, text_path
from rtagx.cache.store import FileRecord, key_path, open_store
from rtagx.errors import UsageError
from rtagx.settings import Settings

#: Near-duplicates are closer than this fraction of the library's typical cosine distance. Measured
#: with the test model on real photos (tests/test_search.py): re-encoded half-size copies sit at
#: 0.02 of it, 5%-cropped copies at 0.04, the closest distinct photos at 0.12. For CLIP ViT-B
#: models (unrelated photos at cosine ~0.45) this gives ~0.955: an estimate until measured there.
AUTO_FRACTION = 0.08
#: bfloat16 tiles round cosines by up to ~0.004; candidates within this margin get an exact check.
BF16_MARGIN = 0.01
#: More pairs than this many per image means the threshold no longer describes duplicates.
MAX_PAIRS_PER_IMAGE = 32


@dataclass
class Member:
    path: Path
    content_id: int
    score: float  # cosine with the keeper's vector (1.0 for the same content)
    width: int = 0
    height: int = 0
    taken: str = ""  # EXIF DateTimeOriginal, else the file's modification time
    bytes: int = 0
    keeper: bool = False
    same_content: bool = False  # the keeper's own content: a byte-identical (or metadata-only) copy

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def as_json(self) -> dict[str, Any]:
        return {
            "path": text_path(self.path),
            "keeper": self.keeper,
            "score": round(self.score, 5),
            "same_content": self.same_content,
            "width": self.width,
            "height": self.height,
            "taken": self.taken,
            "bytes": self.bytes,
        }


@dataclass
class Group:
    members: list[Member]  # the keeper first
    why: str  # why the keeper was chosen

    @property
    def keeper(self) -> Member:
        return self.members[0]

    def as_json(self, number: int) -> dict[str, Any]:
        return {"group": number, "keeper": text_path(self.keeper.path), "why": self.why} | {
            "files": [m.as_json() for m in self.members]
        }


@dataclass
class DuplicatesResult:
    groups: list[Group]
    model: CachedModel
    threshold: float
    threshold_source: str  # "option", or "auto: ..." with the library's scale
    compared: int  # vectors compared
    timings: dict[str, float] = field(default_factory=dict)


def auto_threshold(total: np.ndarray, count: int) -> tuple[float, float]:
    """(threshold, typical distance) from the sum of ``count`` unit vectors: the mean cosine of all
    pairs is (|sum|^2 - count) / (count * (count - 1))."""
    if count < 2:
        return 1.0, 0.0
    mean_pair = (float(total @ total) - count) / (count * (count - 1))
    typical = max(1.0 - mean_pair, 1e-6)
    return 1.0 - AUTO_FRACTION * typical, typical


def similar_pairs(
    vectors: np.ndarray, threshold: float, *, rows: int = 1024, cols: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) whose cosine reaches ``threshold``: (i, j, exact float32 cosine).

    Tiles of ``rows x cols`` bfloat16 products (AMX/AVX-512 matrix units make these ~3x faster than
    float32 here) pick candidates; each candidate's cosine is then computed exactly. The tile is
    allocated once (32 MiB: a fresh allocation per tile cost more in page faults than the products
    themselves), and only rows whose maximum reaches the threshold are searched for columns (a
    full comparison and nonzero over every tile took longer than the products).
    """
    import torch

    n = len(vectors)
    empty = np.zeros(0, np.int64)
    if n < 2:
        return empty, empty, np.zeros(0, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(vectors)).to(torch.bfloat16)
    low = threshold - BF16_MARGIN
    tile_buffer = torch.empty((rows, cols), dtype=torch.bfloat16)
    # pairs (i, j) with j <= i, masked out of the tile holding the diagonal
    lower = torch.ones((rows, cols), dtype=torch.bool).tril_(0)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found = 0
    limit = max(100_000, MAX_PAIRS_PER_IMAGE * n)
    with torch.inference_mode():
        for a in range(0, n, rows):
            block = x[a : a + rows]
            for b in range(a, n, cols):
                other = x[b : b + cols]
                tile = tile_buffer[: len(block), : len(other)]
                torch.matmul(block, other.T, out=tile)
                if b == a:  # the tile holding the diagonal: keep j > i only
                    tile.masked_fill_(lower[: len(block), : len(other)], -2.0)
                # most rows hold no candidate: find the rows first (one pass), then their columns
                rows_hit = (tile.amax(dim=1) >= low).nonzero().flatten()
                if not len(rows_hit):
                    continue
                ij = (tile[rows_hit] >= low).nonzero().numpy()
                found_i.append(rows_hit.numpy()[ij[:, 0]] + a)
                found_j.append(ij[:, 1] + b)
                found += len(ij)
            if found > limit:
                raise UsageError(
                    f"a minimum score of {threshold:.4f} pairs more than {MAX_PAIRS_PER_IMAGE} images per image: "
                    f"that is similarity, not duplication; raise --min-score"
                )
    if not found_i:
        return empty, empty, np.zeros(0, np.float32)
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    exact = np.empty(len(i), np.float32)
    for start in range(0, len(i), 65536):
        s = slice(start, start + 65536)
        exact[s] = np.einsum(
            "nd,nd->n", vectors[i[s]].astype(np.float32), vectors[j[s]].astype(np.float32), optimize=False
        )
    keep = exact >= threshold
    return i[keep], j[keep], exact[keep]


def complete_linkage(i: np.ndarray, j: np.ndarray, score: np.ndarray) -> list[list[int]]:
    """Groups in which every two members reach the threshold (complete linkage over the pairs found).

    Connected components would chain: A like B, B like C puts A with C however different they are
    (with the test model, two crops of unrelated small photos joined two groups). Pairs are taken
    best first; two groups merge only when every cross pair was found."""
    found = set(zip(i.tolist(), j.tolist()))
    group_of: dict[int, list[int]] = {}
    for k in np.argsort(-score, kind="stable").tolist():
        a, b = int(i[k]), int(j[k])
        ga, gb = group_of.get(a, [a]), group_of.get(b, [b])
        if ga is gb:
            continue
        if all((min(x, y), max(x, y)) in found for x in ga for y in gb):
            merged = ga + gb
            for x in merged:
                group_of[x] = merged
    unique = {id(g): g for g in group_of.values()}
    return [sorted(g) for g in unique.values()]


def image_facts(path: Path) -> tuple[int, int, str, float]:
    """(width, height, capture time text, capture time as a timestamp) from the file's header;
    the modification time stands in for a missing EXIF date. Zero size when no header is readable."""
    from PIL import Image

    from rtagx.imaging.decode import shown_size

    width = height = 0
    taken, stamp = "", 0.0
    try:
        st = os.stat(path)
        stamp = st.st_mtime
        taken = datetime.fromtimestamp(st.st_mtime).strftime("%Y-%m-%d %H:%M:%S") + " (file)"
    except OSError:
        return 0, 0, "", 0.0
    try:
        with Image.open(path) as im:
            width, height = shown_size(im)  # a photo turned by its EXIF orientation: as shown
            exif = im.getexif()
            text = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, else DateTime
            if text:
                when = datetime.strptime(str(text).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
                taken, stamp = when.strftime("%Y-%m-%d %H:%M:%S"), when.timestamp()
    except Exception:  # any unreadable header or odd date: size and date stay as far as known
        pass
    if not width and path.suffix.lower() in _raw_extensions():
        try:
            import rawpy

            with rawpy.imread(str(path)) as raw:
                width, height = raw.sizes.width, raw.sizes.height
        except Exception:
            pass
    return width, height, taken, stamp


def _raw_extensions() -> frozenset[str]:
    from rtagx.imaging.formats import RAW_EXTENSIONS

    return RAW_EXTENSIONS


def choose_keeper(members: list[Member], stamps: dict[Path, float]) -> tuple[list[Member], str]:
    """Most pixels first, then the oldest, then the shortest path; returns the members keeper first."""
    ordered = sorted(members, key=lambda m: (-m.pixels, stamps.get(m.path, 0.0), len(str(m.path)), str(m.path)))
    keeper, runner_up = ordered[0], ordered[1]
    if keeper.pixels > runner_up.pixels:
        mp = f", {keeper.pixels / 1e6:.1f} MP" if keeper.pixels >= 50_000 else ""
        why = f"most pixels ({keeper.width}x{keeper.height}{mp})"
    elif stamps.get(keeper.path, 0.0) < stamps.get(runner_up.path, 0.0):
        why = f"same pixel count, oldest ({keeper.taken})"
    else:
        why = "same pixel count and date: shortest path"
    keeper.keeper = True
    return ordered, why


def find_duplicates(
    settings: Settings, *, scope: Sequence[Path] = (), min_score: float | None = None
) -> DuplicatesResult:
    """Groups of duplicates among the cached images under ``scope`` (default: the whole cache)."""
    timings: dict[str, float] = {}
    scope = [Path(os.path.abspath(os.path.expanduser(p))) for p in scope]
    for p in scope:
        if not os.path.lexists(p):
            raise UsageError(f"path not found: {p}")
    started = time.perf_counter()
    with open_store(settings.cache_path(), readonly=True) as store:
        model = choose_model(store, settings, scope)
        records: list[FileRecord] = []
        if scope:
            seen: set[bytes] = set()
            for p in scope:
                for key, rec in store.files_under(p).items():
                    if key not in seen:
                        seen.add(key)
                        records.append(rec)
        else:
            records = list(store.iter_files())
        if scope and not records:
            raise UsageError(f"no cached images under {', '.join(map(str, scope))}: run `rtagx tag` on them first")
        files_of: dict[int, list[FileRecord]] = {}
        for rec in records:
            files_of.setdefault(rec.content_id, []).append(rec)
        wanted = np.array(sorted(files_of), dtype=np.int64)
        id_blocks: list[np.ndarray] = []
        row_blocks: list[np.ndarray] = []
        total = np.zeros(model.dim, np.float64)  # sum of every vector of the model: its scale here
        count = 0
        for ids, rows in store.iter_vectors(model.id, model.dim):
            total += rows.astype(np.float32).sum(axis=0, dtype=np.float64)
            count += len(ids)
            keep = np.isin(ids, wanted, assume_unique=True)
            if keep.any():
                id_blocks.append(ids[keep])
                row_blocks.append(rows[keep])  # a fresh array: boolean indexing copies
    timings["load-vectors"] = time.perf_counter() - started
    ids = np.concatenate(id_blocks) if id_blocks else np.zeros(0, np.int64)
    vectors = np.concatenate(row_blocks) if row_blocks else np.zeros((0, model.dim), np.float16)
    if min_score is None:
        threshold, typical = auto_threshold(total, count)
        source = f"auto: {AUTO_FRACTION:g} of the cache's typical cosine distance {typical:.4f}"
    else:
        threshold, source = float(min_score), "option"
    started = time.perf_counter()
    i, j, scores = similar_pairs(vectors, threshold)
    timings["pairs"] = time.perf_counter() - started
    started = time.perf_counter()
    clusters = complete_linkage(i, j, scores)
    in_cluster = {int(ids[k]) for c in clusters for k in c}
    # contents held by several files and similar to nothing else: byte-identical copies
    content_sets = [[int(ids[k]) for k in c] for c in clusters]
    content_sets += [[cid] for cid, recs in files_of.items() if len(recs) > 1 and cid not in in_cluster]
    row_of = {int(cid): k for k, cid in enumerate(ids.tolist())}
    groups: list[Group] = []
    for contents in content_sets:
        stamps: dict[Path, float] = {}
        members: list[Member] = []
        for cid in contents:
            for rec in files_of.get(cid, []):
                path = key_path(rec.path)
                if not os.path.lexists(path):
                    continue  # gone since it was cached
                width, height, taken, stamp = image_facts(path)
                stamps[path] = stamp
                members.append(Member(path, cid, 1.0, width, height, taken, rec.size))
        if len(members) < 2:
            continue
        ordered, why = choose_keeper(members, stamps)
        keeper = ordered[0]
        for m in ordered[1:]:
            if m.content_id == keeper.content_id:
                m.same_content = True
            elif m.content_id in row_of and keeper.content_id in row_of:
                a = vectors[row_of[m.content_id]].astype(np.float32)
                b = vectors[row_of[keeper.content_id]].astype(np.float32)
                m.score = float(a @ b)
        groups.append(Group(ordered, why))
    groups.sort(key=lambda g: (-len(g.members), str(g.keeper.path)))
    timings["groups"] = time.perf_counter() - started
    return DuplicatesResult(groups, model, threshold, source, len(ids), timings)
