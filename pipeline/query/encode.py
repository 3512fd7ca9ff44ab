"""Ask a trained memory where something is: text or vector -> relevance in 2D and 3D.

A query is a vector ``q [d]`` in one stored model's feature space: a text encoded with that
model's own text tower (same checkpoint as the stored features, read from the feature store's
attrs), or a raw vector (tests, non-language models). Relevance of a feature ``f`` (a rendered
pixel, or one Gaussian's own query mapped through memory attention) is one of

* ``cosine``: ``cos(f, q)`` in ``[-1, 1]``;
* ``canonical`` (LERF): for each canonical negative phrase ``n`` ("object", "things", "stuff",
  "texture"), ``p_n = softmax(scale * [cos(f, q), cos(f, n)])[0]``; relevance is ``min_n p_n``
  in ``[0, 1]`` (0.5 = as close to the query as to the hardest negative). Needs the text tower
  for the negatives.

3D localisation (:func:`localize`) ranks Gaussians by relevance, keeps the top ones (top-k or a
quantile), drops outliers far from their median (robust trimming) and reports the
opacity-weighted centroid and the axis-aligned box of the rest in world coordinates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import M3Error
from pipeline.evaluate.config import CANONICAL_NEGATIVES

log = logging.getLogger(__name__)

Mode = Literal["canonical", "cosine"]


def model_conf_from_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The adapter conf that produced a feature store (so the text tower is the same checkpoint).

    Looks in ``attrs["provenance"]["config"]`` (the stage config), then ``attrs["model_conf"]``.
    """
    prov = attrs.get("provenance") or {}
    cfg = prov.get("config") if isinstance(prov, dict) else None
    for cand in (cfg.get("model") if isinstance(cfg, dict) else None, cfg, attrs.get("model_conf")):
        if isinstance(cand, dict) and cand:
            return dict(cand)
    raise M3Error("feature store attrs: no model config recorded; rerun the features stage")


