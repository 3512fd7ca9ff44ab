"""Where things are: the repository root and the real photo sets shared beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_SCENES = REPO.parent / "shared" / "scenes"
