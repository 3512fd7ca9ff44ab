"""Stage ``demo``: the procedural demo room (``scene``: textures, objects, cameras, rendering)
and its ray casting (``raycast``)."""
