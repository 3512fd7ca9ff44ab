"""The one exception type for user errors."""

from __future__ import annotations


class M3Error(RuntimeError):
    """A user-facing error (bad input, config or a missing file): one line naming the file, the
    cause and the fix. The CLI prints it without a traceback and exits with status 2.

    Caller bugs (wrong shapes, wrong types) raise ``ValueError`` / ``TypeError`` instead, so that
    their traceback shows.
    """
