"""Stage ``poses``: frames -> COLMAP model (binary, PINHOLE) + undistorted images + stats.

Reads ``params.yaml: poses``. ``source: sfm`` runs pycolmap on ``data/<scene>/frames``;
``source: colmap`` / ``transforms`` import known cameras from ``import_path`` (relative to the
scene folder) and triangulate sparse points when the import has none. Outputs::

    data/<scene>/colmap/sparse/0/{cameras,images,points3D}.bin   PINHOLE, undistorted
    data/<scene>/colmap/images/<frame name>                      undistorted images
    data/<scene>/colmap/provenance.json                          config, inputs and code hashes, source
    data/<scene>/poses/stats.json                                registered views, points, errors, seconds

The work is :func:`pipeline.poses.stage.estimate_poses`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.poses.config import PosesConfig
from stages.command import PARAMS, SCENE, Options, command, resolve_scene

if TYPE_CHECKING:
    from pipeline.core.scene import Scene

log = logging.getLogger(__name__)


def run(config: PosesConfig, scene: Scene) -> dict[str, Any]:
    """Poses of ``scene`` (:func:`~pipeline.poses.stage.estimate_poses`); returns the stats."""
    from pipeline.poses.stage import estimate_poses

    stats = estimate_poses(config, scene)
    log.info(
        "%s: %d/%d views registered, %d points, reprojection error %.3f px, %.1f s", scene.name,
        stats["registered_views"], stats["total_views"], stats["points"], stats["mean_reprojection_error_px"],
        stats["seconds"],
    )  # fmt: skip
    return stats


@command(PosesConfig)
def cli(options: Options[PosesConfig], scene: str = SCENE, params: Path = PARAMS) -> None:
    """Estimate camera poses (pycolmap SfM) or import them (COLMAP model / transforms.json).

    Writes data/<scene>/colmap/ (PINHOLE model + undistorted images) and data/<scene>/poses/stats.json.
    """
    run(options.load("poses", params), resolve_scene(scene))
