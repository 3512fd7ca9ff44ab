"""Small rigid-geometry helpers: similarity alignment (Umeyama), rotation errors, camera conventions.

Cameras inside m3 are COLMAP world-to-camera with OpenCV axes (x right, y down, z forward).
NeRF/Blender ``transforms.json`` stores camera-to-world with OpenGL axes (x right, y up, z back);
:func:`w2c_from_opengl_c2w` and :func:`opengl_c2w_from_w2c` convert at that edge.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import M3Error

# OpenGL <-> OpenCV camera axes: flip y and z (its own inverse).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~= s * R @ src + t`` (Umeyama 1991).

    ``src [N, 3]``, ``dst [N, 3]`` corresponding points, N >= 3 and not all collinear.
    Returns ``(s, R [3, 3] proper rotation, t [3])``; ``s`` is 1 when ``with_scale`` is False.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise M3Error(f"umeyama: need two [N, 3] arrays with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var_s = (xs**2).sum() / len(src)
    if var_s <= 0:
        raise M3Error("umeyama: source points are all identical; cannot estimate a similarity")
    s = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations ``R_a [..., 3, 3]`` and ``R_b [..., 3, 3]``."""
    R_rel = np.einsum("...ji,...jk->...ik", np.asarray(R_a), np.asarray(R_b))
    cos = (np.trace(R_rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    # atan2 of (sin, cos) stays accurate for tiny angles, where arccos loses half the digits
    vee = np.stack(
        [R_rel[..., 2, 1] - R_rel[..., 1, 2], R_rel[..., 0, 2] - R_rel[..., 2, 0], R_rel[..., 1, 0] - R_rel[..., 0, 1]],
        axis=-1,
    )
    return np.degrees(np.arctan2(np.linalg.norm(vee, axis=-1) / 2.0, cos))


def camera_centers(w2c: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates ``[N, 3]`` from world-to-camera matrices ``[N, 4, 4]``."""
    w2c = np.asarray(w2c, dtype=np.float64)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    return -np.einsum("nji,nj->ni", R, t)


def align_cameras(w2c_est: np.ndarray, w2c_ref: np.ndarray) -> dict[str, np.ndarray | float]:
    """Align estimated cameras to reference cameras by a similarity on their centres.

    ``w2c_est [N, 4, 4]``, ``w2c_ref [N, 4, 4]`` (same order). Returns ``center_error [N]``
    (distance after alignment, reference units), ``rotation_error_deg [N]`` and the similarity
    ``scale``, ``R [3, 3]``, ``t [3]`` mapping estimated world points into the reference world.
    """
    c_est, c_ref = camera_centers(w2c_est), camera_centers(w2c_ref)
    s, R, t = umeyama(c_est, c_ref)
    aligned = s * c_est @ R.T + t
    # x_ref = s R x_est + t  =>  R_cw_ref ~= R_cw_est @ R^T
    rot_est = np.asarray(w2c_est)[:, :3, :3] @ R.T
    return {
        "center_error": np.linalg.norm(aligned - c_ref, axis=1),
        "rotation_error_deg": rotation_angle_deg(rot_est, np.asarray(w2c_ref)[:, :3, :3]),
        "scale": s,
        "R": R,
        "t": t,
    }


def w2c_from_opengl_c2w(c2w: np.ndarray) -> np.ndarray:
    """World-to-camera (OpenCV axes) ``[4, 4]`` from a camera-to-world with OpenGL axes ``[4, 4]``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if c2w.shape != (4, 4):
        raise M3Error(f"transform_matrix: expected 4x4, got shape {c2w.shape}; fix transforms.json")
    return np.linalg.inv(c2w @ GL_TO_CV)


def opengl_c2w_from_w2c(w2c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`w2c_from_opengl_c2w`: ``[4, 4]`` camera-to-world with OpenGL axes."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ GL_TO_CV
