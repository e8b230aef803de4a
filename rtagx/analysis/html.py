"""Self-contained HTML pages for ``search --html`` and ``duplicates --html``.

One file with every thumbnail embedded as a data: URI and its style inline: it opens from disk,
mails as an attachment and never touches the network (a Content-Security-Policy forbids any fetch,
so a page cannot leak which photos someone looked at). Thumbnails come from the same decoder as
``tag`` (EXIF orientation, colour profiles, RAW previews, HEIF) in its reduced-size draft mode.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

from rtagx.analysis.duplicates import DuplicatesResult, Member
from rtagx.analysis.search import SearchResult, text_path

THUMB_SIZE = 240
_CSS = """
:root { color-scheme: dark; --bg:#15171a; --card:#22252a; --text:#e8e8e8; --dim:#9aa0a6; --keep:#3fb950; --bar:#58a6ff; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; background: var(--bg); color: var(--text);
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
h1 { font-size: 20px; margin: 0 0 4px; font-weight: 600; }
.meta { color: var(--dim); margin: 0 0 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 16px; }
.card { background: var(--card); border-radius: 10px; overflow: hidden; border: 3px solid transparent; position: relative; }
.card img, .card .noimg { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #0d0f11; }
.card .noimg { display: flex; align-items: center; justify-content: center; color: var(--dim); }
.card .info { padding: 8px 10px 10px; }
.card .name { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .folder, .card .facts { color: var(--dim); font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card a { color: inherit; text-decoration: none; }
.badge { position: absolute; top: 8px; left: 8px; background: rgba(0,0,0,.72); padding: 2px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.score { display: flex; align-items: center; gap: 8px; margin-top: 6px; font-variant-numeric: tabular-nums; }
.score .track { flex: 1; height: 6px; background: #30343a; border-radius: 3px; overflow: hidden; }
.score .fill { height: 100%; background: var(--bar); }
.group { margin: 0 0 28px; }
.group h2 { font-size: 16px; margin: 0 0 10px; font-weight: 600; }
.group h2 .why { color: var(--dim); font-weight: 400; }
.row { display: flex; gap: 16px; overflow-x: auto; padding-bottom: 4px; }
.row .card { flex: 0 0 220px; }
.card.keeper { border-color: var(--keep); }
.card.keeper .badge { background: var(--keep); color: #08130b; }
.empty { color: var(--dim); font-size: 16px; margin-top: 40px; }
"""


def thumbnail_uri(path: Path, size: int = THUMB_SIZE) -> str | None:
    """A JPEG data: URI of the whole image fitted into ``size`` pixels, or None when unreadable."""
    from PIL import Image

    from rtagx.imaging.decode import PreprocessSpec, decode_for_model

    spec = PreprocessSpec(size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode="longest", fill_color=13)
    try:
        pixels = decode_for_model(path, spec)
    except Exception:  # an unreadable file gets a placeholder; the page still lists it
        return None
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(paths: Sequence[Path]) -> dict[Path, str | None]:
    """Thumbnails of many images at once: decoding releases the GIL, so threads use every core
    (a duplicates page of a large library holds thousands)."""
    from concurrent.futures import ThreadPoolExecutor

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return dict(zip(unique, pool.map(thumbnail_uri, unique)))


def _text(value: object) -> str:
    return html.escape(text_path(value if isinstance(value, (bytes, str, Path)) else str(value)), quote=True)


def _page(title: str, meta: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        # no fetch of any kind: every image is inline, the style too
        "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f'<meta name=viewport content="width=device-width, initial-scale=1"><title>{_text(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_text(title)}</h1><p class=meta>{meta}</p>{body}</body></html>\n"
    )


def _card(
    path: Path,
    badge: str,
    lines: Sequence[str],
    *,
    score: float | None = None,
    scale: tuple[float, float] = (0.0, 1.0),
    classes: str = "",
    thumbs: dict[Path, str | None] | None = None,
) -> str:
    """One image: thumbnail (a link to the file), badge, name, folder, facts, and a score bar whose
    length runs from ``scale[0]`` (empty) to ``scale[1]`` (full)."""
    uri = thumbs[path] if thumbs is not None and path in thumbs else thumbnail_uri(path)
    picture = f'<img src="{uri}" alt="{_text(path.name)}">' if uri else '<div class="noimg">no preview</div>'
    link = path.as_uri()
    bar = ""
    if score is not None:
        low, high = scale
        width = max(0.0, min(1.0, (score - low) / max(high - low, 1e-9))) * 100
        bar = (
            f'<div class="score"><div class="track"><div class="fill" style="width:{width:.1f}%"></div></div>'
            f'<span class="value">{score:.4f}</span></div>'
        )
    extra = "".join(f'<div class="facts">{_text(line)}</div>' for line in lines)
    return (
        f'<div class="card {classes}" title="{_text(path)}"><a href="{_text(link)}">{picture}</a>'
        f'<span class="badge">{_text(badge)}</span><div class="info"><div class="name">{_text(path.name)}</div>'
        f'<div class="folder">{_text(path.parent)}</div>{extra}{bar}</div></div>'
    )


def search_page(result: SearchResult) -> str:
    """Ranked results with thumbnails and scores."""
    query = " ".join(
        ("- " if t.weight < 0 else "+ " if i else "")
        + (f"{abs(t.weight):g}:" if abs(t.weight) != 1 else "")
        + (f"[{Path(t.value).name}]" if t.kind == "image" else t.value)
        for i, t in enumerate(result.terms)
    )
    meta = (
        f"{len(result.hits)} best of {result.compared} cached images &middot; model {_text(result.model.name)} "
        f"&middot; score: cosine with the query"
    )
    if not result.hits:
        return _page(f"Search: {query}", meta, '<p class="empty">No image matched.</p>')
    scale = (min(0.0, result.hits[-1].score), result.hits[0].score)  # the best hit fills its bar
    thumbs = thumbnails([h.path for h in result.hits])
    cards = "".join(
        _card(h.path, f"#{h.rank}", [], score=h.score, scale=scale, classes="hit", thumbs=thumbs) for h in result.hits
    )
    return _page(f"Search: {query}", meta, f'<div class="grid">{cards}</div>')


def _member_lines(m: Member) -> list[str]:
    size = f"{m.width}x{m.height}" if m.width else "size unknown"
    lines = [f"{size} · {m.bytes / 1e6:.2f} MB" if m.bytes >= 10_000 else f"{size} · {m.bytes / 1e3:.1f} kB"]
    if m.taken:
        lines.append(m.taken)
    return lines


def duplicates_page(result: DuplicatesResult) -> str:
    """Duplicate groups side by side, the suggested keeper first and marked."""
    spare = sum(len(g.members) - 1 for g in result.groups)
    meta = (
        f"{len(result.groups)} groups, {spare} files that could go (nothing was deleted or moved) &middot; "
        f"{result.compared} cached images &middot; model {_text(result.model.name)} &middot; "
        f"min score {result.threshold:.4f} ({_text(result.threshold_source)})"
    )
    if not result.groups:
        return _page("Duplicates", meta, '<p class="empty">No duplicates found.</p>')
    sections = []
    thumbs = thumbnails([m.path for g in result.groups for m in g.members])
    for number, group in enumerate(result.groups, 1):
        cards = []
        for m in group.members:
            if m.keeper:
                cards.append(_card(m.path, "KEEP", _member_lines(m), classes="keeper", thumbs=thumbs))
            else:
                badge = "same content" if m.same_content else "duplicate"
                scale = (2 * result.threshold - 1, 1.0)  # the threshold fills half a bar
                cards.append(
                    _card(
                        m.path, badge, _member_lines(m), score=m.score, scale=scale, classes="duplicate", thumbs=thumbs
                    )
                )
        sections.append(
            f'<section class="group"><h2>Group {number} &middot; {len(group.members)} files '
            f'<span class="why">&middot; keep {_text(group.keeper.path.name)}: {_text(group.why)}</span></h2>'
            f'<div class="row">{"".join(cards)}</div></section>'
        )
    return _page("Duplicates", meta, "".join(sections))


def write_page(path: Path, text: str) -> None:
    """Write the page atomically (a half-written page is never left behind)."""
    from rtagx.analysis.analyze import write_text_atomically

    write_text_atomically(path, text)
