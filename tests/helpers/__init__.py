"""Helpers shared by the tests (import them as ``from tests.helpers.<module> import ...``):

* ``paths``: the repository root and the shared real scenes;
* ``data``: exact best cosines, videos from frames, smooth test images;
* ``scenes``: demo-rendered scenes with ground-truth cameras and points, synthetic banks;
* ``project``: copies of the project driven by real ``dvc`` / ``m3`` commands;
* ``checkpoints``: tiny hub-layout checkpoints (tokenizers) for the adapters' pretrained paths;
* ``sshd``: a throw-away OpenSSH server on loopback.
"""
