"""Shared fixtures: tiny random-weights models (Llama, Gemma 2, Gemma 3) with a byte-level tokenizer, and the
embedded models (loaded once per session; marked slow)."""
from __future__ import annotations

import functools

import pytest
import torch

from emotion_circuits.models import LoadedModel, _prepare_tokenizer

TINY = dict(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=1024, pad_token_id=256, bos_token_id=257,
            eos_token_id=258)


def byte_tokenizer(add_bos: bool):
    """A real fast tokenizer with offsets: one token per byte, plus <pad>, <bos>, <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab.update({"<pad>": 256, "<bos>": 257, "<eos>": 258})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 257)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    return _prepare_tokenizer(fast)


def tiny_model(arch: str, seed: int = 0) -> LoadedModel:
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, AutoModelForCausalLM

    config_cls = {"llama": LlamaConfig, "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig}[arch]
    extra = {} if arch == "llama" else {"sliding_window": 16, "query_pre_attn_scalar": 8}
    config = config_cls(**TINY, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(name=f"tiny-{arch}", model=model, tokenizer=byte_tokenizer(add_bos=arch != "llama"),
                       weights_digest=f"tiny-{arch}:seed={seed}")


@pytest.fixture(params=["llama", "gemma2", "gemma3"])
def tiny(request) -> LoadedModel:
    return tiny_model(request.param)


@functools.lru_cache(maxsize=None)
def embedded(name: str) -> LoadedModel:
    from emotion_circuits.config import load_params
    from emotion_circuits.models import load_model
    return load_model(name, load_params("params.yaml"), device="cpu", dtype="float32")


EMBEDDED = ["smollm2-135m-instruct", "gemma3-270m"]


@pytest.fixture(params=EMBEDDED)
def embedded_model(request) -> LoadedModel:
    return embedded(request.param)
