"""The score and write stages of a run: :class:`Tagger` holds what a run shares (cache, vocabulary,
tag matrix, options), turns a batch of vectors into chosen tags and writes each file's keywords.

Also here: the settings hash that lets a later run settle a file without reading it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import FileRow, Store, WrittenRecord, path_key
from rtagx.errors import FileSkip, VocabularyError
from rtagx.keywords import metadata
from rtagx.model.encoder import Encoder, looks_like_path
from rtagx.run.events import FileOutcome, RunEvents, RunSummary, Timer
from rtagx.run.stages import FileWork
from rtagx.settings import Settings
from rtagx.tags import labels as labels_mod
from rtagx.tags import scoring
from rtagx.tags import vocab as vocab_mod
from rtagx.tags.reviews import apply_decisions


def scoring_options(settings: Settings) -> scoring.ScoringOptions:
    return scoring.ScoringOptions(
        threshold=settings.threshold,
        top_k=settings.top_k or None,
        min_tags=settings.min_tags,
        margin=settings.margin,
        min_share=settings.min_share,
        temperature=settings.temperature,
    )


def tagger_scoring_options(settings: Settings) -> scoring.ScoringOptions:
    """Scoring options for a trained tagger: no top-k cap unless one is asked for (the models'
    reference code lists every tag above its threshold; CLIP's default cap of 10 does not apply)."""
    options = scoring_options(settings)
    origin = settings.sources.get("top_k", "default")
    if origin in ("default", "last run") and settings.top_k == Settings.top_k:
        options.top_k = None
    return options


def settings_hash(
    model_key: str,
    vocabulary: vocab_mod.Vocabulary,
    settings: Settings,
    options: scoring.ScoringOptions | None = None,
) -> str:
    """Everything that decides which keywords a file gets, and where they are written."""
    parts = {
        "model": model_key,
        "vocab": vocabulary.fingerprint(),
        "scoring": asdict(options or scoring_options(settings)),
    }
    return f"{_digest(parts, 12)}.{write_settings_hash(settings)}"


def write_settings_hash(settings: Settings) -> str:
    """The options that decide how and where chosen keywords are written (the part after the dot of
    :func:`settings_hash`): a retag whose new scoring picks the same keywords need not touch the file."""
    return _digest(
        [
            settings.write,
            settings.mode,
            settings.sidecar_style,
            settings.caption_ext,
            settings.keyword_root,
            settings.with_ancestors,
        ],
        6,
    )


def _digest(value: Any, size: int) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode(), digest_size=size).hexdigest()


def identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells a file changed without reading it: size, mtime, ctime, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def root_settings(settings: Settings, identity_key: str) -> dict[str, Any]:
    """What a root remembers for ``retag``: the scoring and writing options, and the model."""
    keep = (
        "model",
        "pretrained",
        "tags",
        "templates",
        "threshold",
        "top_k",
        "min_tags",
        "margin",
        "min_share",
        "temperature",
        "write",
        "mode",
        "sidecar_style",
        "caption_ext",
        "keyword_root",
        "with_ancestors",
        "preserve_mtime",
        "ratings",
    )
    out = {k: getattr(settings, k) for k in keep}
    for k in ("model", "pretrained", "tags"):  # files named relative to where `tag` ran
        out[k] = absolute_if_file(out[k], vocabulary=k == "tags")
    out["model_key"] = identity_key
    return out


def absolute_if_file(value: Any, *, vocabulary: bool = False) -> Any:
    """A relative path that names a file as ``tag`` took it, made absolute: ``retag``, ``export`` and
    a cron job run from other folders, where ``tags.txt`` names nothing. A vocabulary is a file when
    one exists (else a shipped name); a model or checkpoint when it is written as a path (a name
    like ``ViT-B-16`` or a tag like ``openai`` stays a name even beside a file of that name)."""
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return value
    if os.path.isfile(value) if vocabulary else looks_like_path(value) and os.path.exists(value):
        return os.path.abspath(value)
    return value