@dataclass
class QueryVector:
    """A query in one model's space: ``query [d]``, ``negatives [k, d]`` (canonical mode)."""

    query: torch.Tensor
    negatives: torch.Tensor | None = None
    mode: Mode = "cosine"
    scale: float = 10.0
    text: str | None = None

    def __post_init__(self) -> None:
        self.query = torch.as_tensor(self.query, dtype=torch.float32).reshape(-1)
        if self.mode == "canonical" and (self.negatives is None or len(self.negatives) == 0):
            raise M3Error(
                "query: canonical mode needs negative phrases encoded by a text tower; "
                "use mode 'cosine' for raw vectors or models without text"
            )
        if self.negatives is not None:
            self.negatives = torch.as_tensor(self.negatives, dtype=torch.float32).reshape(-1, self.dim)

    @property
    def dim(self) -> int:
        return int(self.query.numel())

    def check_dim(self, dim: int) -> None:
        """:class:`M3Error` unless features of ``dim`` dims can be queried."""
        if dim != self.dim:
            raise M3Error(
                f"query: vector has {self.dim} dims but the features have {dim}; "
                "query with the model whose features were stored"
            )

    def phrases(self) -> torch.Tensor:
        """Unit query, then unit negatives (canonical mode): ``[1 + k, d]``."""
        rows = [self.query[None]] + ([self.negatives] if self.mode == "canonical" else [])
        return F.normalize(torch.cat(rows), dim=-1)

    def from_cosines(self, cos: torch.Tensor) -> torch.Tensor:
        """Relevance ``[...]`` from the cosines ``[..., 1 + k]`` of features with :meth:`phrases`."""
        pos = cos[..., 0]
        if self.mode == "cosine":
            return pos
        # min over n of softmax(scale [pos, n])[0] = sigmoid(scale (pos - n)) at the largest n
        return torch.sigmoid(self.scale * (pos - cos[..., 1:].amax(dim=-1)))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Relevance ``[...]`` of features ``[..., d]`` (see the module docstring)."""
        self.check_dim(features.shape[-1])
        f = F.normalize(features.float(), dim=-1)
        return self.from_cosines(f @ self.phrases().to(f.device).T)


def load_text_model(name: str, attrs: dict[str, Any], device: str = "cpu") -> Any:
    """Adapter ``name`` built with the conf recorded in its feature store ``attrs``."""
    from pipeline.features.models import build_model, model_class

    conf = model_conf_from_attrs(attrs)
    known = set(model_class(name).default_conf)
    return build_model(name, {k: v for k, v in conf.items() if k in known}, device)


@dataclass
class Localization:
    """Where a query is in 3D: ``centroid [3]``, ``box_min/box_max [3]`` (world), selected ids."""

    centroid: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    selected: np.ndarray
    inliers: np.ndarray
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {
            "centroid": self.centroid.tolist(),
            "box_min": self.box_min.tolist(),
            "box_max": self.box_max.tolist(),
            "n_selected": int(self.selected.size),
            "n_inliers": int(self.inliers.size),
            "relevance_threshold": self.threshold,
        }


def localize(
    means: np.ndarray | torch.Tensor,
    relevance: np.ndarray | torch.Tensor,
    opacities: np.ndarray | torch.Tensor | None = None,
    top_k: int | None = None,
    quantile: float = 0.99,
    min_opacity: float = 0.1,
    trim: float = 3.0,
    threshold: float | None = None,
) -> Localization:
    """Centroid and box of the most relevant Gaussians.

    ``means [N, 3]``, ``relevance [N]``, ``opacities [N]`` in [0, 1] (None: all 1). Gaussians with
    opacity below ``min_opacity`` are ignored (they barely render). Those with relevance at or
    above ``threshold`` (else the top ``top_k``, else those at or above the ``quantile`` of
    relevance) are selected (at least the most relevant one); those farther from the selection's
    median than ``median + trim * 1.4826 * MAD`` of the distances are dropped. The centroid is the
    opacity-weighted mean of the rest, the box their min/max.
    """
    xyz = torch.as_tensor(means).detach().double().cpu().numpy().reshape(-1, 3)
    rel = torch.as_tensor(relevance).detach().double().cpu().numpy().reshape(-1)
    op = (
        np.ones(len(xyz))
        if opacities is None
        else torch.as_tensor(opacities).detach().double().cpu().numpy().reshape(-1)
    )
    if not (len(xyz) == len(rel) == len(op)):
        raise ValueError(f"localize: sizes differ: means {len(xyz)}, relevance {len(rel)}, opacities {len(op)}")
    cand = np.flatnonzero(op >= min_opacity)
    if cand.size == 0:
        raise M3Error(f"query: no Gaussian has opacity >= {min_opacity}; lower query.min_opacity")
    order = cand[np.argsort(-rel[cand], kind="stable")]
    if threshold is not None:
        selected = order[: max(1, int((rel[order] >= threshold).sum()))]
    elif top_k is not None:
        selected = order[: max(1, min(top_k, order.size))]
    else:
        thr_q = np.quantile(rel[cand], quantile)
        selected = order[rel[order] >= thr_q]
    threshold = float(rel[selected].min())
    pts = xyz[selected]
    med = np.median(pts, axis=0)
    dist = np.linalg.norm(pts - med, axis=1)
    d_med = np.median(dist)
    mad = np.median(np.abs(dist - d_med))
    keep = dist <= d_med + trim * 1.4826 * mad + 1e-12
    inliers = selected[keep]
    w = op[inliers] / op[inliers].sum()
    p = xyz[inliers]
    return Localization(
        centroid=(w[:, None] * p).sum(axis=0),
        box_min=p.min(axis=0),
        box_max=p.max(axis=0),
        selected=selected,
        inliers=inliers,
        threshold=threshold,
    )


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colormap (polynomial fit by A. Mikhailov): ``x [...]`` in [0, 1] -> RGB ``[..., 3]`` in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)[..., None]
    r = np.array([0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943])
    g = np.array([0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604])
    b = np.array([0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973])
    powers = x ** np.arange(6)
    return np.clip(np.stack([powers @ r, powers @ g, powers @ b], axis=-1), 0.0, 1.0)


def normalize_relevance(rel: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Relevance ``[...]`` mapped to [0, 1] between ``lo`` and ``hi`` (default: its min and max)."""
    lo = float(rel.min()) if lo is None else lo
    hi = float(rel.max()) if hi is None else hi
    return ((rel - lo) / max(hi - lo, 1e-12)).clamp(0, 1)


