"""The API's request bodies (pydantic, with bounds): a bad field is HTTP 422 naming it.

Query options left out (None) keep the server's ``params.yaml`` settings; those given override
them for this request (:meth:`QueryOptions.overrides`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT = 1000
"""Longest query text, question or region, in characters."""
MAX_DIM = 65536
"""Longest query vector."""
MAX_SIDE = 4096
"""Largest side of a rendered camera, in pixels."""

Text = Field(None, max_length=MAX_TEXT, description="what to look for, e.g. 'a yellow duck' (or give vector)")
Vector = Field(None, min_length=1, max_length=MAX_DIM, description="a raw query vector [d] (or give text)")


class QueryOptions(BaseModel):
    """Query settings of one request (each overrides ``params.yaml: query``, or ``export``)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Text
    vector: list[float] | None = Vector
    model: str | None = Field(None, max_length=100, description="model whose features to query")
    mode: Literal["canonical", "cosine"] | None = None
    threshold: float | None = Field(None, ge=-1.0, le=1.0, description="keep Gaussians at or above this relevance")
    top_k: int | None = Field(None, ge=1, le=1 << 30, description="or keep the k most relevant Gaussians")
    quantile: float | None = Field(None, ge=0.0, le=1.0, description="or keep those at or above this quantile")
    attention_k: int | None = Field(None, ge=1, le=1 << 20, description="sparse memory attention (k largest weights)")
    min_opacity: float | None = Field(None, ge=0.0, le=1.0)
    trim: float | None = Field(None, gt=0.0, le=1e6)

    def overrides(self) -> dict[str, Any]:
        """The config fields this request sets (text and vector aside)."""
        skip = {"text", "vector", "heatmaps", "relevance", "view", "camera", "what"}
        return {k: v for k, v in self.model_dump(exclude_none=True).items() if k not in skip}


class QueryRequest(QueryOptions):
    """``POST /scenes/{scene}/query``: the answer as ``m3 query``'s ``localization.json``."""

    views: list[str] | None = Field(None, max_length=64, description="heatmaps on these views (image names)")
    n_views: int | None = Field(None, ge=1, le=64, description="or on this many views spread over the scene")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="heatmap opacity at full relevance")
    heatmaps: bool = Field(
        False,
        description="render the heatmaps: {view: base64 PNG} (the CLI's PNG bytes) and the per-view figures of "
        "'views' (without: the 3D answer alone, 'views' empty, no render)",
    )
    relevance: bool = Field(False, description="add every Gaussian's relevance: base64 of little-endian float32 [N]")


class Camera(BaseModel):
    """A camera: world-to-camera ``viewmat [4, 4]`` (OpenCV axes, as COLMAP), intrinsics ``K [3, 3]``, size."""

    model_config = ConfigDict(extra="forbid")

    viewmat: list[list[float]] = Field(..., min_length=4, max_length=4)
    K: list[list[float]] = Field(..., min_length=3, max_length=3)
    width: int = Field(..., ge=1, le=MAX_SIDE)
    height: int = Field(..., ge=1, le=MAX_SIDE)


class RenderRequest(QueryOptions):
    """``POST /scenes/{scene}/render``: a PNG of a registered ``view`` or a ``camera``."""

    view: str | None = Field(None, max_length=1000, description="image name of a registered view (or camera)")
    camera: Camera | None = None
    what: Literal["rgb", "features", "relevance"] = Field("rgb", description="rgb | features (PCA) | relevance")
    alpha: float | None = Field(None, ge=0.0, le=1.0, description="heatmap opacity at full relevance (relevance)")


class AskRequest(BaseModel):
    """``POST /scenes/{scene}/ask``: a question about a registered view, answered by the memory's VLM."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., max_length=MAX_TEXT)
    view: str | None = Field(None, max_length=1000, description="image name of a registered view (default: the first)")
    region: str | None = Field(None, max_length=MAX_TEXT, description="a pixel box 'x0,y0,x1,y1' or a text")