class Tagger:
    """Shared state of a run: cache, model, vocabulary, tag matrix, options; scores and writes."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        vocabulary: vocab_mod.Vocabulary,
        model_id: int,
        model_key: str,
        events: RunEvents,
        summary: RunSummary,
        dry_run: bool,
    ) -> None:
        self.store = store
        self.settings = settings
        self.vocab = vocabulary
        self.model_id = model_id
        self.model_key = model_key
        self.events = events
        self.summary = summary
        self.dry_run = dry_run
        self.options = scoring_options(settings)
        self.hash = settings_hash(model_key, vocabulary, settings)
        self.tag_matrix: np.ndarray | None = None
        self.model_name = store.model_info(model_id).get("name") or ""
        self.logit_scale: float | None = None
        self.logit_bias: float | None = None
        self.last_scores: np.ndarray | None = None  # the last batch's tag scores (for review decisions)
        self.reviewed = store.reviewed_contents()  # contents with review decisions: never settled unread
        self.label_index: np.ndarray | None = None  # trained taggers: vocabulary tag -> output index
        self.n_outputs = 0
        # Several models in one run: a tagger of a further model collects each file's chosen
        # keywords (``collect``) instead of writing; the first model's tagger adds them (``extra``)
        # to its own and writes the union once, recorded as rtagx's.
        self.collect: dict[bytes, tuple[list[str], list[str], list[tuple[str, float]]]] | None = None
        self.extra: list[Tagger] = []
        self.several_models = False  # one of several models: --tags applies to CLIP models only

    def combined_hash(self) -> str:
        """This model's settings hash, with the further models' folded into its scoring part."""
        if not self.extra:
            return self.hash
        scoring_part, _, write_part = self.hash.rpartition(".")
        return f"{_digest([scoring_part] + [t.hash for t in self.extra], 12)}.{write_part}"

    def merged(self, key: bytes, flat: list[str], hier: list[str], tags: list[tuple[str, float]]) -> None:
        """Add the further models' keywords for ``key`` to this model's (first model's first;
        keywords that differ only in case once)."""
        seen = {k.casefold() for k in flat}
        seen_h = {k.casefold() for k in hier}
        for other in self.extra:
            more = (other.collect or {}).get(key)
            if more is None:
                continue
            for k in more[0]:
                if k.casefold() not in seen:
                    seen.add(k.casefold())
                    flat.append(k)
            for k in more[1]:
                if k.casefold() not in seen_h:
                    seen_h.add(k.casefold())
                    hier.append(k)
            tags.extend(more[2])

    def vector_dim(self) -> int:
        """The length of this model's cached vectors (0 when not known yet)."""
        if self.label_index is not None:
            return self.n_outputs
        return self.tag_matrix.shape[1] if self.tag_matrix is not None and self.tag_matrix.size else 0

    def prepare_text(self, get_encoder: Callable[[], Encoder]) -> None:
        """Tag matrix from cached prompt vectors; encode only prompts the cache lacks. A trained
        tagger has no prompts: its vocabulary maps the model's tags (:mod:`rtagx.tags.labels`)."""
        info = self.store.model_info(self.model_id)
        if info.get("kind", "clip") != "clip":
            self.vocab, self.label_index = tagger_vocabulary_for(
                info, self.vocab, self.settings, several_models=self.several_models
            )
            self.n_outputs = len(info.get("labels") or ())
            self.options = tagger_scoring_options(self.settings)
            self.hash = settings_hash(self.model_key, self.vocab, self.settings, self.options)
            return
        if self.vocab.model_tags and not self.vocab.tags:
            raise VocabularyError(
                f"{self.vocab.source}: '!tagger all' names a trained tagger's tags, and {self.model_name or 'this model'} "
                f"is a CLIP model: list the tags"
            )
        prompts = self.vocab.all_prompts()
        with Timer(self.summary.timings, "text"):
            cached = self.store.text_vectors(self.model_id, prompts)
            missing = [p for p in prompts if p not in cached]
            if missing:
                encoder = get_encoder()
                self.events.stage("prompts", len(missing))
                step = 256
                for start in range(0, len(missing), step):
                    chunk = missing[start : start + step]
                    self.store.put_text_vectors(self.model_id, chunk, encoder.encode_texts(chunk))
                    # score with what the cache keeps (float16), as retag, explain and later runs do
                    cached.update(self.store.text_vectors(self.model_id, chunk))
                    self.events.progress("prompts", len(chunk))
            self.tag_matrix = scoring.build_tag_matrix(self.vocab, cached)
        info = self.store.model_info(self.model_id)
        self.logit_scale, self.logit_bias = info.get("logit_scale"), info.get("logit_bias")

    def _choose(self, vectors: np.ndarray) -> list[list[scoring.ChosenTag]]:
        if self.label_index is not None:
            probabilities = np.asarray(vectors, dtype=np.float16).astype(np.float32)  # as the cache keeps them
            with Timer(self.summary.timings, "score"):
                scores = labels_mod.tagger_scores(probabilities, self.label_index)
                self.last_scores = scores
                return scoring.choose_tags(scores, self.vocab, self.options, probabilities=True)
        assert self.tag_matrix is not None
        # Score exactly what the cache keeps (float16): a fresh vector and the same vector read back
        # by `retag` or a sibling then give identical scores, so no tag flips at the threshold.
        vectors = np.asarray(vectors, dtype=np.float16).astype(np.float32)
        with Timer(self.summary.timings, "score"):
            scores = scoring.score_images(
                vectors, self.tag_matrix, logit_scale=self.logit_scale, logit_bias=self.logit_bias
            )
            self.last_scores = scores
            return scoring.choose_tags(
                scores,
                self.vocab,
                self.options,
                model_name=self.model_name,
                probabilities=self.logit_bias is not None or None,
            )

    def choose(self, vectors: np.ndarray, content_ids: Sequence[int | None]) -> list[list[scoring.ChosenTag]]:
        """The tags this model chooses for a batch of vectors (one per content), after a person's
        review decisions: what a run writes, and what ``rtagx export`` lists beside each vector."""
        chosen_all = self._choose(vectors)
        # a person's review decisions (by content): rejected tags never written, accepted ones kept
        reviews = self.store.reviews_for(c for c in content_ids if c is not None)
        if reviews and self.last_scores is not None:
            chosen_all = [
                apply_decisions(chosen, self.last_scores[n], self.vocab, reviews.get(cid or -1, {}))
                for n, (cid, chosen) in enumerate(zip(content_ids, chosen_all))
            ]
        return chosen_all

    def handle(self, works: Sequence[FileWork], vectors: np.ndarray, embedded: bool) -> None:
        """Score a batch of files whose vectors are known, write their keywords, report each."""
        chosen_all = self.choose(vectors, [w.content_id for w in works])
        keys = [path_key(w.file.path) for w in works]
        if self.collect is not None:
            for key, chosen in zip(keys, chosen_all):
                flat, hier = scoring.keywords_for(chosen, self.vocab, with_ancestors=self.settings.with_ancestors)
                self.collect[key] = (flat, hier, [(c.tag.keyword, c.score) for c in chosen])
            return
        previous = self.store.written(keys)
        records: list[WrittenRecord] = []
        aliases: list[FileRow] = []
        alias_ids: list[int] = []
        with Timer(self.summary.timings, "write"):
            for work, key, chosen in zip(works, keys, chosen_all):
                outcome = self._write_one(work, key, chosen, previous.get(key), embedded, records, aliases, alias_ids)
                self.summary.add(outcome)
                self.events.file(outcome)
                self.events.progress("write", 1)
        if records:
            self.store.put_written(records)
        if aliases:
            self.store.put_files(aliases, alias_ids, alias=False)

    def _write_one(
        self,
        work: FileWork,
        key: bytes,
        chosen: list[scoring.ChosenTag],
        prev: WrittenRecord | None,
        embedded: bool,
        records: list[WrittenRecord],
        aliases: list[FileRow],
        alias_ids: list[int],
    ) -> FileOutcome:
        s = self.settings
        flat, hier = scoring.keywords_for(chosen, self.vocab, with_ancestors=s.with_ancestors)
        tags = [(c.tag.keyword, c.score) for c in chosen]
        if self.extra:
            self.merged(key, flat, hier, tags)
        settings_hash_ = self.combined_hash()
        path = work.file.path
        base = FileOutcome(path, "unchanged", tags, embedded=embedded, reused=work.reused)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return FileOutcome(path, "skipped", tags, reason="missing", detail="file vanished during the run")
        except OSError as e:
            return FileOutcome(path, "skipped", tags, reason="permission-denied", detail=e.strerror or str(e))
        if (
            prev is not None
            and prev.keywords == flat
            and prev.hierarchical == hier
            and prev.size == st.st_size
            and prev.mtime_ns == st.st_mtime_ns
            and prev.settings_hash.rpartition(".")[2] == settings_hash_.rpartition(".")[2]
        ):
            # The file is as rtagx left it and would get the same keywords the same way: no need to
            # read it (a retag with a new threshold over 100k files mostly lands here).
            base.target = prev.target
            if prev.settings_hash != settings_hash_ and not self.dry_run:
                records.append(prev._replace(settings_hash=settings_hash_, model_id=self.model_id, tags=tags))
            return base
        if s.write == "none":
            base.target = "none"
            return base
        try:
            result = metadata.write_keywords(
                path,
                flat,
                hierarchical=hier,
                mode=s.mode,
                target=s.write,
                sidecar_style=s.sidecar_style,
                caption_ext=s.caption_ext,
                keyword_root=s.keyword_root or None,
                preserve_mtime=s.preserve_mtime,
                dry_run=self.dry_run,
            )
        except FileSkip as e:
            return FileOutcome(
                path, "skipped", tags, embedded=embedded, reused=work.reused, reason=e.reason, detail=e.detail
            )
        base.target = result.target
        base.written_to = result.written_to
        base.added, base.removed = list(result.added), list(result.removed)
        base.warnings = list(result.warnings)
        if self.dry_run:
            base.action = "would-write" if result.changed else "unchanged"
            return base
        base.action = "written" if result.changed else "unchanged"
        try:
            st2 = os.stat(path)
        except OSError:
            return base
        if identity(st2) != identity(st) and work.content_id is not None and work.fingerprint:
            # Our own write changed the file's metadata, not its image data (so not its fingerprint):
            # record the new identity, so the next run does not read the file again.
            aliases.append(FileRow(path, st2.st_size, st2.st_mtime_ns, work.fingerprint, st2.st_ctime_ns, st2.st_ino))
            alias_ids.append(work.content_id)
        records.append(
            WrittenRecord(
                key,
                self.model_id,
                settings_hash_,
                flat,
                hier,
                result.target,
                path_key(result.written_to) if result.written_to else None,
                st2.st_size,
                st2.st_mtime_ns,
                tags,
            )
        )
        return base