def upsample(rel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Relevance ``[h, w]`` resized bilinearly to ``[height, width]``."""
    return F.interpolate(rel[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def heatmap_overlay(rgb: torch.Tensor | np.ndarray, rel01: torch.Tensor | np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The RGB render ``[H, W, 3]`` in [0, 1] with relevance ``[H, W]`` in [0, 1] as a turbo overlay.

    Returns ``[H, W, 3] uint8``; the overlay's opacity grows with relevance (irrelevant pixels keep
    a dimmed render).
    """
    img = torch.as_tensor(rgb).detach().float().cpu().numpy()
    r = torch.as_tensor(rel01).detach().float().cpu().numpy()
    a = (alpha * r)[..., None]
    out = (1 - a) * (0.6 * img) + a * turbo(r)
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def has_text_tower(name: str) -> bool:
    """Whether adapter ``name`` implements ``encode_text``."""
    from pipeline.features.models import FeatureModel, model_class

    return model_class(name).encode_text is not FeatureModel.encode_text


def pick_model(models: Sequence[str], requested: str | None) -> str:
    """``requested`` if the memory holds it, else the first model with a text tower."""
    if requested is not None:
        if requested not in models:
            raise M3Error(
                f"query: model '{requested}' is not in the trained memory ({', '.join(models)}); pick one of those"
            )
        return requested
    for m in models:
        if has_text_tower(m):
            return m
    raise M3Error(
        f"query: none of the memory's models ({', '.join(models)}) has a text encoder; "
        "pass --model and a query vector (--vector)"
    )


def check_query(text: str | None, vector: np.ndarray | None) -> None:
    """:class:`M3Error` unless exactly one of a non-empty ``text`` and a ``vector`` is given."""
    if (text is None) == (vector is None):
        raise M3Error("query: give either a text or a query vector, not both or neither")
    if text is not None and not text.strip():
        raise M3Error('query: the text is empty; say what to look for, e.g. m3 query <scene> "a yellow duck"')


def load_vectors(path: Path) -> dict[str, np.ndarray]:
    """Query vectors by phrase from a JSON file ``{phrase: [d numbers]}``."""
    if not path.is_file():
        raise M3Error(f"{path}: query vectors file not found; fix the vectors path (relative to the scene folder)")
    try:
        data = json.loads(path.read_text())
        out = {str(k): np.asarray(v, dtype=np.float32).reshape(-1) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise M3Error(f"{path}: expected a JSON object {{phrase: [numbers]}} ({exc}); fix the file") from None
    bad = [k for k, v in out.items() if v.size == 0 or not np.isfinite(v).all() or not v.any()]
    if bad:
        raise M3Error(f"{path}: the vector of {bad[0]!r} is empty, all zero or not finite; fix the file")
    return out


class Encoder:
    """Phrases or raw vectors -> :class:`QueryVector` in one model's space.

    A phrase found in ``vectors`` is queried with its vector; any other is encoded by the model's
    text tower (built once, with the conf recorded in the feature store ``attrs``). Canonical mode
    encodes the negatives with the text tower too.
    """

    def __init__(
        self,
        model: str,
        attrs: dict[str, Any],
        mode: Mode = "canonical",
        negatives: Sequence[str] = CANONICAL_NEGATIVES,
        scale: float = 10.0,
        vectors: dict[str, np.ndarray] | None = None,
        device: str = "cpu",
    ):
        self.model, self.attrs, self.mode, self.scale, self.device = model, attrs, mode, scale, device
        self.negatives = list(negatives)
        self.vectors = dict(vectors or {})
        self._tower: Any = None
        self._negs: torch.Tensor | None = None

    def _encode(self, phrases: list[str]) -> torch.Tensor:
        if self._tower is None:
            if not has_text_tower(self.model):
                raise M3Error(
                    f"query: model '{self.model}' has no text encoder; use mode cosine with a vector "
                    "(--vector or a vectors file)"
                )
            self._tower = load_text_model(self.model, self.attrs, self.device)
        limit = self._tower.max_text_tokens
        for phrase in phrases:
            # at least a token per word (or per 16 characters of a long word), plus start and end tokens
            least = max(len(phrase.split()), len(phrase) // 16) + 2
            if limit and least > limit:
                log.warning(
                    "query: %r... (%d characters) is longer than the %d tokens %s's text tower reads: "
                    "the rest is ignored; shorten the text", phrase[:40], len(phrase), limit, self.model,
                )  # fmt: skip
        return self._tower.encode_text(phrases).detach().float().cpu()

    def _negatives(self) -> torch.Tensor | None:
        if self.mode == "canonical" and self._negs is None:
            self._negs = self._encode(self.negatives)
        return self._negs if self.mode == "canonical" else None

    def text(self, text: str) -> QueryVector:
        """The query of ``text`` (its vector when ``vectors`` holds it, else the text tower's)."""
        check_query(text, None)
        if text in self.vectors:
            return self.vector(self.vectors[text], text)
        return QueryVector(self._encode([text])[0], self._negatives(), self.mode, self.scale, text)

    def vector(self, vector: np.ndarray | torch.Tensor, text: str | None = None) -> QueryVector:
        """The query of a raw ``vector [d]``."""
        return QueryVector(torch.as_tensor(vector), self._negatives(), self.mode, self.scale, text)


def build_query(
    model: str,
    attrs: dict[str, Any],
    text: str | None = None,
    vector: np.ndarray | None = None,
    mode: Mode = "canonical",
    negatives: Sequence[str] = CANONICAL_NEGATIVES,
    scale: float = 10.0,
    device: str = "cpu",
) -> QueryVector:
    """A query for ``model`` from ``text`` (its text tower, conf from the feature store ``attrs``)
    or from a raw ``vector [d]`` (canonical mode still encodes the negatives with the text tower)."""
    check_query(text, vector)
    enc = Encoder(model, attrs, mode, negatives, scale, device=device)
    return enc.text(text) if text is not None else enc.vector(vector)


@torch.no_grad()
def relevance_maps(
    memory: Any, views: Sequence[Any], model: str, qv: QueryVector
) -> list[tuple[Any, torch.Tensor, torch.Tensor]]:
    """``(view, rgb [H, W, 3], relevance [H, W])`` per view: relevance of the rendered ``model``
    features (at the stored feature size), upsampled bilinearly to the render."""
    out = []
    for view in views:
        r = memory.render(view)
        rgb = r.rgb.detach().float().cpu().clamp(0, 1)
        rel = qv(r.features[model].detach().float().cpu())
        out.append((view, rgb, upsample(rel, rgb.shape[0], rgb.shape[1])))
    return out
