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
