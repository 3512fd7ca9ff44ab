"""One small tokenizer interface for the language-model adapters (``llamav``, ``llama3``, ``seem``).

A pretrained checkpoint brings its own tokenizer (:class:`HfTokenizer` wraps it). A random-weight
model (tests, ``weights: random``) has no vocabulary files and nothing may be downloaded, so it
uses open_clip's bundled BPE vocabulary (:class:`BpeTokenizer`: 49408 ids, start 49406, end
49407) with extra ids for the model's special strings such as ``<image>``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

BPE_VOCAB = 49408
"""Ids of open_clip's BPE vocabulary; random models' special tokens get ids from here on."""


class Tokenizer:
    """``encode(text) -> ids`` (with the model's start token), ``decode(ids) -> text`` (specials
    dropped), ``eos_ids`` and ``pad_id``; :meth:`batch` pads on the right."""

    eos_ids: frozenset[int]
    pad_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def batch(self, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [B, L] long, mask [B, L] long)`` of ``texts``, right-padded; a text longer than
        ``max_length`` keeps its first ``max_length - 1`` tokens and its last (the end token)."""
        rows = [self.encode(t) for t in texts]
        if max_length:
            rows = [r if len(r) <= max_length else r[: max_length - 1] + r[-1:] for r in rows]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return ids, mask


class BpeTokenizer(Tokenizer):
    """open_clip's BPE vocabulary for random-weight models: ``[start] + words (+ [end])``.

    ``specials`` maps strings (e.g. ``"<image>"``) to ids, usually ``BPE_VOCAB`` and up; they are
    cut out of the text before BPE and inserted as their ids.
    """

    bos_id, eos_id = 49406, 49407

    def __init__(self, specials: dict[str, int] | None = None, add_eos: bool = False) -> None:
        import open_clip

        self.bpe = open_clip.SimpleTokenizer()
        self.specials = dict(specials or {})
        self.add_eos = add_eos
        self.eos_ids = frozenset({self.eos_id})
        self.pad_id = 0
        self._split = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")") if self.specials else None

    def encode(self, text: str) -> list[int]:
        ids = [self.bos_id]
        for part in self._split.split(text) if self._split else [text]:
            if part in self.specials:
                ids.append(self.specials[part])
            elif part.strip():
                ids += self.bpe.encode(part)
        return ids + [self.eos_id] if self.add_eos else ids

    def decode(self, ids: list[int]) -> str:
        words = [int(i) for i in ids if int(i) < self.bos_id]
        return self.bpe.decode(words).strip()


class HfTokenizer(Tokenizer):
    """A checkpoint's own tokenizer; the start token is added unless the text already has it."""

    def __init__(self, tok: Any, eos_ids: set[int] | None = None) -> None:
        self.tok = tok
        eos = set(eos_ids or set())
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        self.eos_ids = frozenset(eos)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def encode(self, text: str) -> list[int]:
        bos = self.tok.bos_token
        return list(self.tok(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()
