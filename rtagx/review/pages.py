"""Plain HTML for ``rtagx review`` (no template engine, no Node build): every value is escaped, every
link carries the session token, and the only script is ``static/review.js`` from the same origin."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

from rtagx.analysis.search import text_path
from rtagx.review.library import FolderView, GridItem, Photo, PhotoView, TagGrid
from rtagx.run.events import FileOutcome

CSS = """
:root { color-scheme: dark; --bg:#15171a; --card:#22252a; --text:#e8e8e8; --dim:#9aa0a6; --ok:#3fb950; --no:#f85149; --bar:#58a6ff; }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 24px; background: var(--bg); color: var(--text); font: 14px/1.4 system-ui, sans-serif; }
a { color: var(--bar); text-decoration: none; }
nav { display: flex; gap: 18px; align-items: baseline; margin-bottom: 12px; }
nav .brand { font-weight: 700; color: var(--text); }
h1 { font-size: 20px; margin: 4px 0; font-weight: 600; }
.meta, .dim { color: var(--dim); }
#status { position: fixed; bottom: 0; left: 0; right: 0; padding: 6px 24px; background: #0d0f11; color: var(--dim); min-height: 28px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; margin-bottom: 40px; }
.card { background: var(--card); border-radius: 8px; overflow: hidden; border: 3px solid transparent; }
.card.focused { border-color: var(--bar); }
.card[data-decision="1"] { border-color: var(--ok); }
.card[data-decision="-1"] { border-color: var(--no); opacity: .75; }
.card img { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #0d0f11; }
.card .info { padding: 6px 8px; }
.card .name { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.card .row { display: flex; gap: 6px; align-items: center; justify-content: space-between; }
.card .state { font-size: 12px; color: var(--dim); }
.card[data-written="1"] .state { color: var(--ok); }
button { background: #30343a; color: var(--text); border: 0; border-radius: 4px; padding: 3px 9px; cursor: pointer; }
button.ok { background: #1f4d2b; } button.no { background: #5c1f1c; }
.threshold { grid-column: 1 / -1; border-top: 2px dashed #d29922; color: #d29922; padding-top: 2px; font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 4px 8px; border-bottom: 1px solid #30343a; text-align: left; font-variant-numeric: tabular-nums; }
tr.card { display: table-row; background: transparent; }
tr.card[data-decision="1"] td:first-child { border-left: 4px solid var(--ok); }
tr.card[data-decision="-1"] td:first-child { border-left: 4px solid var(--no); }
.pass { color: var(--ok); } .fail { color: var(--no); }
.photo { display: flex; gap: 24px; align-items: flex-start; }
.photo img { max-width: 48vw; max-height: 80vh; background: #0d0f11; }
.pager { margin: 8px 0 16px; display: flex; gap: 12px; }
.keys { color: var(--dim); font-size: 12px; }
"""

KEYS = "keys: j/k move, x select, a accept, r reject, u undo decision, Enter open (a/r act on the selection when there is one)"


def esc(value: object) -> str:
    # names from the file system may hold bytes that are not UTF-8 (surrogates): shown as U+FFFD
    return html.escape(text_path(value) if isinstance(value, (bytes, Path, str)) else str(value), quote=True)


class Pages:
    def __init__(self, token: str) -> None:
        self.token = token

    def url(self, route: str, **params: object) -> str:
        query = {k: (text_path(v) if isinstance(v, Path) else str(v)) for k, v in params.items() if v is not None}
        query["token"] = self.token
        return esc(f"{route}?{urlencode(query)}")

    def page(self, title: str, body: str) -> str:
        nav = (
            f'<nav><span class="brand">rtagx review</span><a href="{self.url("/")}">Tags</a>'
            f'<a href="{self.url("/folders")}">Folders</a><a href="{self.url("/plan")}">Next retag</a>'
            f'<form method="get" action="/search"><input type="hidden" name="token" value="{esc(self.token)}">'
            '<input type="search" name="q" placeholder="search photos by text" aria-label="search"></form></nav>'
        )
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="rtagx-token" content="{esc(self.token)}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>{esc(title)} · rtagx review</title><style>{CSS}</style></head><body>"
            f'{nav}{body}<div id="status" role="status"></div>'
            f'<script src="{self.url("/static/review.js")}"></script></body></html>'
        )

    def thumb(self, photo: Photo, size: int = 256) -> str:
        return (
            f'<img loading="lazy" alt="{esc(photo.path.name)}" src="{self.url("/thumb", path=photo.path, size=size)}">'
        )

    # -- views ----------------------------------------------------------------------------------
    def index(self, tags: Sequence[tuple[str, int | None, float]], photos: int | None, roots: Sequence[Path]) -> str:
        rows = "".join(
            f'<tr><td><a href="{self.url("/tag", name=t)}">{esc(t)}</a></td>'
            f"<td>{'counting...' if n is None else n}</td><td>{thr:.4f}</td></tr>"
            for t, n, thr in tags
        )
        body = (
            f"<h1>Tags</h1><p class='meta'>{'(still listing the)' if photos is None else photos} photos under {esc(', '.join(map(text_path, roots)))}</p>"
            f"<table><tr><th>tag</th><th>photos at or above threshold</th><th>threshold</th></tr>{rows}</table>"
        )
        return self.page("Tags", body)

    def card(self, item: GridItem, tag: str) -> str:
        p = item.photo
        state = (
            "accepted" if item.decision > 0 else "rejected" if item.decision < 0 else "written" if item.written else ""
        )
        return (
            f'<div class="card" tabindex="-1" data-path="{esc(p.path)}" data-tag="{esc(tag)}" '
            f'data-decision="{item.decision}" data-written="{int(item.written)}" data-score="{item.score:.4f}">'
            f'<a class="open" href="{self.url("/photo", path=p.path)}">{self.thumb(p)}</a>'
            f'<div class="info"><div class="name" title="{esc(p.path)}">{esc(p.path.name)}</div>'
            f'<div class="row"><span class="score">{item.score:.4f}</span><span class="state">{state}</span></div>'
            '<div class="row"><label><input type="checkbox" class="pick"> select</label>'
            '<span><button class="ok" data-decision="1" title="accept (a)">&#10003;</button> '
            '<button class="no" data-decision="-1" title="reject (r)">&#10007;</button></span></div></div></div>'
        )

    def tag_grid(self, grid: TagGrid) -> str:
        cards: list[str] = []
        line = (
            f'<div class="threshold" id="threshold-line">threshold {grid.threshold:.4f}: '
            f"{grid.above} photos at or above, {grid.total - grid.above} below</div>"
        )
        placed = False
        for item in grid.items:
            if not placed and item.score < grid.threshold:
                cards.append(line)
                placed = True
            cards.append(self.card(item, grid.tag))
        if not placed and grid.page == grid.pages - 1:
            cards.append(line)
            placed = True
        where = "" if placed else f" (the threshold line is on page {grid.above // max(len(grid.items), 1) + 1})"
        body = (
            f"<h1>{esc(grid.tag)}</h1><p class='meta'>{grid.total} photos by score, page {grid.page + 1} of "
            f"{grid.pages}; threshold {grid.threshold:.4f}{esc(where)}</p>"
            f"<p>{self.pager('/tag', grid.page, grid.pages, name=grid.tag)} "
            '<button class="ok" data-scope="selection" data-decision="1">accept selected</button> '
            '<button class="no" data-scope="selection" data-decision="-1">reject selected</button> '
            f'<span class="keys">{esc(KEYS)}</span></p>'
            f'<div class="grid">{"".join(cards)}</div>{self.pager("/tag", grid.page, grid.pages, name=grid.tag)}'
        )
        return self.page(grid.tag, body)

    def pager(self, route: str, page: int, pages: int, **params: object) -> str:
        parts = []
        if page > 0:
            parts.append(f'<a rel="prev" href="{self.url(route, page=page - 1, **params)}">&larr; previous</a>')
        parts.append(f"<span class='dim'>page {page + 1} / {pages}</span>")
        if page + 1 < pages:
            parts.append(f'<a rel="next" href="{self.url(route, page=page + 1, **params)}">next &rarr;</a>')
        return f'<span class="pager">{"".join(parts)}</span>'

    def photo(self, view: PhotoView, vocabulary: Sequence[str]) -> str:
        p = view.photo
        e = view.explanation
        written = {k.casefold() for k in view.written}

        def mark(ok: bool | None) -> str:
            if ok is None:
                return "<td class='dim'>-</td>"
            return "<td class='pass'>pass</td>" if ok else "<td class='fail'>fail</td>"

        rows = []
        for v in e.verdicts:
            d = view.decisions.get(v.keyword.casefold(), 0)
            w = v.keyword.casefold() in written
            state = "accepted" if d > 0 else "rejected" if d < 0 else "written" if w else ""
            rows.append(
                f'<tr class="card" data-path="{esc(p.path)}" data-tag="{esc(v.keyword)}" data-decision="{d}" '
                f'data-written="{int(w)}"><td>{v.rank}</td><td><a href="{self.url("/tag", name=v.keyword)}">'
                f"{esc(v.keyword)}</a></td><td>{v.score:.4f}</td><td>{v.threshold:.4f}</td>"
                f"{mark(v.passed_threshold)}{mark(v.passed_margin)}{mark(v.passed_share)}"
                f"{mark(None if v.group is None else v.group_winner is None)}{mark(not v.never)}"
                f"<td>{'yes' if v.chosen else ''}</td><td class='state'>{state}</td><td>{esc(v.reason)}</td>"
                '<td><input type="checkbox" class="pick"> <button class="ok" data-decision="1">&#10003;</button> '
                '<button class="no" data-decision="-1">&#10007;</button></td></tr>'
            )
        options = "".join(f"<option>{esc(t)}</option>" for t in vocabulary)
        body = (
            f"<h1>{esc(p.path.name)}</h1><p class='meta'>{esc(p.path)} &middot; "
            f'<a href="{self.url("/folder", path=p.path.parent)}">folder</a> &middot; keywords rtagx wrote: '
            f"{esc(', '.join(view.written) or 'none')}</p>"
            f'<div class="photo"><img alt="{esc(p.path.name)}" src="{self.url("/thumb", path=p.path, size=768)}">'
            f'<div><p data-path="{esc(p.path)}">add a tag from the vocabulary as your own keyword '
            f'(no rtagx run removes it): <select id="add-tag-name">{options}'
            '</select> <button id="add-tag">add</button></p>'
            f"<p class='keys'>{esc(KEYS)}</p>"
            "<table><tr><th>#</th><th>tag</th><th>score</th><th>threshold</th><th>threshold cut</th><th>margin</th>"
            "<th>share</th><th>group</th><th>never-list</th><th>chosen</th><th>state</th><th>why</th><th></th></tr>"
            f"{''.join(rows)}</table></div></div>"
        )
        return self.page(p.path.name, body)

    def folder(self, view: FolderView) -> str:
        subs = "".join(
            f'<li><a href="{self.url("/folder", path=s)}">{esc(s.name)}/</a> <span class="dim">{n}</span></li>'
            for s, n in view.subfolders
        )
        cards = "".join(
            f'<div class="card" data-folder-photo="{esc(p.path)}"><a class="open" href="{self.url("/photo", path=p.path)}">'
            f'{self.thumb(p)}</a><div class="info"><div class="name">{esc(p.path.name)}</div>'
            f'<div class="dim">{esc(", ".join(kw) or "no keywords from rtagx")}</div></div></div>'
            for p, kw in view.photos
        )
        body = (
            f"<h1>{esc(view.folder)}</h1><ul>{subs}</ul>"
            f"<p>{self.pager('/folder', view.page, view.pages, path=view.folder)}</p><div class='grid'>{cards}</div>"
        )
        return self.page(text_path(view.folder), body)

    def search(self, text: str, hits: Sequence[tuple[Photo, float]], error: str | None = None) -> str:
        cards = "".join(
            f'<div class="card" data-hit="{esc(p.path)}"><a class="open" href="{self.url("/photo", path=p.path)}">'
            f'{self.thumb(p)}</a><div class="info"><div class="name">{esc(p.path.name)}</div>'
            f'<div class="dim">{score:.4f}</div></div></div>'
            for p, score in hits
        )
        note = esc(error) if error else f"{len(hits)} best matches under the reviewed folders"
        body = f"<h1>Search: {esc(text)}</h1><p class='meta'>{note}</p><div class='grid'>{cards}</div>"
        return self.page(f"Search {text}", body)

    def folders(self, roots: Sequence[Path]) -> str:
        items = "".join(f'<li><a href="{self.url("/folder", path=r)}">{esc(r)}</a></li>' for r in roots)
        return self.page("Folders", f"<h1>Folders</h1><ul>{items}</ul>")

    def plan(self, outcomes: Sequence[FileOutcome]) -> str:
        rows = "".join(
            f'<tr data-plan-path="{esc(o.path)}"><td><a href="{self.url("/photo", path=o.path)}">{esc(o.path)}</a></td>'
            f"<td>{esc(o.action)}</td><td class='pass'>{esc(', '.join(o.added))}</td>"
            f"<td class='fail'>{esc(', '.join(o.removed))}</td><td class='dim'>{esc(o.reason or '')}</td></tr>"
            for o in outcomes
        )
        body = (
            "<h1>What the next retag would change</h1>"
            f"<p class='meta'>{len(outcomes)} files would change (a dry run: nothing is written until you apply).</p>"
            f'<p><button id="apply" class="ok"{" disabled" if not outcomes else ""}>apply</button></p>'
            f'<table id="plan"><tr><th>file</th><th>action</th><th>added</th><th>removed</th><th></th></tr>{rows}</table>'
        )
        return self.page("Next retag", body)
