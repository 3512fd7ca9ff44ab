"""Helpers shared by the tests (import them as ``from tests.helpers.<module> import ...``):

* ``paths``: the repository root and the shared real scenes;
* ``data``: exact best cosines, videos from frames;
* ``scenes``: demo-rendered scenes with ground-truth cameras and points, synthetic banks;
* ``project``: copies of the project driven by real ``dvc`` / ``m3`` commands;
* ``sshd``: a throw-away OpenSSH server on loopback.
"""
