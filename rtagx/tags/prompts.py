"""Prompt templates: named ensembles a vocabulary (``!templates NAME``) or ``--templates`` can choose.

A template is a sentence with exactly one ``{}`` where a tag name goes. A tag's text vector is the
renormalized mean of the normalized vectors of all its prompts (one per template and name, plus its
descriptions): the prompt-ensembling recipe of the CLIP paper (Radford et al. 2021, section 3.1.4),
which gave them several points of ImageNet accuracy over a single template.
"""

from __future__ import annotations

PLACEHOLDER = "{}"

#: The 80 templates OpenAI used for ImageNet zero-shot: open_clip's
#: ``zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES`` (lambdas there) called with "{}". Copied as
#: strings so that reading a vocabulary does not import torch; a test checks they stay equal.
IMAGENET80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

#: The 7-template subset the CLIP authors found almost as good as all 80 (open_clip's
#: ``SIMPLE_IMAGENET_TEMPLATES``).
SIMPLE7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: rtagx's short default: templates from the 80 that describe ordinary photographs (no sculptures,
#: tattoos, video games or origami), cheap to encode for large vocabularies.
DEFAULT: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a blurry photo of a {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT,
    "imagenet80": IMAGENET80,
    "simple7": SIMPLE7,
    "photo": ("a photo of a {}.",),
    "bare": ("{}",),  # the name alone, e.g. for vocabularies whose names are already sentences
}

DEFAULT_TEMPLATES = "default"


def check_template(template: str) -> str | None:
    """Return what is wrong with a template, or None when it is usable."""
    count = template.count(PLACEHOLDER)
    if count != 1:
        return f"a template needs exactly one '{{}}' where the tag name goes, found {count}: '{template}'"
    if template != template.strip() or not template.strip():
        return "a template must not be empty or start/end with spaces"
    if "\n" in template or "\r" in template:
        return "a template must be one line"
    return None


def fill(template: str, name: str) -> str:
    """The prompt for one name. ``str.replace`` not ``format``: other braces stay literal."""
    return template.replace(PLACEHOLDER, name, 1)


def template_set(name: str) -> tuple[str, ...]:
    """A named ensemble; KeyError when unknown."""
    return TEMPLATE_SETS[name.strip().lower()]


def name_of(templates: tuple[str, ...]) -> str | None:
    """The name of a shipped ensemble equal to ``templates``, for compact serialization."""
    for name, value in TEMPLATE_SETS.items():
        if value == tuple(templates):
            return name
    return None