def user_vocabulary(settings: Settings, vocabulary: vocab_mod.Vocabulary) -> vocab_mod.Vocabulary | None:
    """The vocabulary the user chose, or None when ``--tags`` was left at its default."""
    origin = settings.sources.get("tags", "default")
    if origin in ("default", "last run") and settings.tags == vocab_mod.DEFAULT_VOCABULARY:
        return None
    return vocabulary


def tagger_vocabulary_for(
    info: dict[str, Any], vocabulary: vocab_mod.Vocabulary, settings: Settings, *, several_models: bool = False
) -> tuple[vocab_mod.Vocabulary, np.ndarray]:
    """A trained tagger's vocabulary (from the model info the cache keeps) and its output indices.
    With ``several_models``, a vocabulary is for the CLIP models of the run unless it says
    ``!tagger all`` or every tag it lists is one of the tagger's: else the tagger keeps its own tags."""
    user = user_vocabulary(settings, vocabulary)
    if several_models and user is not None and not user.model_tags:

        def norm(text: str) -> str:
            return " ".join(text.replace("_", " ").split()).casefold()

        names = {norm(n) for n in info.get("labels") or ()}
        if not all(any(norm(n) in names for n in (t.keyword, *t.names)) for t in user.tags):
            user = None
    return labels_mod.tagger_vocabulary(
        info.get("labels") or (),
        info.get("categories") or (),
        user,
        kind=str(info.get("kind")),
        ratings=settings.ratings,
    )


