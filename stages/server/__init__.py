"""``m3 serve``: a local HTTP API over trained scene memories, warm between queries.

:mod:`~stages.server.pool` keeps each scene's memory, encoders and relevance engines loaded (and
reloads a memory retrained on disk), :mod:`~stages.server.app` is the FastAPI app over it,
:mod:`~stages.server.client` a standard-library client. The computing parts are the CLI's own
(:func:`pipeline.query.find.answer`, :func:`pipeline.query.export.extract`,
:func:`pipeline.view.render.render_images`), so answers equal ``m3 query`` / ``export`` / ``render``.
"""
