"""Command ``m3 ask``: ask the memory a question about a view; a VLM answers from rendered tokens.

Reads ``params.yaml: ask``. Not a DVC stage. The memory renders the ``ask.model`` features
(``llamav``: a VLM's image tokens) at a registered view (``--view``) or any camera (``--pose``),
and the VLM whose tokens were stored reads them in place of its own vision tokens and answers
(greedy); ``--region`` (a pixel box ``x0,y0,x1,y1`` or a text) keeps only the tokens of that
region (:mod:`pipeline.evaluate.ask`). Prints the answer and writes, in
``data/<scene>/ask/<view>-<question>[-in-<region>]/`` unless ``--out`` is given (a new or empty
folder, or an earlier output of ``m3 ask``)::

    render.png     the RGB render of the camera
    region.png     the render with the cells outside the region darkened (with --region)
    answer.json    question, answer, camera, region, tokens read, model, checkpoint
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import typer
from PIL import Image

from pipeline.core.config import to_dict
from pipeline.core.errors import M3Error
from pipeline.core.io import output_dir, output_listing, write_json
from pipeline.core.runtime import resolve_device
from pipeline.core.scene import Scene, View, load_views
from pipeline.evaluate.ask import (
    box_cells,
    global_tokens,
    nearest_view,
    parse_box,
    read_pose,
    region_overlay,
    text_cells,
)
from pipeline.evaluate.config import AskConfig
from pipeline.evaluate.query import load_text_model, pick_model
from pipeline.features.store import FeatureStore
from pipeline.features.vlm import ImageTokens
from pipeline.splat.trained import TrainedMemory
from stages.command import PARAMS, SCENE_HELP, Options, command, resolve_scene
from stages.query import slug

log = logging.getLogger(__name__)


def _camera(views: list[View], view: str | None, pose: Path | None) -> View:
    if view is not None and pose is not None:
        raise M3Error("ask: give --view or --pose, not both")
    if pose is not None:
        return read_pose(pose, nearest_view(read_pose(pose, views[0]), views))
    if view is None:
        return views[0]
    by_name = {v.name: v for v in views}
    if view not in by_name:
        raise M3Error(f"ask: '{view}' is not a registered view; use an image name of colmap/images ({views[0].name})")
    return by_name[view]


def run(
    config: AskConfig,
    scene: Scene,
    question: str,
    view: str | None = None,
    pose: Path | None = None,
    region: str | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Answer ``question`` about a camera of ``scene``'s memory; writes the outputs, returns answer.json."""
    if not question.strip():
        raise M3Error('ask: the question is empty; e.g. m3 ask <scene> "What is on the table?"')
    device = resolve_device(config.device, "ask")
    memory = TrainedMemory.load(scene, device=device)
    if config.model not in memory.models:
        raise M3Error(f"ask: the memory holds no '{config.model}' ({', '.join(memory.models)}); add it to models:")
    views = load_views(scene)
    camera = _camera(views, view, pose)
    name = f"{Path(camera.name).stem}-{slug(question)}" + (f"-in-{slug(region)}" if region else "")
    out_dir = out_dir or scene.root / "ask" / name
    output_listing(out_dir, "ask")  # refused before any work: never replaces what m3 did not write
    source = nearest_view(camera, views) if pose is not None else camera  # whose global tokens
    store = FeatureStore.open(scene.features_path(config.model))
    adapter = load_text_model(config.model, store.attrs, device)
    vlm = getattr(adapter, "vlm", None)
    if vlm is None:
        raise M3Error(f"ask.model: '{config.model}' stores no VLM image tokens; use llamav")
    region_model = pick_model(memory.models, config.region_model) if region and not parse_box(region) else None
    rendered = memory.render(camera, [config.model] + ([region_model] if region_model else []))
    grid = tuple(rendered.features[config.model].shape[:2])
    keep = None
    if region:
        box = parse_box(region)
        if box is not None:
            keep = box_cells(box, grid, camera.width, camera.height)
        else:
            attrs = FeatureStore.open(scene.features_path(region_model)).attrs
            feats = rendered.features[region_model]
            keep = text_cells(feats, region_model, attrs, region, grid, config.region_threshold, device)
        if not bool(keep.any()):
            raise M3Error(f"ask: region {region!r} holds no feature cell of the view; widen it")
    tokens = ImageTokens(rendered.features[config.model], global_tokens(store, source.name, vlm.dim))
    answer = vlm.generate(question, tokens, keep, config.max_new_tokens)
    result = {
        "question": question,
        "answer": answer,
        "camera": {"view": camera.name, "pose": str(pose) if pose else None, "global_tokens_from": source.name},
        "region": region,
        "region_model": region_model,
        "image_tokens": int(keep.sum()) if keep is not None else grid[0] * grid[1],
        "global_tokens": len(tokens.globals),
        "model": config.model,
        "checkpoint": store.attrs.get("checkpoint"),
        "weights": store.attrs.get("weights"),
        "config": to_dict(config),
    }
    with output_dir(out_dir, "ask") as tmp:
        rgb = rendered.rgb.detach().float().cpu()
        Image.fromarray((rgb.numpy() * 255 + 0.5).astype(np.uint8)).save(tmp / "render.png")
        if keep is not None:
            Image.fromarray(region_overlay(rgb, keep)).save(tmp / "region.png")
        write_json(tmp / "answer.json", result)
    print(f"Q: {question}\nA: {answer}\n({camera.name}; {result['image_tokens']} image tokens; saved in {out_dir})")
    return result


@command(AskConfig)
def cli(
    options: Options[AskConfig],
    scene: str = typer.Argument(..., help=SCENE_HELP),
    question: str = typer.Argument(..., help='what to ask, e.g. "What is on the table?"'),
    view: str | None = typer.Option(None, help="image name of a registered view (default: the first)"),
    pose: Path | None = typer.Option(
        None, help='a novel camera: JSON {"w2c": 4x4 world-to-camera, "K": 3x3, "width", "height"} (K, size optional)'
    ),
    region: str | None = typer.Option(
        None, help='only this region: a pixel box "x0,y0,x1,y1" or a text found by a language model of the memory'
    ),
    out: Path | None = typer.Option(
        None, help="output folder: new, empty or an earlier m3 ask output (default: data/<scene>/ask/<view>-<question>)"
    ),
    params: Path = PARAMS,
) -> None:
    """Ask the memory a question about a view: the VLM reads the memory's rendered image tokens and answers.

    Prints the answer and saves it (answer.json) with the rendered view (render.png).
    """
    run(options.load("ask", params), resolve_scene(scene), question, view, pose, region, out)
