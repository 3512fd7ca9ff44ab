"""Config of the ``bank`` stage (``params.yaml: bank.<model>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.config import Checked, Cosine, Count, Natural, NonNegative


@dataclass(frozen=True)
class BankConfig(Checked):
    """``params.yaml: bank.<model>``: one model's PSC memory bank (every row within ``threshold``)."""

    threshold: Cosine
    """Cosine every feature row must reach with some bank entry (1.0: exact duplicates removed only)."""
    chunk_rows: Count = 4096
    """Rows per streamed chunk (search batch and greedy pass size; memory ~ 5 x chunk_rows^2 bytes)."""
    dtype: Literal["float16", "float32"] = "float16"
    """Stored bank dtype (rows and centres are compared after this cast)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """FAISS index device (auto: the GPU when faiss-gpu and CUDA are present)."""
    tolerance: NonNegative = 1.0e-5
    """fp32 cosine margin, so that coverage >= threshold survives any recomputation."""
    verify: bool = True
    """Extra pass measuring every row's exact best cosine against the final bank (-> stats)."""
    refine: Natural = 5
    """Re-centring passes before the final cover pass (entries move to the smallest cap around their
    rows, groups merge; 0: one pass, entries are input rows)."""
    merge_rows: Count = 256
    """Evidence rows kept per entry (the farthest from it) to re-centre and merge entries between passes."""
