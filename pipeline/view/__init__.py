"""The browser viewer (``m3 view``): the trained Gaussians in viser, queried from a text box
(``viewer``)."""
