"""``rtagx tag --engine ray`` on a real local Ray cluster: a head and two worker nodes on this machine
(``ray.cluster_utils.Cluster``), the tiny CLIP, real camera photos.

One cluster for the module (starting it takes most of this module's time); each Ray run is a
module-scoped fixture that several tests look at. The local engine's run on the same files is the
reference: same keywords, vectors within float16 rounding.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from rtagx.cache.store import open_store, path_key  # noqa: E402
from rtagx.keywords import jpeg_segments as jpeg  # noqa: E402
from rtagx.model.encoder import resolve_model  # noqa: E402
from rtagx.run.events import FileOutcome, RunEvents, RunSummary  # noqa: E402
from rtagx.run.ray_engine import KILL_ONCE_VAR  # noqa: E402
from rtagx.run.tag import run_tag  # noqa: E402
from rtagx.settings import load_settings  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAMES = ["Canon_40D.jpg", "Nikon_D70.jpg", "Fujifilm_FinePix_E500.jpg", "Pentax_K10D.jpg", "Sony_HDR-HC3.jpg"]
MB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU) + 2 worker nodes (2 logical CPUs each), no dashboard, 100 MB object stores."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * MB},
    )
    for _ in range(2):
        c.add_node(num_cpus=2, object_store_memory=100 * MB)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "tags.txt"
    path.write_text("dog\ncat\nmountain\nbeach\ncar\nfood\nperson\nbuilding\n", encoding="utf-8")
    return path


def photos(where: Path, samples_dir: Path) -> Path:
    where.mkdir(parents=True)
    for name in [*NAMES, "corrupted.jpg"]:
        shutil.copy2(samples_dir / "jpg" / name, where / name)
    return where


def tag(folder: Path, cache: Path, tiny_clip, vocab: Path, events: RunEvents | None = None, **more) -> RunSummary:
    cfg, ckpt = tiny_clip
    options = {
        "model": str(cfg),
        "pretrained": str(ckpt),
        "cache": str(cache),
        "tags": str(vocab),
        "threshold": -1,
        "top_k": 3,
        "batch_size": 2,  # several batches, both actors busy; the local run uses the same
        **more,
    }
    return run_tag([folder], load_settings(options, environ={}), events=events)


def outcomes_of(folder: Path, cache: Path, tiny_clip, vocab: Path, **more) -> tuple[dict[str, FileOutcome], RunSummary]:
    seen: dict[str, FileOutcome] = {}
    events = RunEvents(on_file=lambda o: seen.__setitem__(o.path.name, o))
    summary = tag(folder, cache, tiny_clip, vocab, events, **more)
    return seen, summary


def vectors_of(cache: Path, folder: Path, tiny_clip) -> dict[str, np.ndarray]:
    key = resolve_model(str(tiny_clip[0]), str(tiny_clip[1])).identity.key
    with open_store(cache, readonly=True) as store:
        model_id = store.model_id_for_key(key)
        assert model_id is not None
        dim = 32  # the tiny CLIP's embed_dim (conftest.TINY_CONFIG)
        files = store.files_under(folder)
        out = {}
        for name in NAMES:
            rec = files[path_key(folder / name)]
            out[name] = store.vectors(model_id, [rec.content_id], dim)[0]
    return out


def keywords(path: Path) -> list[str]:
    out = subprocess.run(["exiftool", "-j", "-IPTC:Keywords", str(path)], capture_output=True, text=True, check=True)
    value = json.loads(out.stdout)[0].get("Keywords", [])
    return [str(k) for k in (value if isinstance(value, list) else [value])]


def scan_data(path: Path) -> bytes:
    """A JPEG's compressed image data: from its SOS marker to the end, never to be touched."""
    return jpeg.parse(path.read_bytes()).tail


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, samples_dir, tiny_clip, vocab):
    """The reference: the local engine on a copy of the photos."""
    folder = photos(tmp_path_factory.mktemp("local") / "photos", samples_dir)
    cache = folder.parent / "cache.sqlite3"
    seen, summary = outcomes_of(folder, cache, tiny_clip, vocab)
    return folder, cache, seen, summary


