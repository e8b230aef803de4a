"""Scoring: tag matrix (prompt ensembles), cosine and sigmoid scores, thresholds, relative cuts,
exclusive groups, never-list, top_k/min_tags, keywords. Planted vectors make every score exact."""

from __future__ import annotations

import numpy as np
import pytest

from rtagx.errors import RtagxError
from rtagx.tags import prompts, scoring
from rtagx.tags.scoring import ChosenTag, ScoringOptions, build_tag_matrix, choose_tags, keywords_for, score_images
from rtagx.tags.vocab import parse_vocabulary, with_templates


def chosen_keywords(scores, vocab, **options) -> list[list[str]]:
    model_name = options.pop("model_name", "")
    rows = choose_tags(np.asarray(scores, dtype=np.float32), vocab, ScoringOptions(**options), model_name=model_name)
    return [[c.tag.keyword for c in row] for row in rows]


V4 = parse_vocabulary("a\nb\nc\nd\n")


def test_threshold_top_k_min_tags() -> None:
    s = [[0.40, 0.10, 0.30, 0.20]]
    assert chosen_keywords(s, V4, threshold=0.25) == [["a", "c"]]
    assert chosen_keywords(s, V4, threshold=0.25, top_k=1) == [["a"]]
    assert chosen_keywords(s, V4, threshold=0.5) == [[]]
    assert chosen_keywords(s, V4, threshold=0.5, min_tags=2) == [["a", "c"]]
    assert chosen_keywords(s, V4, threshold=0.35, min_tags=3, top_k=2) == [["a", "c"]]
    scores = choose_tags(np.array(s), V4, ScoringOptions(threshold=0.25))[0]
    assert [c.score for c in scores] == pytest.approx([0.40, 0.30])


def test_threshold_minus_one_selects_every_tag_then_top_k_caps() -> None:
    v = parse_vocabulary("a @threshold=0.9\nb\nc\nd\n")
    s = [[-0.99, -0.5, 0.0, -1.0], [0.1, 0.2, 0.3, 0.4]]
    assert chosen_keywords(s, v, threshold=-1) == [["c", "b", "a", "d"], ["d", "c", "b", "a"]]
    assert chosen_keywords(s, v, threshold=-1, top_k=2) == [["c", "b"], ["d", "c"]]


def test_threshold_priority_tag_over_option_over_file_over_model_default() -> None:
    v = parse_vocabulary("!threshold 0.35\na @threshold=0.1\nb\nc\n")
    s = [[0.15, 0.3, 0.4]]
    assert chosen_keywords(s, v) == [["c", "a"]]  # file default 0.35; a has its own 0.1
    assert chosen_keywords(s, v, threshold=0.2) == [["c", "b", "a"]]  # option beats the file default
    plain = parse_vocabulary("a\nb\nc\n")
    assert chosen_keywords(s, plain) == [["c", "b"]]  # model default 0.25 for CLIP models
    assert scoring.default_threshold("ViT-B-16") == 0.25
    assert scoring.default_threshold("ViT-B-16-SigLIP") == 0.05
    assert scoring.default_threshold("anything", probabilities=True) == 0.05


def test_margin_follows_the_image_not_the_cosine_level() -> None:
    # Same ranking, different level (a drawing vs a photo): a margin keeps the same tags for both.
    s = [[0.30, 0.28, 0.20, 0.10], [0.20, 0.18, 0.10, 0.00]]
    assert chosen_keywords(s, V4, threshold=-1, margin=0.05) == [["a", "b"], ["a", "b"]]
    assert chosen_keywords(s, V4, threshold=0.25) == [["a", "b"], []]


def test_softmax_share_with_temperature() -> None:
    s = np.array([[0.30, 0.29, 0.10, 0.10]])
    shares = scoring.softmax_shares(s, temperature=0.01)
    z = np.exp(s[0] / 0.01)
    assert shares[0] == pytest.approx(z / z.sum())
    assert chosen_keywords(s, V4, threshold=-1, min_share=0.25) == [["a", "b"]]  # shares 0.73, 0.27
    assert chosen_keywords(s, V4, threshold=-1, min_share=0.25, temperature=0.001) == [["a"]]
    with pytest.raises(RtagxError):
        scoring.softmax_shares(s, temperature=0)


def test_softmax_share_for_probabilities_uses_the_model_logits() -> None:
    logits = np.array([[2.0, 1.0, -3.0, -3.0]])
    probs = 1 / (1 + np.exp(-logits))
    shares = scoring.softmax_shares(probs, probabilities=True)
    z = np.exp(logits[0] - logits[0].max())
    assert shares[0] == pytest.approx(z / z.sum(), rel=1e-6)


