"""Tiny local checkpoints laid out as on the Hugging Face hub, for the adapters' pretrained paths
(no download): a word-level tokenizer with the special tokens a model needs."""

from __future__ import annotations

from typing import Any


def word_tokenizer(words: list[str], specials: list[str] = (), add_eos: bool = False) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``words`` (split on whitespace and punctuation) with
    ``<pad>`` (0), ``<s>`` (1, added first), ``</s>`` (2, added last when ``add_eos``), ``[UNK]`` and
    ``specials`` as special tokens (in that order, from id 4)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "[UNK]", *specials, *dict.fromkeys(words)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    single = "<s> $A </s>" if add_eos else "<s> $A"
    tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="[UNK]"
    )
    if specials:
        tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok
