"""Vocabularies: which keywords rtagx may write, and the texts that describe each one to the model.

The format is line based and documented in docs/vocabulary-format.md. In short::

    # comment                         (also after whitespace at the end of a line: `dog  # note`)
    !templates imagenet80             named prompt ensemble(s); or `!template a photo of a {}.` lines
    !threshold 0.25                   file default threshold
    !never nsfw; gore                 keywords never written
    !rename puppy => dog              keyword replacement on output
    !exclusive scene                  tags under `scene|...` (or with @group=scene): only the best is kept
    !include coco                     tags and lists of another vocabulary (shipped name or file)
    animal|dog|golden retriever = goldie; golden dog   @threshold=0.28 @group=breeds
      > a golden retriever, a friendly dog with long golden fur.

A plain one-tag-per-line file is a valid vocabulary. Commas separate synonyms (``notebook, notebook
computer`` is the keyword ``notebook`` with the synonym ``notebook computer``): photo tools split
keywords on commas, so a written keyword never contains one.

Every problem is a :class:`~rtagx.errors.VocabularyError` whose message starts with ``FILE:LINE:``,
raised before any image is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rtagx.errors import UsageError, VocabularyError
from rtagx.tags import prompts

DEFAULT_VOCABULARY = "imagenet"
SHIPPED_VOCABULARIES = ("imagenet", "coco", "places365", "openimages", "photos")
TAG_ATTRIBUTES = ("threshold", "group", "templates")
NO_TEMPLATES = "none"  # @templates=none: a tag described by its '>' sentences only
DIRECTIVES = ("templates", "template", "threshold", "never", "rename", "exclusive", "include", "tagger")
_NAME_FORBIDDEN = "|=;,"  # structural characters of a tag line
_MAX_INCLUDE_DEPTH = 16
_MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Tag:
    """One keyword rtagx can write, with the texts that are encoded to score it."""

    keyword: str  # the keyword written into files
    path: tuple[str, ...]  # hierarchy root..keyword (len 1 when flat); path[-1] == keyword
    names: tuple[str, ...]  # keyword + synonyms: texts filled into the prompt templates
    descriptions: tuple[str, ...] = ()  # full sentences used verbatim as extra prompts
    threshold: float | None = None  # per-tag override
    group: str | None = None  # exclusive group name (only the best of a group is kept)
    templates: tuple[str, ...] | None = None  # per-tag templates (@templates=...); () = descriptions only


@dataclass
class Vocabulary:
    """Parsed vocabulary: tags in file order plus the file-wide settings."""

    tags: list[Tag]
    templates: tuple[str, ...]
    source: str
    threshold: float | None = None  # the file's `!threshold`: used when no --threshold is given
    never: tuple[str, ...] = ()  # keywords never written (compared case-insensitively)
    renames: dict[str, str] = field(default_factory=dict)  # written keyword -> replacement
    model_tags: bool = False  # `!tagger all`: every tag of a trained tagger, plus this file's lines

    def prompts_for(self, tag: Tag) -> list[str]:
        """Every text whose vector is averaged into the tag's vector: templated names, then descriptions."""
        templates = self.templates if tag.templates is None else tag.templates
        out = [prompts.fill(t, name) for name in tag.names for t in templates]
        out.extend(tag.descriptions)
        return list(dict.fromkeys(out))

    def all_prompts(self) -> list[str]:
        """Unique prompts of all tags in a stable order (what the text encoder must see)."""
        seen: dict[str, None] = {}
        for tag in self.tags:
            for p in self.prompts_for(tag):
                seen.setdefault(p, None)
        return list(seen)

    def fingerprint(self) -> str:
        """A hash of everything that changes which keywords get written; stable across runs."""
        data = {
            "tags": [
                [t.keyword, t.path, t.names, t.descriptions, t.threshold, t.group, t.templates] for t in self.tags
            ],
            "templates": self.templates,
            "threshold": self.threshold,
            "never": sorted(n.casefold() for n in self.never),
            "renames": sorted((k.casefold(), v) for k, v in self.renames.items()),
        }
        if self.model_tags:
            data["model_tags"] = True
        return hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=12).hexdigest()

    def is_never(self, keyword: str) -> bool:
        """True when ``keyword`` is on the never-write list."""
        return keyword.casefold() in self._never_set()

    def rename(self, keyword: str) -> str:
        """The keyword as written (after ``!rename``)."""
        return self._rename_map().get(keyword.casefold(), keyword)

    def lookup(self, label: str) -> Tag | None:
        """The tag whose keyword, path ("a|b|c") or synonym is ``label`` (case-insensitive); for eval labels."""
        return self._label_map().get(" ".join(label.split()).casefold())

    # Caches keyed on the mutable fields' identity, so edits to a Vocabulary are still seen.
    def _never_set(self) -> frozenset[str]:
        return frozenset(n.casefold() for n in self.never)

    def _rename_map(self) -> dict[str, str]:
        return {k.casefold(): v for k, v in self.renames.items()}

    def _label_map(self) -> dict[str, Tag]:
        key = (id(self.tags), len(self.tags))
        cached = getattr(self, "_labels_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        table: dict[str, Tag] = {}
        for tag in self.tags:  # keywords and paths win over synonyms
            table.setdefault(tag.keyword.casefold(), tag)
            table.setdefault("|".join(tag.path).casefold(), tag)
        for tag in self.tags:
            for name in tag.names:
                table.setdefault(name.casefold(), tag)
        object.__setattr__(self, "_labels_cache", (key, table))
        return table


# ---------------------------------------------------------------------------------------------
# Loading


def load_vocabulary(spec: str | Path) -> Vocabulary:
    """A vocabulary from a file path or a shipped name (imagenet, coco, places365, openimages, photos)."""
    path = _resolve(str(spec), base_dir=None)
    parsed = _parse_file(path, label=str(path), stack=())
    return parsed.to_vocabulary(source=str(spec))


def parse_vocabulary(text: str, source: str = "<text>", *, base_dir: Path | None = None) -> Vocabulary:
    """Parse vocabulary text; ``source`` is the FILE part of error messages, ``base_dir`` resolves !include."""
    if not isinstance(text, str):
        raise VocabularyError(f"{source}:1: vocabulary text must be str")
    parsed = _Parser(source, base_dir or Path.cwd(), stack=()).parse(text)
    return parsed.to_vocabulary(source=source)


def shipped_vocabulary_path(name: str) -> Path | None:
    """The file of a shipped vocabulary, from the installed package or the repo's vocab/ folder."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        return None
    filename = f"{name.lower()}.txt"
    try:
        from importlib.resources import files

        candidate = files("rtagx.vocabularies") / filename
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, ImportError, TypeError, OSError):
        pass
    fallback = Path(__file__).resolve().parents[2] / "vocab" / filename  # rtagx/tags/vocab.py -> repo
    return fallback if fallback.is_file() else None


def shipped_vocabularies() -> list[str]:
    """Names of the shipped vocabularies that are actually present."""
    return [n for n in SHIPPED_VOCABULARIES if shipped_vocabulary_path(n) is not None]


def with_templates(vocab: Vocabulary, spec: str) -> Vocabulary:
    """The vocabulary with its templates replaced by a named ensemble ("imagenet80", "default,photo")
    or one literal template containing ``{}`` (for ``--templates``)."""
    spec = (spec or "").strip()
    if not spec:
        return vocab
    if prompts.PLACEHOLDER in spec:
        problem = prompts.check_template(spec)
        if problem:
            raise UsageError(f"--templates: {problem}")
        return replace(vocab, templates=(spec,))
    templates: list[str] = []
    for name in (n for n in re.split(r"[,\s]+", spec) if n):
        try:
            templates.extend(prompts.template_set(name))
        except KeyError:
            raise UsageError(
                f"--templates: unknown template set '{name}' "
                f"(known: {', '.join(prompts.TEMPLATE_SETS)}, or a template with {{}})"
            ) from None
    return replace(vocab, templates=tuple(dict.fromkeys(templates)))


def _resolve(spec: str, base_dir: Path | None) -> Path:
    """An existing file (relative to ``base_dir`` when given), else a shipped vocabulary."""
    if not spec.strip():
        raise VocabularyError("empty vocabulary name (--tags)")
    exists = False
    try:
        candidate = Path(spec).expanduser()
        if base_dir is not None and not candidate.is_absolute():
            candidate = base_dir / candidate
        if candidate.is_file():
            return candidate
        exists = candidate.exists()
    except (OSError, ValueError, RuntimeError):
        pass
    shipped = shipped_vocabulary_path(spec.strip())
    if shipped is not None:
        return shipped
    if exists:
        raise VocabularyError(f"{spec}: not a vocabulary file (a folder?)")
    raise VocabularyError(
        f"{spec}: no such vocabulary file or shipped vocabulary "
        f"(shipped: {', '.join(shipped_vocabularies()) or 'none found'})"
    )


def _parse_file(path: Path, label: str, stack: tuple[Path, ...]) -> _Parsed:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise VocabularyError(f"{label}: larger than {_MAX_FILE_BYTES >> 20} MiB: not a vocabulary")
        data = path.read_bytes()
    except OSError as exc:
        raise VocabularyError(f"{label}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VocabularyError(f"{label}:{line}: not UTF-8 text (byte {exc.start})") from None
    return _Parser(label, path.parent, stack=(*stack, path.resolve())).parse(text)


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass
class _TagDraft:
    path: tuple[str, ...]
    names: list[str]
    descriptions: list[str]
    threshold: float | None
    group: str | None
    where: str  # "FILE:LINE" for messages
    templates: tuple[str, ...] | None = None

    def build(self) -> Tag:
        return Tag(
            keyword=self.path[-1],
            path=self.path,
            names=tuple(dict.fromkeys(self.names)),
            descriptions=tuple(dict.fromkeys(self.descriptions)),
            threshold=self.threshold,
            group=self.group,
            templates=self.templates,
        )


@dataclass
class _Parsed:
    source: str
    tags: list[_TagDraft] = field(default_factory=list)
    templates: tuple[str, ...] | None = None
    threshold: float | None = None
    never: list[str] = field(default_factory=list)
    renames: dict[str, tuple[str, str]] = field(default_factory=dict)  # casefold old -> (old, new)
    rename_where: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    model_tags: bool = False

    def to_vocabulary(self, source: str) -> Vocabulary:
        if not self.tags and not self.model_tags:
            raise VocabularyError(f"{self.source}:{max(self.lines, 1)}: no tags in vocabulary (empty file?)")
        return Vocabulary(
            tags=[t.build() for t in self.tags],
            templates=self.templates or prompts.template_set(prompts.DEFAULT_TEMPLATES),
            source=source,
            threshold=self.threshold,
            never=tuple(dict.fromkeys(self.never)),
            renames={old: new for old, new in self.renames.values()},
            model_tags=self.model_tags,
        )


def normalize_name(text: str) -> str:
    """Collapse runs of whitespace to one space and strip: how every name is compared and written."""
    return " ".join(text.split())


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a tag name in the text format, or None."""
    if not name:
        return "empty name"
    if name != normalize_name(name):
        return "name has leading, trailing or repeated whitespace"
    for ch in name:
        if ch in _NAME_FORBIDDEN:
            return f"'{ch}' cannot be part of a name (it separates hierarchy levels and synonyms)"
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            return f"control or invalid character U+{ord(ch):04X} in name"
    if name[0] in "#!>@":
        return f"a name cannot start with '{name[0]}'"
    if " #" in name or " @" in name:
        return "a name cannot contain ' #' (comment) or ' @' (attribute)"
    return None


class _Parser:
    def __init__(self, source: str, base_dir: Path, stack: tuple[Path, ...]) -> None:
        self.source = source
        self.base_dir = base_dir
        self.stack = stack
        self.out = _Parsed(source)
        self.exclusive: list[tuple[tuple[str, ...], str]] = []
        self.named_templates: list[str] | None = None
        self.literal_templates: list[str] = []
        self.lineno = 0
        self.last_tag: _TagDraft | None = None
        self.included: list[_Parsed] = []

    def fail(self, message: str) -> VocabularyError:
        return VocabularyError(f"{self.source}:{self.lineno}: {message}")

    def parse(self, text: str) -> _Parsed:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.out.lines = len(lines)
        for self.lineno, raw in enumerate(lines, 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            if line.startswith(">"):
                self._description(line[1:])
            elif line.startswith("!"):
                self._directive(line[1:])
            else:
                self._tag_line(line)
        self._finish()
        return self.out

    # -- pieces of a line -------------------------------------------------------------------

    def _name(self, text: str, what: str) -> str:
        name = normalize_name(text)
        problem = name_problem(name)
        if problem:
            raise self.fail(f"{what}: {problem}" + (f": '{name}'" if name else ""))
        return name

    def _names(self, text: str, what: str) -> list[str]:
        return [self._name(part, what) for part in re.split(r"[;,]", text) if part.strip()]

    def _threshold(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.fail(f"threshold must be a number, got '{text}'") from None
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            raise self.fail(f"threshold must be within [-1, 1], got '{text}'")
        return value

    def _tag_line(self, line: str) -> None:
        match = re.search(r"(?:^|(?<=\s))@", line)
        head, attr_text = (line[: match.start()], line[match.start() :]) if match else (line, "")
        path_text, _, alias_text = head.partition("=")
        levels = path_text.split("|")
        path = [self._name(level, "hierarchy level") for level in levels[:-1]]
        leaf = [normalize_name(p) for p in levels[-1].split(",")]
        if not leaf[0]:
            raise self.fail("missing keyword" + (" (empty level in hierarchy path)" if len(levels) > 1 else ""))
        keyword = self._name(leaf[0], "keyword")
        synonyms = [self._name(s, "synonym") for s in leaf[1:] if s]
        synonyms += self._names(alias_text, "synonym")
        threshold: float | None = None
        group: str | None = None
        templates: tuple[str, ...] | None = None
        seen: set[str] = set()
        for token in (t for t in re.split(r"\s+(?=@)", attr_text.strip()) if t):
            m = re.fullmatch(r"@([A-Za-z_]+)=(.*)", token, flags=re.S)
            if not m:
                raise self.fail(
                    f"attribute must look like @key=value (keys: {', '.join(TAG_ATTRIBUTES)}), got '{token}'"
                )
            key, value = m.group(1).lower(), normalize_name(m.group(2))
            if key not in TAG_ATTRIBUTES:
                raise self.fail(f"unknown attribute '@{key}' (known: {', '.join(TAG_ATTRIBUTES)})")
            if key in seen:
                raise self.fail(f"attribute '@{key}' given twice")
            seen.add(key)
            if key == "threshold":
                threshold = self._threshold(value)
            elif key == "group":
                group = self._group(value)
            else:
                templates = self._tag_templates(value)
        draft = _TagDraft(
            path=tuple([*path, keyword]),
            names=[keyword, *synonyms],
            descriptions=[],
            threshold=threshold,
            group=group,
            where=f"{self.source}:{self.lineno}",
            templates=templates,
        )
        self.out.tags.append(draft)
        self.last_tag = draft

    def _tag_templates(self, value: str) -> tuple[str, ...]:
        name = value.strip().lower()
        if name == NO_TEMPLATES:
            return ()
        try:
            return prompts.template_set(name)
        except KeyError:
            raise self.fail(
                f"unknown template set '{name}' for @templates (known: "
                f"{', '.join(prompts.TEMPLATE_SETS)}, {NO_TEMPLATES})"
            ) from None

    def _group(self, value: str) -> str:
        if not value:
            raise self.fail("empty group name")
        if any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in value) or " #" in value:
            raise self.fail(f"bad group name '{value}'")
        return value

    def _description(self, text: str) -> None:
        if self.last_tag is None:
            raise self.fail("description ('>' line) before any tag")
        sentence = normalize_name(text)
        if not sentence:
            raise self.fail("empty description")
        if any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in sentence):
            raise self.fail("control or invalid character in description")
        self.last_tag.descriptions.append(sentence)

    def _directive(self, text: str) -> None:
        parts = text.strip().split(None, 1)
        name = parts[0].lower() if parts else ""
        arg = parts[1].strip() if len(parts) > 1 else ""
        if name not in DIRECTIVES:
            raise self.fail(f"unknown directive '!{name}' (known: {', '.join('!' + d for d in DIRECTIVES)})")
        if not arg:
            raise self.fail(f"!{name} needs an argument")
        getattr(self, f"_d_{name}")(arg)

    def _d_templates(self, arg: str) -> None:
        out: list[str] = [] if self.named_templates is None else self.named_templates
        for name in (n for n in re.split(r"[,\s]+", arg) if n):
            try:
                out.extend(prompts.template_set(name))
            except KeyError:
                raise self.fail(f"unknown template set '{name}' (known: {', '.join(prompts.TEMPLATE_SETS)})") from None
        self.named_templates = out

    def _d_template(self, arg: str) -> None:
        template = normalize_name(arg)
        problem = prompts.check_template(template)
        if problem is None and any(unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") for ch in template):
            problem = "control or invalid character in template"
        if problem:
            raise self.fail(problem)
        self.literal_templates.append(template)

    def _d_threshold(self, arg: str) -> None:
        self.out.threshold = self._threshold(arg)

    def _d_never(self, arg: str) -> None:
        self.out.never.extend(self._names(arg, "!never keyword"))

    def _d_rename(self, arg: str) -> None:
        if arg.count("=>") != 1:
            raise self.fail("!rename needs 'old => new'")
        old_text, new_text = arg.split("=>")
        old, new = self._name(old_text, "!rename old keyword"), self._name(new_text, "!rename new keyword")
        key = old.casefold()
        if key in self.out.renames:
            raise self.fail(f"'{old}' is renamed twice (first at {self.out.rename_where[key]})")
        self.out.renames[key] = (old, new)
        self.out.rename_where[key] = f"{self.source}:{self.lineno}"

    def _d_tagger(self, arg: str) -> None:
        if arg.strip().lower() != "all":
            raise self.fail("!tagger takes 'all': every tag of a trained tagger (WD14, JoyTag), plus this file's lines")
        self.out.model_tags = True

    def _d_exclusive(self, arg: str) -> None:
        path = tuple(self._name(level, "!exclusive path") for level in arg.split("|"))
        self.exclusive.append((path, f"{self.lineno}"))

    def _d_include(self, arg: str) -> None:
        if len(self.stack) >= _MAX_INCLUDE_DEPTH:
            raise self.fail("!include nested too deeply")
        try:
            path = _resolve(arg, self.base_dir)
        except VocabularyError:
            raise self.fail(f"!include: no such vocabulary file or shipped vocabulary '{arg}'") from None
        try:
            resolved = path.resolve()
        except OSError:
            raise self.fail(f"!include: cannot resolve '{arg}'") from None
        if resolved in self.stack:
            raise self.fail(f"!include cycle: '{arg}' includes itself")
        inner = _parse_file(path, label=str(path), stack=self.stack)
        self.out.tags.extend(inner.tags)
        self.out.never.extend(inner.never)
        for key, pair in inner.renames.items():
            if key in self.out.renames:
                raise self.fail(f"'{pair[0]}' is renamed twice (first at {self.out.rename_where[key]})")
            self.out.renames[key] = pair
            self.out.rename_where[key] = inner.rename_where[key]
        self.included.append(inner)
        self.last_tag = None  # '>' lines after an include would attach to a tag of another file

    # -- checks over the whole file --------------------------------------------------------

    def _finish(self) -> None:
        if self.named_templates is not None or self.literal_templates:
            templates = tuple(dict.fromkeys((self.named_templates or []) + self.literal_templates))
            self.out.templates = templates
        else:
            inherited = [p.templates for p in self.included if p.templates]
            self.out.templates = inherited[-1] if inherited else None
        if self.out.threshold is None:
            inherited_thr = [p.threshold for p in self.included if p.threshold is not None]
            self.out.threshold = inherited_thr[-1] if inherited_thr else None
        for prefix, line in self.exclusive:
            name = "|".join(prefix)
            matched = False
            for draft in self.out.tags:
                if draft.group == name:
                    matched = True
                elif draft.group is None and draft.path[: len(prefix)] == prefix:
                    draft.group = name
                    matched = True
            if not matched:
                raise VocabularyError(f"{self.source}:{line}: !exclusive '{name}' matches no tag path or @group")
        seen: dict[str, str] = {}
        for draft in self.out.tags:
            if draft.templates == () and not draft.descriptions:
                raise VocabularyError(f"{draft.where}: @templates=none needs '>' description lines")
            key = draft.path[-1].casefold()
            if key in seen:
                raise VocabularyError(
                    f"{draft.where}: duplicate keyword '{draft.path[-1]}' (first defined at {seen[key]})"
                )
            seen[key] = draft.where


def _strip_comment(line: str) -> str:
    """Drop a comment: a line whose first non-blank character is '#', or whitespace + '#' and the rest."""
    if line.lstrip().startswith("#"):
        return ""
    match = re.search(r"\s#", line)
    return line[: match.start()] if match else line


# ---------------------------------------------------------------------------------------------
# Writing


def serialize_vocabulary(vocab: Vocabulary, *, header: str | Iterable[str] = ()) -> str:
    """The vocabulary as text that :func:`parse_vocabulary` reads back to an equal vocabulary.

    Raises ValueError for names the text format cannot hold (see :func:`name_problem`).
    """
    lines: list[str] = []
    header_lines = header.splitlines() if isinstance(header, str) else list(header)
    lines.extend(f"# {h}".rstrip() for h in header_lines)
    named = prompts.name_of(vocab.templates)
    if named is not None:
        if named != prompts.DEFAULT_TEMPLATES:
            lines.append(f"!templates {named}")
    else:
        for template in vocab.templates:
            if prompts.check_template(template) or template != normalize_name(template) or " #" in template:
                raise ValueError(f"template cannot be written: {template!r}")
            lines.append(f"!template {template}")
    if vocab.threshold is not None:
        lines.append(f"!threshold {vocab.threshold!r}")
    for name in vocab.never:
        _check_writable(name)
        lines.append(f"!never {name}")
    for old, new in vocab.renames.items():
        _check_writable(old)
        _check_writable(new)
        lines.append(f"!rename {old} => {new}")
    if lines:
        lines.append("")
    for tag in vocab.tags:
        lines.extend(_tag_lines(tag))
    return "\n".join(lines) + "\n"


def _check_writable(name: str) -> None:
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{problem}: {name!r}")


def _tag_lines(tag: Tag) -> list[str]:
    if not tag.path or tag.path[-1] != tag.keyword or not tag.names or tag.names[0] != tag.keyword:
        raise ValueError(f"tag {tag.keyword!r}: path[-1] and names[0] must be the keyword")
    for name in (*tag.path, *tag.names):
        _check_writable(name)
    line = "|".join(tag.path)
    if len(tag.names) > 1:
        line += " = " + "; ".join(tag.names[1:])
    if tag.threshold is not None:
        line += f" @threshold={tag.threshold!r}"
    if tag.group is not None:
        if tag.group != normalize_name(tag.group) or not tag.group or " @" in tag.group or " #" in tag.group:
            raise ValueError(f"group name cannot be written: {tag.group!r}")
        line += f" @group={tag.group}"
    if tag.templates is not None:
        named = NO_TEMPLATES if tag.templates == () else prompts.name_of(tag.templates)
        if named is None:
            raise ValueError(f"tag {tag.keyword!r}: only named template sets can be written per tag")
        line += f" @templates={named}"
    out = [line]
    for sentence in tag.descriptions:
        if sentence != normalize_name(sentence) or not sentence or " #" in sentence:
            raise ValueError(f"description cannot be written: {sentence!r}")
        out.append(f"  > {sentence}")
    return out
