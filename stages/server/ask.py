"""``POST /scenes/{scene}/ask``: a question about a registered view, answered by the memory's VLM.

The steps of :func:`pipeline.query.ask.ask` (render the VLM tokens at the view, keep a region's
cells, let the VLM read them) on a warm scene's loaded memory, without the output folder: the
answer is ``answer.json``'s content, for a registered view (no pose file).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.features.store import FeatureStore
from pipeline.features.vlm import ImageTokens
from pipeline.query.ask import global_tokens, parse_box, region_cells
from pipeline.query.config import AskConfig
from pipeline.query.encode import load_adapter, pick_model
from stages.server.pool import Conflict, WarmScene


def ask_view(warm: WarmScene, config: AskConfig, question: str, view: str | None, region: str | None) -> dict[str, Any]:
    """Answer ``question`` about registered ``view`` (None: the first) of ``warm``'s memory,
    optionally about ``region`` only (a pixel box ``x0,y0,x1,y1`` or a text); call with the lock held."""
    if not question.strip():
        raise M3Error("ask: the question is empty; e.g. 'What is on the table?'")
    memory = warm.memory
    if config.model not in memory.models:
        raise Conflict(
            f"ask: {warm.scene.name}'s memory holds no '{config.model}' ({', '.join(memory.models)}); "
            f"train it with {config.model} among its models to ask questions"
        )
    camera = warm.view(view) if view is not None else warm.views[0]
    store = FeatureStore.open(warm.scene.features_path(config.model))
    vlm = getattr(load_adapter(config.model, store.attrs, warm.device), "vlm", None)
    if vlm is None:
        raise Conflict(f"ask.model: '{config.model}' stores no VLM image tokens; use llamav")
    region_model = pick_model(memory.models, config.region_model, "ask") if region and not parse_box(region) else None
    rendered = memory.render(camera, [config.model] + ([region_model] if region_model else []))
    keep = None
    if region:
        threshold = config.region_threshold
        keep = region_cells(region, rendered, config.model, region_model, camera, warm.scene, threshold, warm.device)
    tokens = ImageTokens(rendered.features[config.model], global_tokens(store, camera.name, vlm.dim))
    grid = rendered.features[config.model].shape[:2]
    return {
        "question": question,
        "answer": vlm.generate(question, tokens, keep, config.max_new_tokens),
        "camera": {"view": camera.name, "pose": None, "global_tokens_from": camera.name},
        "region": region,
        "region_model": region_model,
        "image_tokens": int(keep.sum()) if keep is not None else int(grid[0] * grid[1]),
        "global_tokens": len(tokens.globals),
        "model": config.model,
        "checkpoint": store.attrs.get("checkpoint"),
        "weights": store.attrs.get("weights"),
        "config": to_dict(config),
    }
