"""Helpers shared by the tests (import them as ``from tests.helpers.<module> import ...``):

* ``paths``: the repository root and the shared real scenes;
* ``data``: exact best cosines, videos from frames, smooth test images;
* ``scenes``: demo-rendered scenes with ground-truth cameras and points, synthetic banks;
* ``training``: training test scenes with 3D-consistent synthetic features, a quick CPU config;
* ``planted``: a scene whose features carry known vectors on its objects (queries have an answer);
* ``raster``: random Gaussian scenes for the rasterizer tests, one torch thread around each;
* ``project``: copies of the project driven by real ``dvc`` / ``m3`` commands;
* ``cluster``: file digests of a folder and the processes of Ray actors (the Ray tests);
* ``checkpoints``: tiny hub-layout checkpoints (tokenizers) for the adapters' pretrained paths;
* ``browser``: a headless Chromium driven by Playwright (the viewer test);
* ``sshd``: a throw-away OpenSSH server on loopback.
"""
