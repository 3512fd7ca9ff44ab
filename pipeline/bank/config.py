"""Config of the ``bank`` stage (``params.yaml: bank.<model>``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.errors import M3Error


@dataclass(frozen=True)
class BankConfig:
    """``params.yaml: bank.<model>``: one model's PSC memory bank (every row within ``threshold``)."""

    threshold: float
    """Cosine every feature row must reach with some bank entry (1.0: exact duplicates removed only)."""
    chunk_rows: int = 4096
    """Rows per streamed chunk (search batch and greedy pass size; memory ~ 5 x chunk_rows^2 bytes)."""
    dtype: Literal["float16", "float32"] = "float16"
    """Stored bank dtype (rows and centres are compared after this cast)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """FAISS index device (auto: the GPU when faiss-gpu and CUDA are present)."""
    tolerance: float = 1.0e-5
    """fp32 cosine margin, so that coverage >= threshold survives any recomputation."""
    verify: bool = True
    """Extra pass measuring every row's exact best cosine against the final bank (-> stats)."""
    refine: int = 5
    """Re-centring passes before the final cover pass (entries move to the smallest cap around their
    rows, groups merge; 0: one pass, entries are input rows)."""
    merge_rows: int = 256
    """Evidence rows kept per entry (the farthest from it) to re-centre and merge entries between passes."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise M3Error(f"bank.threshold: {self.threshold} is not a cosine in [-1, 1]; fix it")
        if self.chunk_rows < 1:
            raise M3Error(f"bank.chunk_rows: {self.chunk_rows} must be >= 1; fix it")
        if self.refine < 0:
            raise M3Error(f"bank.refine: {self.refine} must be >= 0; fix it")
        if self.merge_rows < 1:
            raise M3Error(f"bank.merge_rows: {self.merge_rows} must be >= 1; fix it")
