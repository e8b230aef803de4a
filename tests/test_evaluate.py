"""explain / eval / calibrate library functions, on planted scores whose answers are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtagx.analysis.evaluate import (
    best_f1_threshold,
    calibrate,
    evaluate,
    explain,
    explain_scores,
    load_labels_csv,
    load_labels_folders,
    match_labels,
)
from rtagx.errors import UsageError
from rtagx.tags.scoring import ScoringOptions, score_images
from rtagx.tags.vocab import parse_vocabulary

VOCAB = parse_vocabulary(
    "!exclusive scene\n!never nsfw\ndog @threshold=0.5\ncat\nscene|beach\nscene|forest\nnsfw\nbird\n"
)


def test_explain_reports_each_rule() -> None:
    scores = np.array([0.45, 0.30, 0.28, 0.33, 0.9, 0.1])
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=0.25), top=10)
    by = {v.keyword: v for v in e.verdicts}
    assert e.chosen == ["forest", "cat"]
    assert [v.keyword for v in e.verdicts] == ["nsfw", "dog", "forest", "cat", "beach", "bird"]
    assert [v.rank for v in e.verdicts] == [1, 2, 3, 4, 5, 6]
    assert by["dog"].threshold == 0.5 and by["dog"].threshold_source == "tag" and not by["dog"].passed_threshold
    assert by["dog"].reason == "below threshold 0.5000 (tag)"
    assert by["cat"].chosen and by["cat"].threshold_source == "option" and by["cat"].reason.startswith("chosen")
    assert by["beach"].group_winner == "forest" and "lost to 'forest'" in by["beach"].reason
    assert by["nsfw"].never and not by["nsfw"].chosen
    assert by["bird"].reason.startswith("below threshold 0.2500")
    assert e.global_threshold == 0.25 and e.threshold_source == "option" and e.best_score == pytest.approx(0.9)


def test_explain_top_limit_keeps_chosen_tags_and_other_reasons() -> None:
    scores = np.array([0.45, 0.30, 0.28, 0.33, 0.9, 0.1])
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=0.25, top_k=1), top=1)
    assert [v.keyword for v in e.verdicts] == ["nsfw", "forest"]
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=0.25, top_k=1), top=6)
    assert {v.keyword: v.reason for v in e.verdicts}["cat"] == "passed, but cut by top_k=1"
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=0.25, margin=0.05), top=6)
    cat = {v.keyword: v for v in e.verdicts}["cat"]  # the best tag (0.9) is never-listed: it still counts
    assert cat.passed_margin is False and cat.reason == "more than margin 0.05 below the image's best tag"
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=0.95, min_tags=1), top=6)
    assert {v.keyword: v.reason for v in e.verdicts}["dog"] == "added to reach min_tags=1"
    e = explain_scores(scores, VOCAB, ScoringOptions(threshold=-1), top=6)
    assert e.threshold_source == "select all" and "forest" in e.chosen and "dog" in e.chosen


def test_explain_from_vectors_and_sigmoid() -> None:
    matrix = np.eye(6, dtype=np.float32)
    image = np.array([0.0, 0.8, 0.0, 0.6, 0.0, 0.0], dtype=np.float32)
    e = explain(image, matrix, VOCAB, ScoringOptions(threshold=0.5))
    assert e.chosen == ["cat", "forest"] and not e.probabilities
    e = explain(image, matrix, VOCAB, ScoringOptions(), logit_scale=10.0, logit_bias=-5.0, model_name="x")
    assert e.probabilities and e.threshold_source == "model default" and e.global_threshold == 0.05
    assert e.verdicts[0].score == pytest.approx(1 / (1 + np.exp(-(8 - 5))), rel=1e-5)


def test_labels_csv(tmp_path: Path) -> None:
    f = tmp_path / "labels.csv"
    f.write_text('path,labels\na.jpg,dog;Cat\n"b, c.jpg",beach\nsub/d.jpg,dog,bird\n\n# note\na.jpg,bird\n')
    labels = load_labels_csv(f)
    assert labels == {
        tmp_path / "a.jpg": ["dog", "Cat", "bird"],
        tmp_path / "b, c.jpg": ["beach"],
        tmp_path / "sub/d.jpg": ["dog", "bird"],
    }
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,dog\nb.jpg\n")
    with pytest.raises(UsageError, match=r"bad\.csv:2: expected"):
        load_labels_csv(bad)
    with pytest.raises(UsageError):
        load_labels_csv(tmp_path / "missing.csv")


def test_labels_csv_header_after_comment_lines_is_a_header(tmp_path: Path) -> None:
    # comment lines are allowed anywhere; the optional header is the first row that is not one
    f = tmp_path / "labels.csv"
    f.write_text("# labelled by hand\n\nfilename,labels\na.jpg,dog\n")
    assert load_labels_csv(f) == {tmp_path / "a.jpg": ["dog"]}


def test_labels_csv_merges_one_photo_named_two_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a photo written relative to a CSV given by a relative path, absolute, or through '..' is one
    # photo: its labels merge (eval keyed them by absolute path and kept only the last row's)
    (tmp_path / "sub").mkdir()
    f = tmp_path / "labels.csv"
    f.write_text(f"a.jpg,dog\n{tmp_path / 'a.jpg'},cat\nsub/../b.jpg,car\nb.jpg,food\n")
    monkeypatch.chdir(tmp_path)
    assert load_labels_csv(Path("labels.csv")) == {
        tmp_path / "a.jpg": ["dog", "cat"],
        tmp_path / "b.jpg": ["car", "food"],
    }


def test_labels_folders(tmp_path: Path) -> None:
    for rel in (
        "golden_retriever/1.jpg",
        "golden_retriever/deep/2.JPEG",
        "cat/3.png",
        "cat/notes.txt",
        ".hidden/4.jpg",
        "cat/.5.jpg",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    labels = load_labels_folders(tmp_path)
    assert labels == {
        tmp_path / "cat/3.png": ["cat"],
        tmp_path / "golden_retriever/1.jpg": ["golden_retriever"],
        tmp_path / "golden_retriever/deep/2.JPEG": ["golden_retriever"],
    }
    vocab = parse_vocabulary("animal|golden retriever\nkitty = Cat\n")
    truth, unknown = match_labels({**labels, Path("x.jpg"): ["zebra", "kitty"]}, vocab)
    assert truth[tmp_path / "cat/3.png"] == [1] and truth[tmp_path / "golden_retriever/1.jpg"] == [0]
    assert truth[Path("x.jpg")] == [1] and unknown == {"zebra": 1}
    with pytest.raises(UsageError):
        load_labels_folders(tmp_path / "cat/3.png")


def test_eval_single_label_top1_top5() -> None:
    vocab = parse_vocabulary("\n".join(f"t{i}" for i in range(7)))
    scores = np.full((4, 7), 0.1)
    scores[0, 0] = 0.9  # right at top-1
    scores[1, [1, 2]] = [0.5, 0.6]  # label 1 is second: top-5 only
    scores[2, :6] = [0.6, 0.59, 0.58, 0.57, 0.56, 0.2]
    scores[2, 6] = 0.15  # label 6 is 6th: missed
    scores[3, 3] = 0.8
    r = evaluate(scores, [[0], [1], [6], [3]], vocab, ScoringOptions(threshold=0.7))
    assert r.single_label and r.top1 == 0.5 and r.top5 == 0.75
    assert r.precision == 1.0 and r.recall == 0.5 and r.f1 == pytest.approx(2 / 3)
    stats = {s.keyword: s for s in r.per_tag}
    assert stats["t0"].tp == 1 and stats["t6"].support == 1 and stats["t6"].recall == 0.0
    assert r.macro_f1 == pytest.approx((1 + 0 + 0 + 1) / 4)


def test_eval_multi_label_precision_recall_f1() -> None:
    vocab = parse_vocabulary("a\nb\nc\n")
    scores = np.array([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.1, 0.1, 0.1]])
    truth = [[0, 1], [0], [2]]
    r = evaluate(scores, truth, vocab, ScoringOptions(threshold=0.5), unknown_labels={"z": 2})
    assert not r.single_label and r.top1 is None
    # predicted: {a,b}, {a,c}, {} -> tp 3 (a,b,a), fp 1 (c), fn 1 (c on image 3)
    assert (r.precision, r.recall) == (0.75, 0.75) and r.f1 == pytest.approx(0.75)
    stats = {s.keyword: s for s in r.per_tag}
    assert (stats["c"].tp, stats["c"].predicted, stats["c"].support) == (0, 1, 1)
    assert r.unknown_labels == {"z": 2}
    with pytest.raises(UsageError):
        evaluate(scores[:2], truth, vocab, ScoringOptions())


def test_best_f1_threshold() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    thr, f1 = best_f1_threshold(s, np.array([1, 1, 0, 1, 0], dtype=bool))
    # keep top 2 -> F1 0.8; keep top 4 -> F1 6/7 (best)
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.55)
    thr, f1 = best_f1_threshold(np.array([0.3, 0.3, 0.2]), np.array([1, 0, 0], dtype=bool))
    assert thr == pytest.approx(0.25) and f1 == pytest.approx(2 / 3)  # ties cannot be split
    assert np.isnan(best_f1_threshold(s, np.zeros(5, dtype=bool))[0])


def test_calibrate_writes_vocabulary_with_per_tag_thresholds() -> None:
    vocab = parse_vocabulary("!templates photo\nanimal|dog = puppy\ncat\nrare\n")
    rng = np.random.default_rng(1)
    n = 60
    truth = [[0] if i % 3 == 0 else ([1] if i % 3 == 1 else []) for i in range(n)]
    scores = rng.uniform(0.0, 0.2, size=(n, 3))
    for i, t in enumerate(truth):
        for j in t:
            scores[i, j] += 0.25 if j == 0 else 0.05  # dog separates cleanly, cat partly
    cal = calibrate(scores, truth, vocab, min_support=3, model_name="ViT-B-16")
    assert [c.keyword for c in cal.tags] == ["dog", "cat"] and cal.skipped == ["rare"]
    by = {c.keyword: c for c in cal.tags}
    assert by["dog"].f1 == 1.0 and by["dog"].support == 20
    assert by["cat"].f1 >= by["cat"].previous_f1
    text = cal.to_text()
    assert text.startswith("# rtagx vocabulary calibrated") and "model: ViT-B-16" in text
    again = parse_vocabulary(text)
    assert again.tags[0].threshold == by["dog"].threshold and again.tags[2].threshold is None
    assert again.templates == vocab.templates and again.tags[0].path == ("animal", "dog")
    # the calibrated thresholds reproduce the fitted F1 through the normal scoring path
    report = evaluate(scores, truth, again, ScoringOptions())
    assert {s.keyword: s.f1 for s in report.per_tag}["dog"] == 1.0


def test_score_images_then_evaluate_end_to_end() -> None:
    vocab = parse_vocabulary("x\ny\n")
    matrix = np.eye(2, dtype=np.float32)
    images = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    r = evaluate(score_images(images, matrix), [[0], [1], [0, 1]], vocab, ScoringOptions(threshold=0.5))
    assert r.f1 == 1.0


def test_calibrated_thresholds_sit_midway_between_neighbouring_scores() -> None:
    """Never a hair from a sample score (decode noise of 1e-3 must not flip a decision): midway
    between the lowest kept and the highest dropped score, shortened only within that gap's middle."""
    vocab = parse_vocabulary("dog\n")
    scores = np.array([[0.30], [0.29], [0.104910], [0.104880], [0.05], [0.04]])
    truth = [[0], [0], [0], [], [], []]
    cal = calibrate(scores, truth, vocab, min_support=1)
    thr = cal.tags[0].threshold
    lower, upper = 0.104880, 0.104910
    assert lower + (upper - lower) / 4 <= thr <= upper - (upper - lower) / 4, thr
    scores = np.array([[0.30], [0.29], [0.2], [0.1]])
    thr = calibrate(scores, [[0], [0], [], []], vocab, min_support=1).tags[0].threshold
    assert thr == 0.245  # the midpoint of 0.29 and 0.2, as short as it gets
    assert not calibrate(scores, [[0], [0], [], []], vocab, min_support=1).tags[0].tags_every_image


def test_calibrate_says_when_the_best_threshold_keeps_every_image() -> None:
    vocab = parse_vocabulary("dog\n")
    scores = np.array([[0.30], [0.29], [0.28], [0.27]])
    cal = calibrate(scores, [[0], [0], [], [0]], vocab, min_support=1)  # keeping all 4: F1 6/7
    assert cal.tags[0].tags_every_image and cal.tags[0].threshold < 0.27
