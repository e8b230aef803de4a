"""The Ray executor of the embed stages (``rtagx tag --engine ray``): the same stage functions as
``run/local.py``, spread over a Ray cluster with Ray Data's batch-inference pattern.

    driver: scan -> diff_with_cache (only content the cache lacks leaves this process)
    cluster: [read bytes on the driver's node, --ray-ship-bytes] -> decode_file (CPU tasks)
             -> encode_batch (an actor pool: the model is loaded once per actor)
    driver: iter_batches -> BatchWriter (store_batch, score, write keywords: the local engine's path)

Vectors stream back batch by batch and are stored as they arrive, so a job that dies loses only the
batches in flight, and the next run embeds only what is missing. A file a worker cannot read is
skipped as ``unreadable-on-worker``; a decode that hangs is skipped as ``decode-timeout`` inside its
task, so no file can hang the job. Ray itself is imported only here and only for ``--engine ray``.

Measured (bench/ray_scale.py --model vit-b-16 --images 64, 2 loaded cores of an Intel Xeon; the
README's "More than one machine"): one local worker node embeds at 0.95x the local engine's rate
over the embed stage, after a fixed start of 15-20 s (attach, a model probe, actors loading the
model); the driver alone stores and scores 1,195 vectors/s and writes keywords into 67 JPEGs/s,
which is what bounds how many GPU nodes one driver can feed (about one A100 at ~1,100 img/s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.errors import ClusterError, FileSkip, RtagxError
from rtagx.imaging import decode
from rtagx.model.encoder import ModelIdentity, ResolvedModel, load_encoder, resolve_model
from rtagx.run.events import RunEvents, RunSummary, Timer, add_time
from rtagx.run.local import BatchWriter
from rtagx.run.scan import ScannedFile
from rtagx.run.stages import FileWork, decode_file, encode_batch, ensure_fingerprints
from rtagx.run.tagger import Tagger
from rtagx.settings import Settings

log = logging.getLogger(__name__)

#: What to install when Ray is missing (the optional extra; the default install has no Ray).
INSTALL_HINT = "pip install 'rtagx[ray]' (Ray Data and pyarrow) on this machine and on every node of the cluster"

#: Read failures that mean "this node does not see the file": reported as ``unreadable-on-worker``.
READ_FAILURES = frozenset({"missing", "permission-denied", "read-error", "broken-symlink"})

#: Test hook: a path; the first encoder actor to create this file kills its own process (SIGKILL),
#: so tests can check that Ray restarts it and the job loses nothing. Never set in normal use.
KILL_ONCE_VAR = "RTAGX_RAY_KILL_ONCE"

SHARED_STORAGE_HINT = "every node must see the photos at the same path, or run with --ray-ship-bytes"


@dataclass(frozen=True)
class PoolPlan:
    """How the encode stage is spread: actors, GPUs per actor, images per batch."""

    actors: int
    gpus_per_actor: float
    batch_size: int


def import_ray() -> Any:
    """Ray, or one error line that says what to install."""
    try:
        import ray
        import ray.data  # the Data library: a separate part of the install
    except ImportError as e:
        raise ClusterError(f"--engine ray needs Ray, which is not installed ({e}): {INSTALL_HINT}") from None
    return ray


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to HOST:PORT first: an unreachable cluster is one line in seconds, not Ray's
    minute of retries."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or type(e).__name__}): start it "
            f"(`ray start --head` on its head node, `ray up cluster.yaml`, or KubeRay) or fix --ray-address"
        ) from None


def connect(settings: Settings, events: RunEvents) -> None:
    """Join the cluster ``settings.ray_address`` names (see the README's "More than one machine").

    "" follows Ray's own rule: RAY_ADDRESS, else the cluster this machine runs, else a new Ray on
    this machine alone. "auto": the running cluster, or an error. A process already connected (a
    second run in ``watch`` or in tests) stays on its cluster."""
    ray = import_ray()
    if ray.is_initialized():
        return
    address = settings.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip()
    if address and address not in ("auto", "local"):
        _reachable(address)
    # One line per problem is rtagx's promise: Ray's own log lines (its C++ core's included) stay
    # in Ray's log files; its failures reach rtagx as exceptions and become ClusterError lines.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except ValueError as e:  # ray:// without ray[client], a malformed address
        raise ClusterError(f"--ray-address {address}: {str(e).splitlines()[0]}") from None
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        raise ClusterError(
            f"cannot join a Ray cluster at {address or 'auto'}: {str(e).splitlines()[0]} "
            f"(start one with `ray start --head`, or name it with --ray-address)"
        ) from None
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(Exception):  # the job's own progress is rtagx's to show
        ray.data.DataContext.get_current().enable_progress_bars = False
    if not address:
        events.message(f"engine ray: no --ray-address given; using the Ray at {ray.get_runtime_context().gcs_address}")


def plan_pool(resources: dict[str, float], nodes: int, settings: Settings) -> PoolPlan:
    """Defaults from the cluster's resources: one actor per GPU on a GPU cluster; without GPUs one
    actor per node, at most half the CPUs, so that decode tasks keep CPUs of their own."""
    gpus = float(resources.get("GPU", 0.0))
    cpus = float(resources.get("CPU", 0.0))
    per = settings.ray_gpus_per_actor
    if per is None:
        per = 1.0 if gpus >= 1 else 0.0
    if per > 0 and per > gpus:
        raise ClusterError(f"--ray-gpus-per-actor {per:g}: the cluster has {gpus:g} GPUs")
    actors = settings.ray_actors or (max(1, int(gpus // per)) if per > 0 else max(1, min(nodes, int(cpus // 2))))
    if actors >= cpus:  # each actor holds a CPU: none left for the decode tasks would hang the job
        raise ClusterError(
            f"{actors} encoder actors would hold all {cpus:g} CPUs of the cluster and leave none for "
            f"decoding: lower --ray-actors or add nodes"
        )
    batch = settings.batch_size or (128 if per > 0 else 16)
    return PoolPlan(actors, per, batch)


# -- worker side ------------------------------------------------------------------------------------


def _node() -> str:
    return socket.gethostname()


_decode_pool: list[ThreadPoolExecutor] = []


def _decode_with_timeout(work: FileWork, spec: decode.PreprocessSpec, max_mp: float, timeout: float) -> np.ndarray:
    """decode_file on a worker thread: a decoder that never returns becomes a ``decode-timeout``
    skip and a fresh thread, never a hung task."""
    if not _decode_pool:
        _decode_pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtagx-ray-decode"))
    future = _decode_pool[0].submit(decode_file, work, spec, max_mp)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        _decode_pool.pop().shutdown(wait=False)  # its thread is stuck: leave it, start another
        raise FileSkip("decode-timeout", f"decoding took longer than {timeout:g} s (decode-timeout setting)") from None


def read_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """--ray-ship-bytes: read each file where the driver runs (this task is pinned to its node)."""
    datas, reasons, details = [], [], []
    for raw in batch["path"]:
        path = os.fsdecode(bytes(raw))
        try:
            with open(path, "rb") as f:
                datas.append(f.read())
            reasons.append("")
            details.append("")
        except OSError as e:
            datas.append(b"")
            reasons.append("missing" if isinstance(e, FileNotFoundError) else "read-error")
            details.append(f"cannot read on the driver's node: {e.strerror or e}")
    return batch | {
        "data": np.array(datas, dtype=object),
        "reason": np.array(reasons, dtype=object),
        "detail": np.array(details, dtype=object),
    }


def decode_rows(
    batch: dict[str, np.ndarray], *, spec: decode.PreprocessSpec, max_megapixels: float, timeout: float
) -> dict[str, np.ndarray]:
    """The decode stage on a CPU task: each row's path (or shipped bytes) to the model's input.
    A row that fails keeps zero pixels and its skip reason; nothing raises out of a row."""
    n = len(batch["i"])
    pixels = np.zeros((n, spec.size, spec.size, 3), dtype=np.uint8)
    reasons = list(batch["reason"]) if "reason" in batch else [""] * n
    details = list(batch["detail"]) if "detail" in batch else [""] * n
    started = time.perf_counter()
    for j in range(n):
        if reasons[j]:
            continue
        path = Path(os.fsdecode(bytes(batch["path"][j])))
        temp: str | None = None
        try:
            if "data" in batch:  # shipped bytes: decoded from a private copy with the file's extension
                fd, temp = tempfile.mkstemp(suffix=path.suffix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
                with os.fdopen(fd, "wb") as f:
                    f.write(bytes(batch["data"][j]))
                work = FileWork(ScannedFile(Path(temp), 0, 0, Path(temp).parent))
            else:
                work = FileWork(ScannedFile(path, 0, 0, path.parent))
            pixels[j] = _decode_with_timeout(work, spec, max_megapixels, timeout)
        except FileSkip as e:
            if e.reason in READ_FAILURES and temp is None:
                reasons[j], details[j] = "unreadable-on-worker", f"node {_node()}: {e.detail} ({SHARED_STORAGE_HINT})"
            else:
                reasons[j], details[j] = e.reason, e.detail
        except Exception as e:  # a decoder bug must not stop the job
            reasons[j], details[j] = "decode-failed", f"{type(e).__name__}: {e}"
        finally:
            if temp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
    out = {k: v for k, v in batch.items() if k not in ("data", "reason", "detail")}
    return out | {
        "pixels": pixels,
        "reason": np.array(reasons, dtype=object),
        "detail": np.array(details, dtype=object),
        "decode_s": np.full(n, (time.perf_counter() - started) / max(1, n)),
    }


def load_on_worker(
    model: str, pretrained: str, key: str, settings: dict[str, Any], *, device: str | None = None
) -> tuple[Any, str]:
    """Resolve and load the model on this node exactly as the driver would: the same name and
    weights must give the same identity, or the vectors would not be the driver's. Returns
    (encoder, "") or (None, the one-line reason)."""
    try:
        resolved = resolve_model(model, pretrained, offline=True if settings["offline"] else None)
        if resolved.identity.key != key:
            return None, (
                f"node {_node()} resolves the model to {resolved.identity.key}, the driver to {key}: "
                f"the same weights file must be at the same path on every node"
            )
        encoder = load_encoder(
            resolved,
            device=device or settings["device"],
            precision=settings["precision"] if device is None else "fp32",
            threads=settings["threads"] or None,
            cpu_bf16=settings["cpu_bf16"],
        )
    except RtagxError as e:
        return None, f"node {_node()} cannot load the model: {e}"
    return encoder, ""


def probe_model(model: str, pretrained: str, key: str, settings: dict[str, Any]) -> tuple[Any, str]:
    """Run once on a worker before the job: the model's input spec (for the decode tasks), or why
    the workers cannot load the model (one error line instead of a pool of failing actors)."""
    encoder, fatal = load_on_worker(model, pretrained, key, settings, device="cpu")
    if encoder is None:
        return None, fatal
    return decode.PreprocessSpec.from_model(encoder.model), ""


class EncodeActor:
    """The encode stage: one per actor, the model loaded once; rows that failed to decode pass
    through with their reason."""

    def __init__(
        self, model: str, pretrained: str, key: str, settings: dict[str, Any], spec: Any, kill_once: str = ""
    ) -> None:
        self.spec = spec
        self.kill_once = kill_once
        self.encoder, self.fatal = load_on_worker(model, pretrained, key, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.kill_once:
            try:
                os.close(os.open(self.kill_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                self.kill_once = ""
            else:
                os.kill(os.getpid(), signal.SIGKILL)  # a real process death, for the tests
        n = len(batch["i"])
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        started = time.perf_counter()
        vectors: np.ndarray = np.zeros((n, 1), dtype=np.float32)
        if self.encoder is not None and ok.any():
            encoded = encode_batch(self.encoder, [batch["pixels"][j] for j in np.flatnonzero(ok)], self.spec)
            vectors = np.zeros((n, encoded.shape[1]), dtype=np.float32)
            vectors[ok] = encoded
        return {
            "i": batch["i"],
            "vector": vectors,
            "reason": batch["reason"],
            "detail": batch["detail"],
            "decode_s": batch["decode_s"],
            "encode_s": np.full(n, (time.perf_counter() - started) / max(1, n)),
            "fatal": np.array([self.fatal] * n, dtype=object),
        }


# -- driver side ------------------------------------------------------------------------------------


def worker_settings(settings: Settings) -> dict[str, Any]:
    """The settings a worker needs to load the model as the driver would (plain values)."""
    return {k: getattr(settings, k) for k in ("device", "precision", "threads", "cpu_bf16", "offline")}


def build_dataset(
    ray: Any, works: list[FileWork], identity: ModelIdentity, settings: Settings, plan: PoolPlan, spec: Any
) -> Any:
    """The job as a Ray Data pipeline (lazy; runs as the driver iterates it)."""
    rows = [{"i": i, "path": os.fsencode(w.file.path)} for i, w in enumerate(works)]
    blocks = max(1, min(len(rows), -(-len(rows) // plan.batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    if settings.ray_ship_bytes:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        ds = ds.map_batches(
            read_rows,
            batch_size=plan.batch_size,
            batch_format="numpy",
            num_cpus=0,  # file reads: no CPU of their own, so encoder actors there cannot starve them
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        )
    ds = ds.map_batches(
        decode_rows,
        batch_size=plan.batch_size,
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs={
            "spec": spec,
            "max_megapixels": settings.max_megapixels or decode.DEFAULT_MAX_MEGAPIXELS,
            "timeout": settings.decode_timeout,
        },
    )
    bound = bind_actor(
        settings.model,
        settings.pretrained,
        identity.key,
        worker_settings(settings),
        spec,
        os.environ.get(KILL_ONCE_VAR, ""),
    )
    return ds.map_batches(
        bound,
        batch_size=plan.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=1,
        num_gpus=plan.gpus_per_actor,
        scheduling_strategy="SPREAD",
    )


def bind_actor(*args: Any) -> type:
    """EncodeActor with its arguments inside the class: Ray Data would otherwise keep constructor
    arguments in the object store, which an actor restart after a lost node cannot count on."""

    class BoundEncodeActor(EncodeActor):
        def __init__(self) -> None:
            super().__init__(*args)

    return BoundEncodeActor


def embed_on_ray(
    tagger: Tagger,
    resolved: ResolvedModel,
    works: list[FileWork],
    settings: Settings,
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
) -> None:
    """What ``run/local.embed`` does, on a Ray cluster: same stages, same writer. On Ctrl-C or a
    failed job every batch already received is stored."""
    ray = import_ray()
    with Timer(summary.timings, "ray-start"):
        connect(settings, events)
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
        plan = plan_pool(ray.cluster_resources(), nodes, settings)
        ensure_fingerprints(works)
        probe = ray.remote(num_cpus=1)(probe_model)
        try:
            spec, fatal = ray.get(
                probe.remote(settings.model, settings.pretrained, resolved.identity.key, worker_settings(settings))
            )
        except ray.exceptions.RayError as e:
            raise ClusterError(f"the Ray cluster cannot run rtagx: {str(e).splitlines()[0]}") from None
        if fatal:
            raise ClusterError(fatal)
    events.stage("embed", len(works))
    writer = BatchWriter(tagger, summary, events)
    done: set[int] = set()
    try:
        with warnings.catch_warnings():  # Ray 2.51+ calls scheduling_strategy a deprecated remote arg
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = build_dataset(ray, works, resolved.identity, settings, plan, spec)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                take(batch, works, done, writer, summary)
        except ray.exceptions.RayError as e:
            raise ClusterError(
                f"the Ray job failed ({str(e).splitlines()[0][:300]}); the {len(done)} images received "
                f"are stored: run again to embed the rest"
            ) from None
        missing = [w for i, w in enumerate(works) if i not in done]
        if missing:  # cannot happen with Ray's retries; never lose a file silently
            raise ClusterError(f"the Ray job returned {len(done)} of {len(works)} images: run again to embed the rest")
    except BaseException:
        with contextlib.suppress(BaseException):  # the first error is the one to report
            writer.close()
        raise
    writer.close()


def take(
    batch: dict[str, np.ndarray], works: list[FileWork], done: set[int], writer: BatchWriter, summary: RunSummary
) -> None:
    """One batch back from the cluster: skips reported, vectors stored and written (each row once,
    even if Ray ran its task twice)."""
    fatal = next((f for f in batch["fatal"] if f), "")
    if fatal:
        raise ClusterError(str(fatal))
    if len(batch["i"]):
        add_time(summary.timings, "decode", float(np.sum(batch["decode_s"])))
        add_time(summary.timings, "encode", float(np.sum(batch["encode_s"])))
    good: list[int] = []
    for j, i in enumerate(batch["i"]):
        i = int(i)
        if i in done:
            continue
        done.add(i)
        reason = str(batch["reason"][j])
        if reason:
            w = works[i]
            writer.put(("skip", w.file.path, reason, str(batch["detail"][j]), w.file))
        else:
            good.append(j)
    if good:
        # row by row: a batch whose rows all failed carries no vector width, so Ray may hand back
        # a column of ragged rows
        vectors = np.stack([np.asarray(batch["vector"][j], dtype=np.float32) for j in good])
        writer.put(("batch", [works[int(batch["i"][j])] for j in good], vectors))