def settle_unchanged(tagger: Tagger, works: list[FileWork]) -> list[FileWork]:
    if tagger.dry_run and not works:
        return works
    rest: list[FileWork] = []
    if tagger.collect is not None:
        return works  # a further model's tagger collects every file's keywords
    summary, events, settings_hash_ = tagger.summary, tagger.events, tagger.combined_hash()
    for start in range(0, len(works), 4096):  # chunks: memory stays flat on a 100k-file no-op run
        part = works[start : start + 4096]
        keys = [path_key(w.file.path) for w in part]
        written = tagger.store.written(k for k, w in zip(keys, part) if not w.reused)
        for w, key in zip(part, keys):
            rec = written.get(key)
            if (
                rec is not None
                and (w.content_id is None or w.content_id not in tagger.reviewed)
                and rec.settings_hash == settings_hash_
                and rec.size == w.file.size
                and rec.mtime_ns == w.file.mtime_ns
            ):
                written_to = None
                if rec.written_to:
                    written_to = w.file.path if rec.written_to == key else Path(os.fsdecode(rec.written_to))
                outcome = FileOutcome(
                    w.file.path, "unchanged", list(rec.tags), target=rec.target, written_to=written_to
                )
                summary.add(outcome)
                events.file(outcome)
                events.progress("write", 1)
            else:
                rest.append(w)
    return rest


def handle_cached(tagger: Tagger, works: list[FileWork], dim: int, chunk: int = 2048) -> None:
    for start in range(0, len(works), chunk):
        part = works[start : start + chunk]
        with Timer(tagger.summary.timings, "load-vectors"):
            vectors = tagger.store.vectors(tagger.model_id, [w.content_id for w in part], dim)  # type: ignore[misc]
        tagger.handle(part, vectors, embedded=False)
