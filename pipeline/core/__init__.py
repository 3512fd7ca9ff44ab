"""Shared by every stage: ``errors`` (:class:`M3Error`), ``config`` (typed params sections),
``io`` (atomic writes, hashing, provenance), ``code`` (source closure hashes), ``scene``
(scene folders, posed views), ``images``, ``runtime`` (devices, threads, memory) and
``geometry`` (camera conversions and alignment)."""
