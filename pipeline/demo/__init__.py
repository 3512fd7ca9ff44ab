"""Stage ``demo``: the procedural demo room (``scene``: textures, objects, cameras, rendering),
its ray casting (``raycast``) and its LERF-OVS-style annotations (``labels``)."""
