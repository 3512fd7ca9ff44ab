"""Stage ``bank``: ``reduction`` (the streamed PSC cover of a model's feature rows), ``cover``
(FAISS search, greedy cover, enclosing caps) and ``store`` (banks on disk with provenance)."""
