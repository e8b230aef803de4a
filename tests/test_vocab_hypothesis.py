"""Property tests of the vocabulary parser: arbitrary text raises only VocabularyError, and
serialize -> parse gives back the same vocabulary."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtagx.errors import VocabularyError
from rtagx.tags import prompts
from rtagx.tags.vocab import Tag, Vocabulary, name_problem, normalize_name, parse_vocabulary, serialize_vocabulary

EMPTY_DIR = Path(tempfile.mkdtemp(prefix="rtagx-vocab-hyp-"))  # !include resolves here: nothing to find
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SYNTAX = st.sampled_from(
    [
        "#",
        "!",
        ">",
        "@",
        "|",
        "=",
        ";",
        ",",
        " ",
        "\t",
        "\n",
        "\r",
        "{}",
        "=>",
        "@threshold=",
        "@group=",
        "@templates=",
        "!templates ",
        "!template ",
        "!threshold ",
        "!never ",
        "!rename ",
        "!exclusive ",
        "!include ",
        "0.3",
        "-1",
        "nan",
        "1e9",
        "imagenet80",
        "none",
        "a",
        "dog",
        "é",
        "\x00",
        "\u2028",
        "\ufeff",
    ]
)
LINEISH = st.lists(st.one_of(SYNTAX, st.text(max_size=8)), max_size=40).map("".join)


@SETTINGS
@given(st.one_of(st.text(max_size=300), LINEISH))
def test_arbitrary_text_raises_only_vocabulary_error(text: str) -> None:
    try:
        v = parse_vocabulary(text, "h.txt", base_dir=EMPTY_DIR)
    except VocabularyError as exc:
        assert str(exc).startswith("h.txt")  # names the file (and the line, where there is one)
        return
    assert v.tags
    for tag in v.tags:
        assert tag.path[-1] == tag.keyword == tag.names[0]
        assert name_problem(tag.keyword) is None
    assert v.all_prompts()
    v.fingerprint()


WORD = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Co", "Cn", "Zl", "Zp"), blacklist_characters="|=;,#@!>\r\n\x85"
    ),
    min_size=1,
    max_size=12,
)
NAME = WORD.map(normalize_name).filter(lambda n: name_problem(n) is None)
SENTENCE = st.lists(WORD, min_size=1, max_size=4).map(" ".join).map(normalize_name).filter(bool)


@st.composite
def tags(draw) -> list[Tag]:
    out: list[Tag] = []
    seen: set[str] = set()
    for _ in range(draw(st.integers(1, 6))):
        keyword = draw(NAME)
        if keyword.casefold() in seen:
            continue
        seen.add(keyword.casefold())
        path = (*tuple(draw(st.lists(NAME, max_size=2))), keyword)
        names = tuple(dict.fromkeys((keyword, *draw(st.lists(NAME, max_size=3)))))
        descriptions = tuple(dict.fromkeys(draw(st.lists(SENTENCE, max_size=2))))
        threshold = draw(st.one_of(st.none(), st.floats(-1, 1, allow_nan=False)))
        group = draw(st.one_of(st.none(), NAME))
        templates = draw(
            st.sampled_from([None, prompts.TEMPLATE_SETS["bare"], prompts.IMAGENET80] + ([()] if descriptions else []))
        )
        out.append(Tag(keyword, path, names, descriptions, threshold, group, templates))
    return out


@st.composite
def vocabularies(draw) -> Vocabulary:
    templates = draw(
        st.one_of(
            st.sampled_from(list(prompts.TEMPLATE_SETS.values())),
            st.lists(
                SENTENCE.filter(lambda s: "{}" not in s).map(lambda s: s + " {}"), min_size=1, max_size=3, unique=True
            ).map(tuple),
        )
    )
    never = tuple({n.casefold(): n for n in draw(st.lists(NAME, max_size=3))}.values())
    renames = {}
    for old, new in draw(st.lists(st.tuples(NAME, NAME), max_size=3)):
        if old.casefold() not in {k.casefold() for k in renames}:
            renames[old] = new
    return Vocabulary(
        tags=draw(tags()),
        templates=tuple(templates),
        source="gen",
        threshold=draw(st.one_of(st.none(), st.floats(-1, 1, allow_nan=False))),
        never=never,
        renames=renames,
    )


@SETTINGS
@given(vocabularies())
def test_serialize_parse_round_trip(v: Vocabulary) -> None:
    text = serialize_vocabulary(v, header="generated")
    w = parse_vocabulary(text, "rt.txt", base_dir=EMPTY_DIR)
    assert w.tags == v.tags
    assert w.templates == v.templates
    assert w.threshold == v.threshold
    assert w.never == v.never and w.renames == v.renames
    assert w.fingerprint() == v.fingerprint()
    assert serialize_vocabulary(w, header="generated") == text
