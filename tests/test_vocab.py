"""Vocabulary format: parsing, errors with FILE:LINE, shipped vocabularies, includes, serialization."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rtagx.errors import UsageError, VocabularyError
from rtagx.tags import prompts
from rtagx.tags.vocab import (
    DEFAULT_VOCABULARY,
    SHIPPED_VOCABULARIES,
    Tag,
    load_vocabulary,
    parse_vocabulary,
    serialize_vocabulary,
    shipped_vocabulary_path,
    with_templates,
)

FULL = """\
# a comment
!templates imagenet80
!threshold 0.25
!never nsfw
!rename puppy => dog
!exclusive scene

animal|dog|golden retriever = goldie; golden dog   @threshold=0.28 @group=breeds
  > a golden retriever, a friendly dog with long golden fur.
  > a large dog with a golden coat.
animal|puppy = young dog   # trailing comment
scene|beach
scene|forest @threshold=-0.5
notebook, notebook computer
nsfw
"""


def test_plain_file_one_tag_per_line(tmp_path: Path) -> None:
    f = tmp_path / "tags.txt"
    f.write_text("# my tags\n\ncat\n  dog  \nred  car\n")
    v = load_vocabulary(f)
    assert [t.keyword for t in v.tags] == ["cat", "dog", "red car"]
    assert v.tags[0] == Tag("cat", ("cat",), ("cat",))
    assert v.templates == prompts.DEFAULT
    assert v.source == str(f)


def test_full_format() -> None:
    v = parse_vocabulary(FULL, "full.txt")
    by = {t.keyword: t for t in v.tags}
    g = by["golden retriever"]
    assert g.path == ("animal", "dog", "golden retriever")
    assert g.names == ("golden retriever", "goldie", "golden dog")
    assert g.threshold == 0.28 and g.group == "breeds"
    assert g.descriptions == (
        "a golden retriever, a friendly dog with long golden fur.",
        "a large dog with a golden coat.",
    )
    assert by["puppy"].names == ("puppy", "young dog")
    assert by["beach"].group == by["forest"].group == "scene"
    assert by["forest"].threshold == -0.5
    assert by["notebook"].names == ("notebook", "notebook computer")  # commas: synonyms, never in a keyword
    assert v.templates == prompts.IMAGENET80
    assert v.threshold == 0.25
    assert v.never == ("nsfw",) and v.is_never("NSFW")
    assert v.rename("Puppy") == "dog" and v.rename("cat") == "cat"


def test_prompts_for_fills_every_name_and_adds_descriptions() -> None:
    v = parse_vocabulary("!template a photo of a {}.\n!template art of {}\ndog = hound\n  > a dog sleeping.\n")
    assert v.templates == ("a photo of a {}.", "art of {}")
    assert v.prompts_for(v.tags[0]) == [
        "a photo of a dog.",
        "art of dog",
        "a photo of a hound.",
        "art of hound",
        "a dog sleeping.",
    ]


def test_all_prompts_unique_and_stable() -> None:
    v = parse_vocabulary("!templates photo\nmissile\nprojectile = missile\n")
    assert v.all_prompts() == ["a photo of a missile.", "a photo of a projectile."]


def test_fingerprint_changes_with_anything_that_scores() -> None:
    base = parse_vocabulary("dog\ncat\n")
    assert base.fingerprint() == parse_vocabulary("# other comment\ndog\n\ncat\n").fingerprint()
    for other in (
        "dog\ncat = kitty\n",
        "dog @threshold=0.3\ncat\n",
        "!templates imagenet80\ndog\ncat\n",
        "dog\ncat\n  > a cat.\n",
        "!never cat\ndog\ncat\n",
        "!rename cat => kitty\ndog\ncat\n",
        "a|dog\ncat\n",
        "dog @group=g\ncat @group=g\n",
        "!threshold 0.3\ndog\ncat\n",
    ):
        assert parse_vocabulary(other).fingerprint() != base.fingerprint(), other


def test_exclusive_hierarchy_node_and_group_name() -> None:
    v = parse_vocabulary(
        "!exclusive place|indoor\n!exclusive time\nplace|indoor|kitchen\nplace|indoor|bedroom\n"
        "place|outdoor|beach\nday @group=time\nnight @group=time\nkitchen2 @group=own\n"
    )
    groups = {t.keyword: t.group for t in v.tags}
    assert groups == {
        "kitchen": "place|indoor",
        "bedroom": "place|indoor",
        "beach": None,
        "day": "time",
        "night": "time",
        "kitchen2": "own",
    }


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("dog\n!nope x\n", 2, "unknown directive '!nope'"),
        ("dog @thresh=0.2\n", 1, "unknown attribute '@thresh'"),
        ("dog @threshold=high\n", 1, "threshold must be a number"),
        ("dog @threshold=1.5\n", 1, "within [-1, 1]"),
        ("dog @threshold=nan\n", 1, "within [-1, 1]"),
        ("dog @threshold=0.2 @threshold=0.3\n", 1, "given twice"),
        ("cat\ndog @group\n", 2, "@key=value"),
        ("> a description\ndog\n", 1, "description ('>' line) before any tag"),
        ("dog\n\n# c\nDog\n", 4, "duplicate keyword 'Dog' (first defined at t.txt:1)"),
        ("animal||dog\n", 1, "empty name"),
        ("animal|\n", 1, "missing keyword"),
        (", dog\n", 1, "missing keyword"),
        ("a, b|dog\n", 1, "',' cannot be part of a name"),
        ("dog = a=b\n", 1, "'=' cannot be part of a name"),
        ("!templates nope\ndog\n", 1, "unknown template set 'nope'"),
        ("!template a photo\ndog\n", 1, "exactly one '{}'"),
        ("!template {} and {}\ndog\n", 1, "exactly one '{}'"),
        ("!threshold\ndog\n", 1, "!threshold needs an argument"),
        ("!rename a -> b\ndog\n", 1, "'old => new'"),
        ("!rename a => b\n!rename A => c\ndog\n", 2, "renamed twice"),
        ("!exclusive nothing\ndog\n", 1, "matches no tag path or @group"),
        ("dog\x01cat\n", 1, "control or invalid character U+0001"),
        ("!include no-such-file.txt\ndog\n", 1, "!include: no such vocabulary"),
        ("# only comments\n\n", 3, "no tags in vocabulary"),
        ("", 1, "no tags in vocabulary"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str, tmp_path: Path) -> None:
    with pytest.raises(VocabularyError) as err:
        parse_vocabulary(text, "t.txt", base_dir=tmp_path)
    assert str(err.value).startswith(f"t.txt:{line}: "), str(err.value)
    assert message in str(err.value)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(VocabularyError, match=r"no-such\.txt: no such vocabulary file"):
        load_vocabulary(tmp_path / "no-such.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"dog\ncaf\xe9\n")
    with pytest.raises(VocabularyError, match=r"latin1\.txt:2: not UTF-8"):
        load_vocabulary(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(VocabularyError, match=r"empty\.txt:1: no tags"):
        load_vocabulary(empty)
    with pytest.raises(VocabularyError, match="not a vocabulary file"):
        load_vocabulary(tmp_path)


def test_bom_and_crlf(tmp_path: Path) -> None:
    f = tmp_path / "win.txt"
    f.write_bytes("\ufeffdog\r\ncat = kitty\r\n".encode())
    assert [t.names for t in load_vocabulary(f).tags] == [("dog",), ("cat", "kitty")]


def test_include_merges_tags_and_lists_and_detects_cycles(tmp_path: Path) -> None:
    (tmp_path / "base.txt").write_text("!threshold 0.3\n!never bad\nanimal|dog\nbad\n")
    (tmp_path / "mine.txt").write_text("!include base.txt\n!rename dog => doggo\ncat\n")
    v = load_vocabulary(tmp_path / "mine.txt")
    assert [t.keyword for t in v.tags] == ["dog", "bad", "cat"]
    assert v.threshold == 0.3 and v.never == ("bad",) and v.rename("dog") == "doggo"
    (tmp_path / "a.txt").write_text("!include b.txt\nx\n")
    (tmp_path / "b.txt").write_text("!include a.txt\ny\n")
    with pytest.raises(VocabularyError, match="cycle"):
        load_vocabulary(tmp_path / "a.txt")
    (tmp_path / "dup.txt").write_text("!include base.txt\ndog\n")
    with pytest.raises(
        VocabularyError, match=r"dup\.txt:2: duplicate keyword 'dog' \(first defined at .*base\.txt:3\)"
    ):
        load_vocabulary(tmp_path / "dup.txt")


def test_include_shipped_vocabulary(tmp_path: Path) -> None:
    f = tmp_path / "coco-plus.txt"
    f.write_text("!include coco\n!never person\nselfie\n")
    v = load_vocabulary(f)
    assert len(v.tags) == 81 and v.is_never("person")


def test_with_templates() -> None:
    v = parse_vocabulary("dog\n")
    assert with_templates(v, "imagenet80").templates == prompts.IMAGENET80
    assert with_templates(v, "photo, simple7").templates == ("a photo of a {}.", *prompts.SIMPLE7)
    assert with_templates(v, "a drawing of a {}.").templates == ("a drawing of a {}.",)
    assert with_templates(v, "").templates == v.templates
    with pytest.raises(UsageError, match="unknown template set"):
        with_templates(v, "nope")


def test_imagenet80_are_open_clip_templates() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    assert tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES) == prompts.IMAGENET80
    assert tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES) == prompts.SIMPLE7
    assert len(set(prompts.IMAGENET80)) == 80
    assert all(prompts.check_template(t) is None for s in prompts.TEMPLATE_SETS.values() for t in s)


def test_serialize_round_trip_of_full_example() -> None:
    v = parse_vocabulary(FULL, "full.txt")
    text = serialize_vocabulary(v, header="made by a test\nsecond line")
    assert text.startswith("# made by a test\n# second line\n")
    w = parse_vocabulary(text, "again.txt")
    assert (w.tags, w.templates, w.threshold, w.never, w.renames) == (
        v.tags,
        v.templates,
        v.threshold,
        v.never,
        v.renames,
    )


def test_serialize_rejects_unwritable_names() -> None:
    v = parse_vocabulary("dog\n")
    v.tags[0] = Tag("a, b", ("a, b",), ("a, b",))
    with pytest.raises(ValueError):
        serialize_vocabulary(v)


# -- shipped vocabularies ------------------------------------------------------------------------

EXPECTED_SIZES = {"imagenet": 1000, "coco": 80, "places365": 365, "openimages": 601}


@pytest.mark.parametrize("name", SHIPPED_VOCABULARIES)
def test_shipped_vocabularies_load_with_header(name: str) -> None:
    path = shipped_vocabulary_path(name)
    assert path is not None and path.is_file()
    head = path.read_text().splitlines()[0]
    assert head.startswith(f"# rtagx vocabulary: {name}")
    v = load_vocabulary(name)
    if name in EXPECTED_SIZES:
        assert len(v.tags) == EXPECTED_SIZES[name]
    for tag in v.tags:
        assert "," not in tag.keyword and tag.keyword == tag.keyword.strip()
        assert tag.path[-1] == tag.keyword and tag.names[0] == tag.keyword
    # every shipped file survives a serialize/parse round trip
    again = parse_vocabulary(serialize_vocabulary(v))
    assert again.tags == v.tags and again.templates == v.templates


def test_default_vocabulary_and_imagenet_names() -> None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    v = load_vocabulary(DEFAULT_VOCABULARY)
    assert DEFAULT_VOCABULARY == "imagenet"
    assert v.tags[0].keyword == "tench" and v.tags[207].keyword.casefold() == "golden retriever"
    assert v.tags[421].names == ("baluster", "handrail")
    assert len({t.keyword.casefold() for t in v.tags}) == 1000
    # ImageNet order is kept: class index i is tag i, and its open_clip name is one of its names
    for i, name in enumerate(IMAGENET_CLASSNAMES):
        assert name.split(" / ")[0] in v.tags[i].names or name.split(" (")[0] in v.tags[i].names, (i, name)


def test_places365_is_one_exclusive_scene_group() -> None:
    v = load_vocabulary("places365")
    assert {t.group for t in v.tags} == {"scene"}
    by = {t.keyword: t for t in v.tags}
    assert "broadleaf forest" in by and "airfield" in by and "indoor swimming pool" in by
    assert not any(re.search(r"[/_]", t.keyword) for t in v.tags)


def test_photos_vocabulary_is_hierarchical_with_descriptions() -> None:
    v = load_vocabulary("photos")
    assert 200 <= len(v.tags) <= 600
    assert sum(len(t.path) > 1 for t in v.tags) > len(v.tags) * 0.8
    assert sum(bool(t.descriptions) for t in v.tags) >= 30
    keywords = {t.keyword for t in v.tags}
    for needed in ("dog", "cat", "receipt", "screenshot", "document", "beach", "snow", "birthday", "car", "food"):
        assert needed in keywords, needed


def test_shipped_name_wins_over_a_folder_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    assert len(load_vocabulary("coco").tags) == 80
    (tmp_path / "coco.txt").write_text("only\n")
    assert len(load_vocabulary("coco.txt").tags) == 1  # a file path is a file path


def test_per_tag_templates_and_descriptions_only() -> None:
    v = parse_vocabulary(
        "!templates photo\nscreenshot @templates=none\n  > a screenshot of a phone.\ndog @templates=bare\ncat\n"
    )
    shot, dog, cat = v.tags
    assert v.prompts_for(shot) == ["a screenshot of a phone."]
    assert v.prompts_for(dog) == ["dog"]
    assert v.prompts_for(cat) == ["a photo of a cat."]
    # --templates replaces the file's set; per-tag choices stay
    w = with_templates(v, "bare")
    assert w.prompts_for(w.tags[2]) == ["cat"] and w.prompts_for(w.tags[0]) == ["a screenshot of a phone."]
    again = parse_vocabulary(serialize_vocabulary(v))
    assert again.tags == v.tags
    with pytest.raises(VocabularyError, match=r"t\.txt:2: @templates=none needs '>' description"):
        parse_vocabulary("cat\nshot @templates=none\n", "t.txt")
    with pytest.raises(VocabularyError, match=r"t\.txt:1: unknown template set 'nah'"):
        parse_vocabulary("shot @templates=nah\n", "t.txt")
