"""Running m3 on a Ray cluster: ``config`` (the ``cluster`` section of params.yaml) and ``session``
(connecting to Ray, or starting a private one, with a clear error when Ray is not installed).

Nothing here is imported on the local path: Ray is an optional extra (``pip install -e ".[ray]"``).
"""
