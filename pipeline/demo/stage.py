"""The ``demo`` stage's work: render the demo scene into a scene folder's ``input/``, never over a
scene's own input."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.code import code_hash
from pipeline.core.errors import M3Error
from pipeline.core.io import provenance
from pipeline.demo.config import DemoConfig
from pipeline.demo.scene import make_demo_scene


def render_demo(config: DemoConfig, scene_dir: Path) -> Path:
    """Render the demo scene into ``scene_dir/input`` (replacing an earlier rendered demo only);
    returns that folder. Its ``ground_truth.json`` records the provenance (config and code)."""
    input_dir = Path(scene_dir) / "input"
    if input_dir.is_dir() and any(input_dir.iterdir()):
        made = input_dir / "ground_truth.json"
        try:
            stage = (json.loads(made.read_text()).get("provenance") or {}).get("stage") if made.is_file() else None
        except (OSError, ValueError, AttributeError):
            stage = None
        if stage != "demo":
            raise M3Error(
                f"{input_dir}: holds a scene's own input, not a rendered demo; nothing was replaced "
                "(pick another scene folder for the demo)"
            )
    # no inputs: the generator's code (hashed in the provenance) and the config make the scene
    prov = provenance("demo", config, "", code_hash(__name__))
    make_demo_scene(
        input_dir, config.n_views, config.width, config.height, config.seed, config.supersample,
        extra={"provenance": prov}, label_every=config.label_every,
    )  # fmt: skip
    return input_dir
