"""``rtagx review``: a local web app to look at the tags on photos and correct them.

``library.py`` is the data side (no HTTP: the cached vectors of the reviewed roots, grids, the
explain view, decisions, thumbnails, the retag plan); ``app.py`` is the Starlette app around it with
the local-service safety rules (loopback only, per-session token, POST + Origin check, paths only
from the reviewed roots); ``pages.py`` renders plain HTML."""
