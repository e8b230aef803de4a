"""One small error hierarchy for the whole library.

The library never prints: it raises these, and the CLI turns each into a one-line message and a
documented exit code. Per-file problems (a corrupt image, an unwritable file) are not raised out of a
run; they are recorded as a skip with a stable ``reason`` code so that summaries and ``--json`` can
count them.
"""

from __future__ import annotations


class RtagxError(Exception):
    """Base class: a run that cannot start or go on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(RtagxError):
    """A bad option value or argument (exit code 2, like click's own usage errors)."""

    exit_code = 2


class VocabularyError(RtagxError):
    """A vocabulary file that cannot be used: empty, unreadable, or with a syntax error."""

    exit_code = 1


class ModelError(RtagxError):
    """The model cannot be built or its weights cannot be found."""

    exit_code = 1


class CacheError(RtagxError):
    """The vector cache cannot be opened, migrated or written."""

    exit_code = 1


class LockBusyError(CacheError):
    """Another rtagx process holds the cache's writer lock and we were told not to wait."""

    exit_code = 4


class ClusterError(RtagxError):
    """``--engine ray`` cannot run: Ray is not installed, the cluster cannot be reached, or the
    cluster failed the job (every batch received before is stored; a rerun embeds the rest)."""

    exit_code = 5


class FileSkip(Exception):
    """A single file cannot be processed. Never stops a run; counted under ``reason``.

    ``reason`` is a short stable code (``corrupt``, ``truncated``, ``empty``, ``not-an-image``,
    ``unsupported-format``, ``permission-denied``, ``missing``, ``too-large``, ``decode-timeout``,
    ``write-failed``, ``read-only``, ...); ``detail`` is a human sentence.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DecodeError(FileSkip):
    """An image file that cannot be decoded into model input."""


class MetadataError(FileSkip):
    """Keywords cannot be read from or written to a file (or its sidecar)."""
