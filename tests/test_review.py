"""`rtagx review`: corrections kept in the cache by content and honoured by tag/retag, the local
service's safety rules over plain HTTP, and the whole loop in headless Chromium (browse, reject,
accept, apply), with exiftool reading the keywords back."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtagx.cli.commands import cli

pytest.importorskip("starlette", reason="pip install 'rtagx[review]'")
pytest.importorskip("uvicorn", reason="pip install 'rtagx[review]'")

from rtagx.review.app import ReviewServer
from rtagx.review.library import ReviewLibrary

NAMES = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Fujifilm_FinePix_E500.jpg"]


def rtagx(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def keywords(path: Path) -> list[str]:
    out = subprocess.run(
        ["exiftool", "-j", "-Keywords", "-Subject", str(path)], check=True, capture_output=True, text=True
    )
    data = json.loads(out.stdout)[0]
    kw = data.get("Subject", [])
    return [kw] if isinstance(kw, str) else list(kw)


@pytest.fixture
def tagged(tmp_path, tiny_clip, samples_dir) -> dict:
    """Four camera photos (one in a subfolder) tagged with their two best tags of four, a secret file
    beside the root and a symlink inside the root pointing out of it."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in NAMES[:3]:
        shutil.copy2(samples_dir / "jpg" / name, photos / name)
    shutil.copy2(samples_dir / "jpg" / NAMES[3], photos / "sub" / NAMES[3])
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", outside / "private.jpg")
    (tmp_path / "secret.txt").write_text("not for the browser\n")
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\ncar\nbeach\n", encoding="utf-8")
    cache = tmp_path / "cache.sqlite3"
    cfg, ckpt = tiny_clip
    args = ["--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache), "--tags", str(vocab)]
    code, out = rtagx("tag", str(photos), *args, "--threshold", "-1", "--top-k", "2", "--yes", "-q")
    assert code == 0, out
    # a symlink out of the root, tagged too (tag follows it): review must still refuse to serve it
    os.symlink(outside / "private.jpg", photos / "link.jpg")
    code, out = rtagx("tag", str(photos / "link.jpg"), *args, "--write", "none", "--yes", "-q")
    assert code == 0, out
    return {"photos": photos, "cache": cache, "outside": outside, "tmp": tmp_path, "args": args}


def start(tagged: dict, **overrides: object) -> ReviewServer:
    library = ReviewLibrary([tagged["photos"]], {"cache": str(tagged["cache"]), **overrides})
    server = ReviewServer(library)
    server.start()
    return server


@pytest.fixture
def server(tagged):
    srv = start(tagged)
    yield srv
    srv.stop()


def request(
    server: ReviewServer, method: str, target: str, *, body: object = None, headers: dict | None = None
) -> tuple[int, bytes]:
    """A plain HTTP request, the target sent as given (no normalization of `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, target, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    out = (resp.status, resp.read())
    conn.close()
    return out


def q(**params: object) -> str:
    return urllib.parse.urlencode({k: str(v) for k, v in params.items()})


# -- corrections as data ------------------------------------------------------------------------


def test_a_rejected_tag_is_never_written_again_and_an_accepted_one_stays(tagged):
    photos, cache = tagged["photos"], tagged["cache"]
    canon, nikon = photos / "Canon_40D.jpg", photos / "Nikon_D70.jpg"
    before = keywords(canon)
    assert len(before) == 2
    rejected = before[0]
    unwanted = next(t for t in ["dog", "cat", "car", "beach"] if t not in keywords(nikon))
    library = ReviewLibrary([photos], {"cache": str(cache)})
    outcomes = library.decide([library.photo_for(str(canon))], rejected, -1)
    assert [o.removed for o in outcomes] == [[rejected]]
    assert rejected not in keywords(canon)
    library.decide([library.photo_for(str(nikon))], unwanted, 1)
    assert unwanted in keywords(nikon)
    # a retag that selects every tag does not bring the rejected tag back
    code, out = rtagx("retag", str(photos), "--cache", str(cache), "--threshold", "-1", "--top-k", "0", "--yes", "-q")
    assert code == 0, out
    assert rejected not in keywords(canon) and len(keywords(canon)) == 3
    # a retag whose threshold drops every tag keeps the accepted one
    code, out = rtagx("retag", str(photos), "--cache", str(cache), "--threshold", "0.99", "--yes", "-q")
    assert code == 0, out
    assert keywords(nikon) == [unwanted] and keywords(canon) == []
    # decisions follow the content: a renamed copy elsewhere under the root keeps them
    os.rename(canon, photos / "sub" / "renamed.jpg")
    code, out = rtagx("tag", str(photos), *tagged["args"], "--threshold", "-1", "--top-k", "0", "--yes", "-q")
    assert code == 0, out
    assert rejected not in keywords(photos / "sub" / "renamed.jpg")
    assert len(keywords(photos / "sub" / "renamed.jpg")) == 3


def test_a_tag_added_by_hand_is_the_persons_keyword(tagged, server):
    photos, cache = tagged["photos"], tagged["cache"]
    canon, nikon = photos / "Canon_40D.jpg", photos / "Nikon_D70.jpg"
    mine = next(t for t in ["dog", "cat", "car", "beach"] if t not in keywords(nikon))
    handed_over = keywords(canon)[0]  # rtagx wrote it; the person adds it too: it becomes theirs
    for path, tag in ((nikon, mine), (canon, handed_over)):
        status, body = request(
            server,
            "POST",
            "/api/add",
            body={"paths": [str(path)], "tag": tag},
            headers={"X-Rtagx-Token": server.token, "Origin": server.origin},
        )
        assert status == 200, body
        assert tag in keywords(path)
    for path, tag in ((nikon, mine), (canon, handed_over)):  # not in rtagx's record of what it wrote
        out = subprocess.run(["exiftool", "-j", "-XMP-rtagx:Keywords", str(path)], check=True, capture_output=True)
        assert tag not in json.loads(out.stdout)[0].get("Keywords", [])
    # neither untag nor a retag that drops every tag removes them
    code, out = rtagx("untag", str(photos), "--cache", str(cache), "-q")
    assert code == 0, out
    assert keywords(nikon) == [mine] and keywords(canon) == [handed_over]
    code, out = rtagx("retag", str(photos), "--cache", str(cache), "--threshold", "0.99", "--yes", "-q")
    assert code == 0, out
    assert mine in keywords(nikon) and handed_over in keywords(canon)
    code, out = rtagx("untag", str(photos), "--cache", str(cache), "-q")
    assert code == 0, out
    assert keywords(nikon) == [mine] and keywords(canon) == [handed_over]


def test_calibrate_from_reviews_fits_thresholds_on_the_decisions(tagged):
    photos, cache = tagged["photos"], tagged["cache"]
    library = ReviewLibrary([photos], {"cache": str(cache)})
    grid = library.tag_grid("cat")
    ranked = [i.photo for i in grid.items]  # best first
    scores = [i.score for i in grid.items]
    library.decide(ranked[:2], "cat", 1)
    library.decide(ranked[2:], "cat", -1)
    out = tagged["tmp"] / "calibrated.txt"
    code, text = rtagx("calibrate", "--from-reviews", "--min-support", "3", "-o", str(out), "--cache", str(cache))
    assert code == 0, text
    line = next(x for x in text.splitlines() if x.strip().startswith("cat "))
    # at the old threshold (-1: every tag) precision was 0.5; the fitted one separates the decisions
    assert "precision 0.50 -> 1.00" in line and "recall 1.00 -> 1.00" in line, line
    assert line.rstrip().endswith("(2 accepted, 2 rejected)"), line
    from rtagx.tags.vocab import load_vocabulary

    fitted = {t.keyword: t.threshold for t in load_vocabulary(str(out)).tags}
    assert fitted["cat"] is not None and scores[2] < fitted["cat"] <= scores[1]
    assert fitted["dog"] is None  # no decisions: unchanged
    code, text = rtagx("calibrate", "--from-reviews", "-o", str(out), "--cache", str(tagged["tmp"] / "none.sqlite3"))
    assert code != 0


# -- the local service over plain HTTP ----------------------------------------------------------


def test_every_request_needs_the_token(server, tagged):
    canon = tagged["photos"] / "Canon_40D.jpg"
    assert request(server, "GET", "/")[0] == 403
    assert request(server, "GET", "/?token=wrong")[0] == 403
    assert request(server, "GET", f"/thumb?{q(path=canon)}")[0] == 403
    assert request(server, "GET", f"/thumb?{q(path=canon, token=server.token[:-1])}")[0] == 403
    assert request(server, "GET", f"/?{q(token=server.token)}")[0] == 200
    status, body = request(server, "GET", f"/thumb?{q(path=canon, token=server.token)}")
    assert status == 200 and body[:2] == b"\xff\xd8"
    # a page served from the review address names only the loopback: another Host header is refused
    assert request(server, "GET", f"/?{q(token=server.token)}", headers={"Host": "evil.example"})[0] == 403


def test_no_path_outside_the_reviewed_roots_is_served(server, tagged):
    photos, tmp, t = tagged["photos"], tagged["tmp"], server.token
    refused = [
        f"{photos}/../secret.txt",
        f"{photos}/sub/../../secret.txt",
        str(tmp / "secret.txt"),
        str(tagged["outside"] / "private.jpg"),
        str(photos / "link.jpg"),  # a symlink out of the root, even though it is in the cache
        "/etc/passwd",
        "../secret.txt",
        "Canon_40D.jpg",
    ]
    for target in refused:
        for route in ("/thumb", "/photo"):
            status, body = request(server, "GET", f"{route}?{q(path=target, token=t)}")
            assert status == 404, (route, target, status)
            assert b"not for the browser" not in body and b"root:" not in body
    for target in (f"{photos}/..", str(tmp), "/"):
        assert request(server, "GET", f"/folder?{q(path=target, token=t)}")[0] == 404
    # `..` in the request path itself, raw and encoded
    for raw in ("/static/../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt", "/../../etc/passwd"):
        status, body = request(server, "GET", f"{raw}?{q(token=t)}")
        assert status == 404 and b"not for the browser" not in body
    status, _ = request(
        server,
        "POST",
        "/api/decide",
        body={"paths": [f"{photos}/../outside/private.jpg"], "tag": "dog", "decision": -1},
        headers={"X-Rtagx-Token": t, "Origin": server.origin},
    )
    assert status == 404


def test_changes_need_post_the_token_header_and_our_origin(server, tagged):
    canon = str(tagged["photos"] / "Canon_40D.jpg")
    before = keywords(Path(canon))
    tag = before[0]
    body = {"paths": [canon], "tag": tag, "decision": -1}
    t = server.token
    cases = [
        ("no token", {"Origin": server.origin}),
        ("wrong token", {"X-Rtagx-Token": "x" * len(t), "Origin": server.origin}),
        ("foreign origin", {"X-Rtagx-Token": t, "Origin": "http://evil.example"}),
        ("other port", {"X-Rtagx-Token": t, "Origin": f"http://127.0.0.1:{server.port + 1}"}),
        ("no origin", {"X-Rtagx-Token": t}),
        ("foreign referer", {"X-Rtagx-Token": t, "Referer": "http://evil.example/page"}),
    ]
    for name, headers in cases:
        assert request(server, "POST", "/api/decide", body=body, headers=headers)[0] == 403, name
    # the token in the query string does not do for a POST (a cross-site form could carry it)
    status, _ = request(server, "POST", f"/api/decide?{q(token=t)}", body=body, headers={"Origin": server.origin})
    assert status == 403
    assert (
        request(server, "POST", "/api/apply", headers={"Origin": "http://evil.example", "X-Rtagx-Token": t})[0] == 403
    )
    # a GET never changes anything
    assert request(server, "GET", f"/api/decide?{q(token=t)}")[0] == 405
    assert keywords(Path(canon)) == before
    status, out = request(
        server, "POST", "/api/decide", body=body, headers={"X-Rtagx-Token": t, "Origin": server.origin}
    )
    assert status == 200, out
    assert json.loads(out)["files"][canon]["removed"] == [tag]
    assert tag not in keywords(Path(canon))


def test_the_first_page_is_served_while_the_photos_still_load(tagged, monkeypatch):
    import threading

    release = threading.Event()
    load = ReviewLibrary._load_photos

    def slow_load(self: ReviewLibrary) -> None:
        release.wait(30)
        load(self)

    monkeypatch.setattr(ReviewLibrary, "_load_photos", slow_load)
    server = start(tagged)
    try:
        status, body = request(server, "GET", f"/?{q(token=server.token)}")
        assert status == 200 and b"still listing" in body and b">dog<" in body
        assert request(server, "GET", f"/?{q(token='wrong')}")[0] == 403
        release.set()  # a page that needs the photos waits for them, then is served in full
        canon = tagged["photos"] / "Canon_40D.jpg"
        status, body = request(server, "GET", f"/photo?{q(path=canon, token=server.token)}")
        assert status == 200 and b"Canon_40D.jpg" in body
        status, body = request(server, "GET", f"/?{q(token=server.token)}")
        assert b"4 photos" in body  # the symlink out of the root is not one of them
    finally:
        release.set()
        server.stop()


def test_grid_pages_are_sorted_by_score_with_the_threshold_line(server, tagged):
    library = ReviewLibrary([tagged["photos"]], {"cache": str(tagged["cache"])})
    grid = library.tag_grid("cat", per_page=2)
    assert grid.total == 4 and grid.pages == 2  # the cached symlink out of the root is not listed
    scores = [i.score for p in range(2) for i in library.tag_grid("cat", p, per_page=2).items]
    assert scores == sorted(scores, reverse=True)
    status, body = request(server, "GET", f"/tag?{q(name='cat', token=server.token)}")
    assert status == 200 and b'id="threshold-line"' in body
    # thumbnails are cached on disk by content, and the cache is bounded
    library.thumbnail(library.photo_for(str(tagged["photos"] / "Canon_40D.jpg")), 256)
    assert any(library.thumbs_dir.iterdir())
    small = ReviewLibrary(
        [tagged["photos"]], {"cache": str(tagged["cache"])}, thumbs_dir=tagged["tmp"] / "t", thumb_budget=1
    )
    for name in NAMES[:3]:
        assert small.thumbnail(small.photo_for(str(tagged["photos"] / name)), 256)
    assert len(list((tagged["tmp"] / "t").iterdir())) <= 1
    # `cache prune` empties the review thumbnails (made again on demand)
    code, out = rtagx("cache", "prune", "--cache", str(tagged["cache"]))
    assert code == 0 and "review thumbnails" in out, out
    assert not any(library.thumbs_dir.iterdir())


# -- the whole loop in headless Chromium -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no browser download: the system one)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


def card(page, path: Path):
    return page.locator(f'.card[data-path="{path}"]')


def images_shown(page) -> list[list]:
    return page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src])")


def test_browse_reject_accept_and_apply_in_chromium(tagged, browser, tmp_path):
    photos, cache = tagged["photos"], tagged["cache"]
    canon, nikon, pentax = photos / "Canon_40D.jpg", photos / "Nikon_D70.jpg", photos / "Pentax_K10D.jpg"
    rejected = keywords(canon)[0]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    server = start(tagged)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(server.url)
        page.screenshot(path=shots / "1-tags.png")
        page.click(f'a:text-is("{rejected}")')
        page.wait_for_load_state("load")
        assert page.locator("#threshold-line").is_visible()
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert len(images_shown(page)) == 4
        scores = [float(s) for s in page.locator(".card[data-path]").evaluate_all("cs => cs.map(c => c.dataset.score)")]
        assert scores == sorted(scores, reverse=True)
        page.screenshot(path=shots / "2-tag-grid.png", full_page=True)

        # reject with the button: the keyword leaves the file
        card(page, canon).locator("button[data-decision='-1']").click()
        page.wait_for_function(
            f"() => document.querySelector('.card[data-path=\"{canon}\"]').dataset.decision === '-1'"
        )
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('done')")
        assert rejected not in keywords(canon)
        assert card(page, canon).get_attribute("data-written") == "0"

        # accept a selection with the keyboard, on the grid of a tag neither photo has yet
        others = [nikon, pentax]
        chosen_tag = next(t for t in ["dog", "cat", "car", "beach"] if all(t not in keywords(p) for p in others))
        page.goto(f"{server.origin}/tag?{q(name=chosen_tag, token=server.token)}")
        for p in others:
            card(page, p).locator("input.pick").check()
        page.keyboard.press("a")
        for p in others:
            page.wait_for_function(f"() => document.querySelector('.card[data-path=\"{p}\"]').dataset.decision === '1'")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('done')")
        for p in others:
            assert chosen_tag in keywords(p)
            assert card(page, p).get_attribute("data-written") == "1"
        assert card(page, canon).get_attribute("data-decision") == "0"  # not selected: untouched
        page.screenshot(path=shots / "3-decided.png", full_page=True)

        # the photo view: every candidate tag with its score and cuts; add a tag from the vocabulary
        page.goto(f"{server.origin}/photo?{q(path=nikon, token=server.token)}")
        assert page.locator("tr.card").count() == 4
        missing = next(t for t in ["dog", "cat", "car", "beach"] if t not in keywords(nikon))
        page.select_option("#add-tag-name", missing)
        with page.expect_navigation():
            page.click("#add-tag")
        assert missing in keywords(nikon)
        assert page.locator(f'tr.card[data-tag="{missing}"]').get_attribute("data-decision") == "1"
        page.screenshot(path=shots / "4-photo.png", full_page=True)

        # the folder view lists the subfolder and its photos
        page.goto(f"{server.origin}/folder?{q(path=photos, token=server.token)}")
        assert page.locator('a:text-is("sub/")').count() == 1
    finally:
        server.stop()

    # a retag that would select every tag does not bring the rejected one back
    code, out = rtagx("retag", str(photos), "--cache", str(cache), "--threshold", "-1", "--top-k", "0", "--yes", "-q")
    assert code == 0, out
    assert rejected not in keywords(canon) and len(keywords(canon)) == 3

    # the dry run of the next retag at a higher threshold, applied from the page
    server = start(tagged, threshold=0.99)
    try:
        page.goto(f"{server.origin}/plan?{q(token=server.token)}")
        planned = page.locator("tr[data-plan-path]").evaluate_all("rs => rs.map(r => r.dataset.planPath)")
        assert str(canon) in planned and str(nikon) in planned
        assert keywords(canon) != []  # a dry run writes nothing
        page.screenshot(path=shots / "5-plan.png", full_page=True)
        page.click("#apply")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('applied')")
    finally:
        server.stop()
        page.close()
    assert keywords(canon) == []  # nothing accepted there: every tag dropped at 0.99
    assert sorted(keywords(nikon)) == sorted([chosen_tag, missing])  # accepted ones stay at 0.99


def test_foreign_pages_and_bad_addresses_are_refused_in_chromium(tagged, browser, tmp_path):
    photos = tagged["photos"]
    canon = photos / "Canon_40D.jpg"
    before = keywords(canon)
    server = start(tagged)
    page = browser.new_page()
    try:
        # no token, a wrong token, a path out of the root: refused pages
        for target, status in [
            ("/", 403),
            ("/?token=nope", 403),
            (f"/thumb?{q(path=f'{photos}/../secret.txt', token=server.token)}", 404),
            (f"/photo?{q(path=tagged['outside'] / 'private.jpg', token=server.token)}", 404),
        ]:
            response = page.goto(server.origin + target)
            assert response is not None and response.status == status, target
            assert "not for the browser" not in page.content()
        # a page on another origin that knows the token still cannot change anything
        page.route(
            "http://evil.test/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body="<html><body>evil</body></html>"),
        )
        page.goto("http://evil.test/")
        outcome = page.evaluate(
            """async ([origin, token, path, tag]) => {
                const out = [];
                const body = JSON.stringify({paths: [path], tag: tag, decision: -1});
                try {
                  const r = await fetch(origin + "/api/decide", {method: "POST", body,
                      headers: {"Content-Type": "application/json", "X-Rtagx-Token": token}});
                  out.push(r.status);
                } catch (e) { out.push("blocked"); }
                try {
                  const r = await fetch(origin + "/api/decide?token=" + token, {method: "POST", mode: "no-cors", body,
                      headers: {"Content-Type": "text/plain"}});
                  out.push(r.type);
                } catch (e) { out.push("blocked"); }
                return out;
            }""",
            [server.origin, server.token, str(canon), before[0]],
        )
        assert outcome[0] == "blocked"  # the preflight is refused, so the request is never sent
        page.screenshot(path=tmp_path / "foreign.png")
    finally:
        server.stop()
        page.close()
    assert keywords(canon) == before


def test_decisions_apply_to_the_chosen_tags_case_insensitively():
    import numpy as np

    from rtagx.tags.reviews import apply_decisions
    from rtagx.tags.scoring import ChosenTag
    from rtagx.tags.vocab import parse_vocabulary

    vocab = parse_vocabulary("dog\ncat\ncar\n")
    scores = np.array([0.3, 0.2, 0.1], dtype=np.float32)
    chosen = [ChosenTag(vocab.tags[0], 0.3), ChosenTag(vocab.tags[1], 0.2)]
    out = apply_decisions(chosen, scores, vocab, {"Dog": -1, "CAR": 1, "bird": 1})
    assert [(c.tag.keyword, c.score) for c in out] == [("cat", 0.2), ("car", pytest.approx(0.1))]
    assert apply_decisions(chosen, scores, vocab, {}) == chosen


def test_a_decision_reaches_every_copy_of_the_photo(tagged):
    photos, cache = tagged["photos"], tagged["cache"]
    canon = photos / "Canon_40D.jpg"
    shutil.copy2(canon, photos / "sub" / "copy.jpg")
    code, out = rtagx("tag", str(photos), *tagged["args"], "--threshold", "-1", "--top-k", "2", "--yes", "-q")
    assert code == 0, out
    tag = keywords(canon)[0]
    assert tag in keywords(photos / "sub" / "copy.jpg")
    library = ReviewLibrary([photos], {"cache": str(cache)})
    library.decide([library.photo_for(str(canon))], tag, -1)
    assert tag not in keywords(canon) and tag not in keywords(photos / "sub" / "copy.jpg")
    # and a plain `tag` run (which settles unchanged files without reading them) leaves both alone
    code, out = rtagx("tag", str(photos), *tagged["args"], "--threshold", "-1", "--top-k", "2", "--yes", "-q")
    assert code == 0, out
    assert tag not in keywords(canon) and tag not in keywords(photos / "sub" / "copy.jpg")


def test_tag_on_another_folder_drops_a_rejected_tag_from_a_copy_there(tagged, tmp_path):
    photos, cache = tagged["photos"], tagged["cache"]
    canon = photos / "Canon_40D.jpg"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(canon, elsewhere / "copy.jpg")
    opts = ("--threshold", "-1", "--top-k", "2", "--yes", "-q")
    code, out = rtagx("tag", str(elsewhere), *tagged["args"], *opts)
    assert code == 0, out
    tag = keywords(canon)[0]
    assert tag in keywords(elsewhere / "copy.jpg")
    library = ReviewLibrary([photos], {"cache": str(cache)})
    library.decide([library.photo_for(str(canon))], tag, -1)
    assert tag in keywords(elsewhere / "copy.jpg")  # not reviewed there: untouched by the review
    # the next `tag` of that folder, with unchanged settings, does not settle the copy unread
    code, out = rtagx("tag", str(elsewhere), *tagged["args"], *opts)
    assert code == 0, out
    assert tag not in keywords(elsewhere / "copy.jpg")


def test_search_box_finds_reviewed_photos_by_text_only(server, tagged):
    t = server.token
    status, body = request(server, "GET", f"/search?{q(q='a dog on a beach', token=t)}")
    assert status == 200, body
    hits = body.count(b'data-hit="')
    assert hits == 4 and b"link.jpg" not in body  # the symlink out of the root is not a reviewed photo
    # a word naming an image file would be an image query read from disk: refused
    for words in (str(tagged["outside"] / "private.jpg"), "private.jpg", "~/x.png"):
        status, body = request(server, "GET", f"/search?{q(q=words, token=t)}")
        assert status == 400 and b'data-hit="' not in body
    assert request(server, "GET", f"/search?{q(q='dog')}")[0] == 403


def test_the_review_command_serves_on_loopback_with_a_token(tagged):
    import re
    import signal
    import sys
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "rtagx", "review", str(tagged["photos"]), "--cache", str(tagged["cache"])]
    proc = subprocess.Popen([*cmd, "--no-browser"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=([\w-]+))", line)
        assert match, line
        with urllib.request.urlopen(match.group(1), timeout=60) as r:
            assert r.status == 200 and b"rtagx review" in r.read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{match.group(2)}/", timeout=60)
        assert refused.value.code == 403
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_a_renamed_photo_is_reviewed_under_its_new_name_only(tagged):
    """The cache keeps a renamed photo's old path until `cache prune`: review neither lists that
    path nor lets it break a decision on the photo (its retag got the vanished path too: 409)."""
    photos = tagged["photos"]
    old, new = photos / "Canon_40D.jpg", photos / "sub" / "renamed.jpg"
    os.rename(old, new)
    code, out = rtagx("tag", str(photos), *tagged["args"], "--threshold", "-1", "--top-k", "2", "--yes", "-q")
    assert code == 0, out
    srv = start(tagged)
    try:
        status, _ = request(srv, "GET", f"/thumb?{q(path=old, token=srv.token)}")
        assert status == 404  # not listed: gone from disk
        tag = keywords(new)[0]
        status, out = request(
            srv,
            "POST",
            "/api/decide",
            body={"paths": [str(new)], "tag": tag, "decision": -1},
            headers={"X-Rtagx-Token": srv.token, "Origin": srv.origin},
        )
        assert status == 200, out
        assert json.loads(out)["files"][str(new)]["removed"] == [tag]
        assert tag not in keywords(new)
    finally:
        srv.stop()


def test_a_photo_deleted_after_the_listing_is_reported_not_written(tagged, server):
    """Deleted between the page and the click: the decision on a vanished file is a skip per file
    (never a retag of every root, never "written")."""
    photos = tagged["photos"]
    nikon = photos / "Nikon_D70.jpg"
    tag = keywords(nikon)[0]
    nikon.unlink()
    headers = {"X-Rtagx-Token": server.token, "Origin": server.origin}
    for endpoint, body in (
        ("/api/decide", {"paths": [str(nikon)], "tag": tag, "decision": 1}),
        ("/api/add", {"paths": [str(nikon)], "tag": tag}),
    ):
        status, out = request(server, "POST", endpoint, body=body, headers=headers)
        assert status == 200, (endpoint, out)
        files = json.loads(out)["files"]
        assert list(files) == [str(nikon)], (endpoint, files)
        assert files[str(nikon)]["action"] == "skipped" and files[str(nikon)]["written"] is False, (endpoint, files)


def test_a_decision_is_minus_one_zero_or_one_exactly(server, tagged):
    """0.5 is not "forget" and Infinity is not a server error: anything but -1, 0, 1 is a 400."""
    canon = str(tagged["photos"] / "Canon_40D.jpg")
    before = keywords(Path(canon))
    headers = {"X-Rtagx-Token": server.token, "Origin": server.origin, "Content-Type": "application/json"}
    for raw in ("0.5", "-0.9", "true", '"1"', "Infinity", "1e400", "null", "[1]"):
        body = f'{{"paths": [{json.dumps(canon)}], "tag": {json.dumps(before[0])}, "decision": {raw}}}'
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/api/decide", body=body.encode(), headers=headers)
        resp = conn.getresponse()
        assert resp.status == 400, (raw, resp.status, resp.read())
        conn.close()
    assert keywords(Path(canon)) == before


def test_review_of_every_tagged_folder_starts_when_one_is_gone(tagged, tmp_path):
    """`rtagx review` with no PATHS reviews what `tag` processed; a tagged folder since deleted (or
    on a drive not mounted now) is named on one line and left out, not a refusal to start."""
    import re
    import signal
    import sys
    import urllib.request

    gone = tmp_path / "card"
    gone.mkdir()
    shutil.copy2(tagged["photos"] / "Nikon_D70.jpg", gone / "x.jpg")
    code, out = rtagx("tag", str(gone), *tagged["args"], "--yes", "-q")
    assert code == 0, out
    shutil.rmtree(gone)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "rtagx", "review", "--cache", str(tagged["cache"]), "--no-browser"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(2)]
        assert str(gone) in lines[0] and "not on disk" in lines[0], lines
        match = re.search(r"(http://127\.0\.0\.1:(\d+)/\?token=([\w-]+))", lines[1])
        assert match, lines
        with urllib.request.urlopen(match.group(1), timeout=60) as r:
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_photos_whose_names_are_not_utf8_are_reviewed_like_any_other(tagged):
    """A name the file system allows but that is not UTF-8 (an old Latin-1 archive) is shown with
    U+FFFD, as `tag --json` prints it, and that shown name opens, thumbnails and decides the photo;
    it broke the tag grid, the folder page and search with a 500."""
    import re

    photos = tagged["photos"]
    folder = os.fsencode(photos) + b"/caf\xe9"
    os.mkdir(folder)
    shutil.copy2(photos / "Nikon_D70.jpg", folder + b"/\xe9t\xe9.jpg")
    shutil.copy2(photos / "Pentax_K10D.jpg", os.fsencode(photos) + b"/plage\xe0.jpg")
    code, out = rtagx("tag", str(photos), *tagged["args"], "--threshold", "-1", "--top-k", "2", "--yes", "-q")
    assert code == 0, out
    srv = start(tagged)
    try:
        t = srv.token
        shown = {str(photos / "caf\ufffd" / "\ufffdt\ufffd.jpg"), str(photos / "plage\ufffd.jpg")}
        links: set[str] = set()
        for target in (
            f"/tag?{q(name='dog', token=t)}",
            f"/folder?{q(path=photos, token=t)}",
            f"/search?{q(q='dog', token=t)}",
        ):
            status, body = request(srv, "GET", target)
            assert status == 200, (target, body[:300])
            links |= {m.replace("&amp;", "&") for m in re.findall(r'(?:href|src)="([^"]*path=[^"]*)"', body.decode())}
        for name in shown:
            assert any(urllib.parse.quote_plus(name) in link for link in links), name
        for link in links:
            status, body = request(srv, "GET", link)
            assert status == 200, (link, body[:200])
        tag = keywords(Path(os.fsdecode(os.fsencode(photos) + b"/plage\xe0.jpg")))[0]
        web = str(photos / "plage\ufffd.jpg")
        status, out = request(
            srv,
            "POST",
            "/api/decide",
            body={"paths": [web], "tag": tag, "decision": -1},
            headers={"X-Rtagx-Token": t, "Origin": srv.origin},
        )
        assert status == 200, out
        assert json.loads(out)["files"][web]["removed"] == [tag]
    finally:
        srv.stop()
