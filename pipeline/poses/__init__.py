"""Stages ``frames`` and ``poses``: ``frames`` (video/photos -> filtered frames), ``sfm``
(pycolmap feature matching, mapping, undistortion) and ``colmap_import`` (known cameras from a
COLMAP model or a NeRF ``transforms.json``)."""
