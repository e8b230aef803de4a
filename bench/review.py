"""``rtagx review`` at library scale: time to the first page of every view on a big cached library.

Run (about a minute at 100,000 photos on 2 cores, most of it filling the cache)::

    python3 bench/review.py --files 100000 --workdir /tmp/rtagx-review-bench

What it builds, in ``--workdir``: a cache filled through the ``rtagx.cache.store`` API as ``rtagx tag``
fills it (one file row per photo in nested folders of 100, one 512-dim vector per content like
ViT-B/16, prompt vectors of the 1,000-tag ``imagenet`` vocabulary, the root with its settings). The
photo files themselves are not written (no page but the thumbnail reads them): one real camera JPEG
is added to time a thumbnail cold (draft-mode decode) and warm (from the disk cache).

What it measures: the start (settings, vocabulary and prompt vectors: what ``rtagx review`` does
before it prints its address; the photos and their vectors load in the background), the first page
(the tag list the command opens) at once, a tag's grid asked for before the vectors are in, the
time until they are; then, once loaded, over real HTTP to the running server (token, Host and Origin checks
included) the first request of each view: a tag's grid page 1 (scores 100k photos for the tag, sorts
them), its page 2 (memoized), a photo's explain view, the biggest folder, the tag list, the dry run
of the next retag is not timed here (it is `retag --dry-run`, see bench/cache_scale.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DIM = 512
PER_FOLDER = 100
SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "camera-samples" / "jpg" / "Canon_40D.jpg"


def build(work: Path, n: int, seed: int = 0) -> dict:
    from rtagx.cache.store import FileRow, open_store
    from rtagx.tags import scoring
    from rtagx.tags import vocab as vocab_mod

    rng = np.random.default_rng(seed)
    root = Path(os.path.abspath(work / "library"))
    cache = work / "cache.sqlite3"
    shutil.rmtree(work, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.copy2(SAMPLE, root / "real.jpg")
    vocabulary = vocab_mod.load_vocabulary("imagenet")
    prompts = vocabulary.all_prompts()
    key = "bench-review-512"
    with open_store(cache) as store:
        mid = store.model_id(key, {"name": "ViT-B-16"}, dim=DIM)
        text: dict[str, np.ndarray] = {}
        for tag in vocabulary.tags:
            centre = rng.normal(size=DIM)
            for p in vocabulary.prompts_for(tag):
                if p not in text:
                    v = centre + 0.5 * rng.normal(size=DIM)
                    text[p] = (v / np.linalg.norm(v)).astype(np.float32)
        store.put_text_vectors(mid, prompts, np.stack([text[p] for p in prompts]))
        matrix = scoring.build_tag_matrix(vocabulary, store.text_vectors(mid, prompts))
        paths = [root / "real.jpg"] + [
            root / f"a{i // 10000:03d}" / f"b{(i // PER_FOLDER) % 100:02d}" / f"img{i:07d}.jpg" for i in range(n - 1)
        ]
        from rtagx.cache.fingerprint import fingerprint_file

        real_fp = fingerprint_file(root / "real.jpg")
        st = os.stat(root / "real.jpg")
        for start in range(0, n, 5000):
            part = paths[start : start + 5000]
            rows = [
                FileRow(p, st.st_size, st.st_mtime_ns, real_fp if p.name == "real.jpg" else f"fp{start + k:09d}")
                for k, p in enumerate(part)
            ]
            ids = store.put_files(rows)
            picks = rng.integers(0, len(vocabulary.tags), size=(len(part), 3))
            vecs = matrix[picks].sum(axis=1) + rng.normal(scale=1.0 / np.sqrt(DIM), size=(len(part), DIM)) * 1.5
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.put_vectors(mid, ids, vecs.astype(np.float32))
        store.put_root(root, {"model_key": key, "tags": "imagenet", "write": "none"})
    return {"root": root, "cache": cache}


def get(port: int, target: str) -> tuple[float, int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", target)
    resp = conn.getresponse()
    body = resp.read()
    took = time.perf_counter() - t0
    conn.close()
    return took, resp.status, len(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rtagx-review-bench"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    lib = build(args.workdir, args.files)
    print(f"built {args.files} cached photos in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    from rtagx.review.app import ReviewServer
    from rtagx.review.library import ReviewLibrary

    t0 = time.perf_counter()
    library = ReviewLibrary([lib["root"]], {"cache": str(lib["cache"])})
    start_s = time.perf_counter() - t0
    server = ReviewServer(library)
    server.start()
    serving_s = time.perf_counter() - t0
    q = lambda **kw: urllib.parse.urlencode({**kw, "token": server.token})  # noqa: E731
    folder = lib["root"] / "a000" / "b00"
    tag = library.vocab.tags[0].keyword
    results: dict[str, float | int] = {"tags": len(library.vocab.tags), "start_s": round(start_s, 3)}
    results["serving_after_s"] = round(serving_s, 3)
    try:
        # the page the command opens, while the photos and vectors still load in the background
        took, status, _ = get(server.port, f"/?{q()}")
        assert status == 200, ("first_page", status)
        results["first_page_s"] = round(took, 4)
        results["first_page_after_start_s"] = round(time.perf_counter() - t0, 3)
        # a tag's grid asked for at once waits for the vectors (another tag than the ones timed below)
        took, status, _ = get(server.port, f"/tag?{q(name=library.vocab.tags[250].keyword)}")
        assert status == 200, ("tag_while_loading", status)
        results["tag_page1_while_loading_s"] = round(took, 4)
        library.wait_loaded()
        results["loaded_after_s"] = round(time.perf_counter() - t0, 3)
        results["photos"] = len(library.photos)
        for name, target in [
            ("tag_page1", f"/tag?{q(name=tag)}"),
            ("tag_page2", f"/tag?{q(name=tag, page=1)}"),
            ("other_tag_page1", f"/tag?{q(name=library.vocab.tags[500].keyword)}"),
            ("photo", f"/photo?{q(path=lib['root'] / 'real.jpg')}"),
            ("folder_root", f"/folder?{q(path=lib['root'])}"),
            ("folder_leaf", f"/folder?{q(path=folder)}"),
            ("tag_list", f"/?{q()}"),
            ("thumb_cold", f"/thumb?{q(path=lib['root'] / 'real.jpg', size=256)}"),
            ("thumb_warm", f"/thumb?{q(path=lib['root'] / 'real.jpg', size=256)}"),
        ]:
            took, status, _ = get(server.port, target)
            assert status == 200, (name, status)
            results[f"{name}_s"] = round(took, 4)
        t0 = time.perf_counter()
        library.tag_summary(wait=True)
        results["tag_counts_ready_after_s"] = round(time.perf_counter() - t0, 3)
    finally:
        server.stop()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