@pytest.fixture(scope="module")
def ray_run(cluster, tmp_path_factory, samples_dir, tiny_clip, vocab):
    """--engine ray on shared paths. One more photo, ``vanishing.jpg``, is there when the driver
    scans and hashes it and gone when a worker opens it (the embed stage's start removes it): a
    path the worker cannot read."""
    folder = photos(tmp_path_factory.mktemp("ray") / "photos", samples_dir)
    vanishing = folder / "vanishing.jpg"
    shutil.copy2(samples_dir / "jpg" / "Kodak_CX7530.jpg", vanishing)
    cache = folder.parent / "cache.sqlite3"
    seen: dict[str, FileOutcome] = {}

    def on_stage(name: str, total: int) -> None:
        if name == "embed":
            vanishing.unlink()

    events = RunEvents(on_file=lambda o: seen.__setitem__(o.path.name, o), on_stage=on_stage)
    summary = tag(folder, cache, tiny_clip, vocab, events, engine="ray", ray_address=cluster.address)
    return folder, cache, seen, summary


def test_ray_writes_the_local_engines_keywords_and_caches_its_vectors(ray_run, local_run, tiny_clip) -> None:
    folder, cache, seen, summary = ray_run
    ref_folder, ref_cache, ref_seen, ref_summary = local_run
    assert summary.embedded == ref_summary.embedded == len(NAMES)
    assert summary.written == ref_summary.written == len(NAMES)
    for name in NAMES:
        assert seen[name].action == "written" and seen[name].embedded
        assert [t for t, _ in seen[name].tags] == [t for t, _ in ref_seen[name].tags], name
        assert keywords(folder / name) == keywords(ref_folder / name) != [], name
    assert seen["corrupted.jpg"].reason == ref_seen["corrupted.jpg"].reason == "corrupt"
    mine, ref = vectors_of(cache, folder, tiny_clip), vectors_of(ref_cache, ref_folder, tiny_clip)
    for name in NAMES:  # the cache keeps float16: equal within its rounding
        np.testing.assert_allclose(mine[name], ref[name], atol=2e-3, err_msg=name)


def test_a_path_a_worker_cannot_read_is_skipped_with_its_reason(ray_run) -> None:
    _, _, seen, summary = ray_run
    gone = seen["vanishing.jpg"]
    assert gone.action == "skipped" and gone.reason == "unreadable-on-worker"
    assert "same path" in (gone.detail or "") and "--ray-ship-bytes" in (gone.detail or "")
    assert summary.skip_reasons == {"corrupt": 1, "unreadable-on-worker": 1}


def test_a_killed_encoder_process_loses_nothing_and_writes_nothing_twice(
    cluster, tmp_path, samples_dir, tiny_clip, vocab, local_run, monkeypatch
) -> None:
    """The first encoder actor SIGKILLs its own process on its first batch; Ray restarts it and
    retries the batch. Files are shipped as bytes (--ray-ship-bytes) in this run."""
    folder = photos(tmp_path / "photos", samples_dir)
    cache = tmp_path / "cache.sqlite3"
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_VAR, str(marker))
    _, summary = outcomes_of(
        folder, cache, tiny_clip, vocab, engine="ray", ray_address=cluster.address, ray_ship_bytes=True
    )
    assert marker.exists()  # an actor process did die
    assert summary.embedded == summary.written == len(NAMES) and summary.skip_reasons == {"corrupt": 1}
    ref_folder, ref_cache, _, _ = local_run
    mine, ref = vectors_of(cache, folder, tiny_clip), vectors_of(ref_cache, ref_folder, tiny_clip)
    for name in NAMES:
        words = keywords(folder / name)
        assert words == keywords(ref_folder / name) and len(words) == len(set(words)) == 3, name
        np.testing.assert_allclose(mine[name], ref[name], atol=2e-3, err_msg=name)
        assert scan_data(folder / name) == scan_data(samples_dir / "jpg" / name), name  # pixels untouched
    monkeypatch.delenv(KILL_ONCE_VAR)
    _, again = outcomes_of(folder, cache, tiny_clip, vocab, engine="ray", ray_address=cluster.address)
    assert again.embedded == 0 and again.written == 0 and again.unchanged == len(NAMES)


