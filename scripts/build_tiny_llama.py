"""Builds a tiny random-weight Llama and a small BPE tokenizer in DIR, offline (~5 s).

Run with the vLLM environment's python (it needs torch, transformers and tokenizers):
    python scripts/build_tiny_llama.py DIR
Recipe: ../shared/docs/cpu-engine.md. The head size is 64 (hidden 128 / 2 heads) because vLLM's CPU
attention rejects smaller heads at the first request. The vocabulary is 32,000 ids so that kvbench's
random prompt ids in [1000, 30000) are all valid tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

VOCAB = 32_000


def build(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    corpus = [
        "the quick brown fox jumps over the lazy dog " * 4,
        "queueing theory predicts the stability boundary of an inference engine",
        "key value cache memory bounds the number of running requests",
    ] * 50
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(out)

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    LlamaForCausalLM(cfg).save_pretrained(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build_tiny_llama.py DIR")
    build(Path(sys.argv[1]))