def test_exclusive_group_keeps_only_the_best_which_must_pass() -> None:
    v = parse_vocabulary("!exclusive scene\nscene|beach\nscene|forest\nscene|city\ndog\n")
    assert chosen_keywords([[0.30, 0.35, 0.26, 0.5]], v, threshold=0.25) == [["dog", "forest"]]
    # the best of the group is below its threshold: nothing from the group, even if another passes
    v2 = parse_vocabulary("!exclusive scene\nscene|beach @threshold=0.4\nscene|forest\ndog\n")
    assert chosen_keywords([[0.35, 0.30, 0.5]], v2, threshold=0.25) == [["dog"]]
    # min_tags never tops up with a group loser
    assert chosen_keywords([[0.30, 0.35, 0.26, 0.1]], v, threshold=0.9, min_tags=3) == [["forest", "dog"]]


def test_never_list_scored_but_never_chosen() -> None:
    v = parse_vocabulary("!never nsfw\n!exclusive kind\nkind|nsfw\nkind|safe\ncat\n")
    # nsfw wins its group, so safe is not chosen either; nsfw itself is never written
    assert chosen_keywords([[0.9, 0.8, 0.3]], v, threshold=0.25) == [["cat"]]
    assert chosen_keywords([[0.9, 0.8, 0.3]], v, threshold=-1) == [["cat"]]
    assert chosen_keywords([[0.9, 0.8, 0.3]], v, threshold=0.95, min_tags=5) == [["cat"]]


def test_keywords_for_hierarchy_ancestors_renames_and_never() -> None:
    v = parse_vocabulary("!rename puppy => dog\n!never pets\nanimal|pets|puppy\nanimal|cat\nnature|tree\nplant|tree2\n")
    chosen = [ChosenTag(v.tags[0], 0.5), ChosenTag(v.tags[1], 0.4), ChosenTag(v.tags[2], 0.3)]
    flat, hier = keywords_for(chosen, v)
    assert flat == ["dog", "cat", "tree"]
    assert hier == ["animal|dog", "animal|cat", "nature|tree"]
    flat, hier = keywords_for(chosen, v, with_ancestors=True)
    assert flat == ["dog", "animal", "cat", "tree", "nature"]
    assert keywords_for([], v) == ([], [])


def test_keywords_for_drops_case_insensitive_duplicates() -> None:
    v = parse_vocabulary("!rename Kitty => cat\ncat\nKitty\n")
    flat, hier = keywords_for([ChosenTag(v.tags[0], 0.5), ChosenTag(v.tags[1], 0.4)], v)
    assert flat == ["cat"] and hier == ["cat"]


def test_keywords_for_a_tag_equal_to_its_parent_is_that_node_not_a_child_of_itself() -> None:
    # the shipped photos vocabulary has `document|document` and `city|city`: Lightroom would show a
    # keyword 'document' nested under 'document'; renames and the never-list can make such a pair too
    v = parse_vocabulary(
        "!rename puppy => dog\n!never pets\ndocument|document\nanimal|dog|puppy\nCity|city\nbird|pets|Bird2\n"
    )
    chosen = [ChosenTag(t, 0.5) for t in v.tags]
    flat, hier = keywords_for(chosen, v, with_ancestors=True)
    assert hier == ["document", "animal|dog", "city", "bird|Bird2"]  # the keyword's own spelling
    assert flat == ["document", "dog", "animal", "city", "Bird2", "bird"]
    from rtagx.tags.vocab import load_vocabulary

    photos = load_vocabulary("photos")
    hier = keywords_for([ChosenTag(t, 0.5) for t in photos.tags], photos)[1]
    assert not [h for h in hier if any(a.casefold() == b.casefold() for a, b in zip(h.split("|"), h.split("|")[1:]))]


def test_build_tag_matrix_is_renormalized_mean_of_normalized_prompt_vectors() -> None:
    v = parse_vocabulary("!template a {}\n!template the {}\nx = y\nz\n  > zed.\n")
    rng = np.random.default_rng(0)
    vectors = {p: rng.normal(size=8) * rng.uniform(0.5, 3) for p in v.all_prompts()}
    m = build_tag_matrix(v, vectors)
    assert m.shape == (2, 8) and m.dtype == np.float32
    for row, tag in zip(m, v.tags):
        stack = np.stack([vectors[p] / np.linalg.norm(vectors[p]) for p in v.prompts_for(tag)])
        mean = stack.mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-6, atol=1e-6)
    with pytest.raises(RtagxError, match="no text vector"):
        build_tag_matrix(v, {})


