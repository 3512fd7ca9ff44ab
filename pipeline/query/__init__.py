"""Using a trained memory: ``encode`` (texts and vectors as queries, relevance), ``relevance``
(per-Gaussian relevance from the bank), ``localize`` (3D selection, centroid, box), ``colors``
(heatmaps and relevance colours), ``session`` (a memory ready for queries), ``config`` (the
query tools' sections and the shared relevance settings), and the tools: ``find`` (``m3 query``),
``export`` (``m3 export``) and ``ask`` (``m3 ask``)."""