def _cli(args: list[str], *, block_ray: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (this one is connected to the test cluster)."""
    prelude = "import sys; sys.modules['ray'] = None; " if block_ray else ""
    code = f"{prelude}from rtagx.cli.commands import main; sys.argv = ['rtagx'] + sys.argv[1:]; main()"
    if not block_ray:
        code = "import sys; " + code
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, timeout=180
    )


def test_ray_not_installed_is_one_line_with_what_to_install(tmp_path, samples_dir, tiny_clip, vocab) -> None:
    folder = photos(tmp_path / "photos", samples_dir)
    cfg, ckpt = tiny_clip
    args = ["tag", str(folder), "--model", str(cfg), "--pretrained", str(ckpt), "--tags", str(vocab)]
    result = _cli([*args, "--cache", str(tmp_path / "c.sqlite3"), "--engine", "ray"], block_ray=True)
    assert result.returncode == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'rtagx[ray]'" in lines[0], result.stderr
    assert not (tmp_path / "c.sqlite3").exists()  # stopped before anything ran


def test_a_cluster_that_cannot_be_reached_is_one_line(tmp_path, samples_dir, tiny_clip, vocab) -> None:
    folder = photos(tmp_path / "photos", samples_dir)
    before = {name: (folder / name).read_bytes() for name in NAMES}
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg, ckpt = tiny_clip
    args = ["tag", str(folder), "--model", str(cfg), "--pretrained", str(ckpt), "--tags", str(vocab)]
    address = f"127.0.0.1:{port}"
    result = _cli([*args, "--cache", str(tmp_path / "c.sqlite3"), "--engine", "ray", "--ray-address", address])
    assert result.returncode == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at {address}" in lines[0], result.stderr
    assert {name: (folder / name).read_bytes() for name in NAMES} == before  # no file touched


@pytest.mark.parametrize(
    ("resources", "nodes", "options", "expected"),
    [
        ({"CPU": 64, "GPU": 8}, 2, {}, (8, 1.0, 128)),  # one actor per GPU
        ({"CPU": 64, "GPU": 8}, 2, {"ray_gpus_per_actor": 0.5}, (16, 0.5, 128)),  # two share a GPU
        ({"CPU": 5}, 3, {}, (2, 0.0, 16)),  # no GPU: one per node, at most half the CPUs
        ({"CPU": 32}, 4, {"ray_actors": 3, "batch_size": 8}, (3, 0.0, 8)),
    ],
)
def test_pool_defaults_come_from_the_clusters_resources(resources, nodes, options, expected) -> None:
    from rtagx.run.ray_engine import plan_pool

    plan = plan_pool(resources, nodes, load_settings(options, environ={}))
    assert (plan.actors, plan.gpus_per_actor, plan.batch_size) == expected


def test_a_pool_that_would_leave_no_cpu_for_decoding_is_refused() -> None:
    from rtagx.errors import ClusterError
    from rtagx.run.ray_engine import plan_pool

    with pytest.raises(ClusterError, match="leave none for decoding"):
        plan_pool({"CPU": 4}, 4, load_settings({"ray_actors": 4}, environ={}))
    with pytest.raises(ClusterError, match="has 0 GPUs"):
        plan_pool({"CPU": 4}, 1, load_settings({"ray_gpus_per_actor": 1}, environ={}))


def test_several_models_on_ray_write_the_local_engines_union(
    cluster, tmp_path, samples_dir, tiny_clip, tiny_clip_other, vocab
) -> None:
    """``--model A --model B --engine ray``: each model's share goes to the cluster in turn (the
    further model first, collecting), and the files get the same union as from the local engine."""
    other = (str(tiny_clip_other[0]), str(tiny_clip_other[1]))
    results: dict[str, dict[str, list[str]]] = {}
    for engine in ("local", "ray"):
        folder = photos(tmp_path / engine / "photos", samples_dir)
        cfg, ckpt = tiny_clip
        options = {
            "model": str(cfg),
            "pretrained": str(ckpt),
            "cache": str(tmp_path / engine / "cache.sqlite3"),
            "tags": str(vocab),
            "threshold": -1,
            "top_k": 2,
            "engine": engine,
            **({"ray_address": cluster.address} if engine == "ray" else {}),
        }
        summary = run_tag([folder], load_settings(options, environ={}), extra_models=[other])
        assert summary.embedded == 2 * len(NAMES) and summary.written == len(NAMES), engine
        results[engine] = {name: keywords(folder / name) for name in NAMES}
    assert results["ray"] == results["local"]
    assert all(len(words) >= 2 for words in results["ray"].values())
