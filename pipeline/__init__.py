"""m3 library: everything reusable, nothing that knows about DVC or the CLI.

One package logger (``logging.getLogger("m3")``); modules log through children of it.
"""
from __future__ import annotations

import logging

logger = logging.getLogger("m3")


class M3Error(RuntimeError):
    """A user-facing error: one line naming the cause and the fix.

    The CLI prints it without a traceback and exits with status 2.
    """


__all__ = ["M3Error", "logger"]