def test_score_images_cosine_and_sigmoid() -> None:
    tags = np.eye(3, dtype=np.float32)
    images = np.array([[3.0, 4.0, 0.0]], dtype=np.float32)  # not normalized on purpose
    cos = score_images(images, tags)
    np.testing.assert_allclose(cos, [[0.6, 0.8, 0.0]], atol=1e-6)
    probs = score_images(images, tags, logit_scale=10.0, logit_bias=-5.0)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(10 * np.array([[0.6, 0.8, 0.0]]) - 5))), rtol=1e-5)
    with pytest.raises(RtagxError):
        score_images(images, tags, logit_bias=-5.0)
    assert score_images(images[0], tags).shape == (1, 3)


def test_choose_tags_sigmoid_model_defaults_to_probability_threshold() -> None:
    probs = [[0.06, 0.04, 0.5, 0.01]]
    assert chosen_keywords(probs, V4, model_name="ViT-B-16-SigLIP") == [["c", "a"]]


def test_scores_and_vocabulary_must_agree() -> None:
    with pytest.raises(RtagxError, match="columns"):
        choose_tags(np.zeros((1, 3)), V4, ScoringOptions())


def test_tiny_clip_ensemble_matches_direct_computation(tiny_clip) -> None:
    """The tag vector equals: encode_text of tokenized prompts, normalize, mean, renormalize."""
    import open_clip
    import torch

    cfg, ckpt = tiny_clip
    open_clip.add_model_config(cfg)
    model = open_clip.create_model(cfg.stem, pretrained=str(ckpt)).eval()
    tokenizer = open_clip.get_tokenizer(cfg.stem)
    vocab = with_templates(
        parse_vocabulary("golden retriever = goldie\ncat\n  > a cat asleep on a sofa.\n"), "imagenet80"
    )
    prompts_all = vocab.all_prompts()
    with torch.no_grad():
        encoded = model.encode_text(tokenizer(prompts_all)).float().numpy()
    matrix = build_tag_matrix(vocab, dict(zip(prompts_all, encoded)))

    for row, tag in zip(matrix, vocab.tags):
        texts = [t.format(name) for name in tag.names for t in prompts.IMAGENET80] + list(tag.descriptions)
        assert len(texts) == (80 * len(tag.names) + len(tag.descriptions))
        with torch.no_grad():
            direct = torch.nn.functional.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)
        expected = torch.nn.functional.normalize(direct.mean(dim=0), dim=-1).numpy()
        np.testing.assert_allclose(row, expected, atol=2e-5)

    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(torch.zeros(1, 3, 64, 64)).float(), dim=-1).numpy()
    scores = score_images(image, matrix)
    np.testing.assert_allclose(scores, image @ matrix.T, atol=1e-6)
    chosen = choose_tags(scores, vocab, ScoringOptions(threshold=-1))
    assert [c.tag.keyword for c in chosen[0]] == [vocab.tags[i].keyword for i in np.argsort(-scores[0])]


def test_tag_and_retag_score_with_the_same_prompt_vectors(tiny_clip, photo_dir, tmp_path) -> None:
    """A first `tag` encodes the prompts; it must score with what the cache keeps of them (float16),
    as `retag`, `explain` and every later run do: else a keyword written at a threshold a hair
    below its score is removed by the next retag at the same threshold."""
    from rtagx.run.events import RunEvents
    from rtagx.run.retag import run_retag
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    cfg, ckpt = tiny_clip
    options = {
        "model": str(cfg),
        "pretrained": str(ckpt),
        "cache": str(tmp_path / "c.db"),
        "tags": "coco",
        "threshold": -1.0,
        "top_k": 0,
        "write": "none",
    }
    settings = load_settings(options, environ={})

    def scores(run) -> dict[str, list[tuple[str, float]]]:
        seen: dict[str, list[tuple[str, float]]] = {}
        run(RunEvents(on_file=lambda o: seen.__setitem__(o.path.name, list(o.tags))))
        return {k: v for k, v in seen.items() if v}

    first = scores(lambda ev: run_tag([photo_dir], settings, events=ev))
    again = scores(lambda ev: run_retag([photo_dir], options, dry_run=True, events=ev, base_settings=settings))
    assert len(first) == 4 and first == again  # exactly equal, not within 1e-3
