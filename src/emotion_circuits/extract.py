"""Batched extraction of h / a / m and the attention of the extraction position, to the .npz contract of DESIGN §5.

Prompts are sorted by length into batches to waste little on padding, and the model computes logits for the last
position only. Two paths give the same arrays (within float32 rounding, tested):
- prefix cache (default): every prompt of a set starts with the template's fixed part (instructions and exemplars,
  the same token ids in every prompt), so those tokens run once per set and their keys and values are shared by
  every batch; only the stimulus tokens and the answer cue run per stimulus, right-padded after the prefix (the
  columns are then the true positions, which a sliding-window layer needs), each row read at its own last token.
- plain: whole prompts, left-padded, so the extraction position is the last column of every row.
The prompt's token ids are the same in both (the plain tokenization split after the shared prefix), so no boundary
between prefix and stimulus is ever tokenized differently.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .io import DataError, save_npz
from .models import LoadedModel, describe
from .sites import KINDS, at_position, all_sites, decoder_layers, hooked

ACTIVATION_ARRAYS = ("h", "a", "m", "embed", "ids", "emotions", "n_tokens", "attention", "tokens",
                     "text_start", "text_end", "meta")


@dataclass(frozen=True)
class ExtractSettings:
    batch_size: int = 8
    max_tokens: int = 480
    prefix_cache: bool = True


@dataclass(frozen=True)
class Prompt:
    """One tokenized prompt: its ids and the token span [text_start, text_end) that holds the stimulus text."""
    ids: list[int]
    text_start: int
    text_end: int


def build_prompt(template: str, text: str) -> str:
    return template.replace("{text}", text.strip())


def tokenize_prompt(tokenizer, template: str, text: str) -> Prompt:
    """Tokenize one prompt as the model's tokenizer expects (it adds BOS if the model uses one)."""
    prefix = template[: template.index("{text}")]
    prompt = build_prompt(template, text)
    start_char, end_char = len(prefix), len(prefix) + len(text.strip())
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and e > start_char and s < end_char]
    return Prompt(ids=list(ids), text_start=inside[0], text_end=inside[-1] + 1)


def pad_left(batch_ids: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Left-pad a batch of id lists; returns input_ids and attention_mask `(batch, max_len)`."""
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def pad_right(batch_ids: list[list[int]], pad_id: int, device, offset: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a batch of id lists that continue a shared prefix of `offset` tokens: input_ids `(batch, width)`,
    attention_mask `(batch, offset + width)` (the prefix, then the row's own tokens), position_ids `(batch, width)`."""
    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), offset + width), dtype=torch.long)
    mask[:, :offset] = 1
    for row, ids in enumerate(batch_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, offset: offset + len(ids)] = 1
    positions = torch.arange(offset, offset + width).expand(len(batch_ids), -1)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def shared_prefix_length(prompts: list[Prompt]) -> int:
    """Number of leading token ids every prompt shares, stopping before the first stimulus token and leaving at
    least one token per prompt to run (the template's fixed part: BOS, instructions, exemplars, 'Text:')."""
    limit = min(min(p.text_start for p in prompts), min(len(p.ids) for p in prompts) - 1)
    first = prompts[0].ids
    n = 0
    while n < limit and all(p.ids[n] == first[n] for p in prompts):
        n += 1
    return n


def _base_model(model) -> torch.nn.Module:
    """The decoder stack without the output layer (the prefix run needs only its keys and values)."""
    layers = decoder_layers(model)
    return next(m for m in model.modules() if getattr(m, "layers", None) is layers)


def _prefix_keys_values(model, ids: list[int], device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, keys and values `(1, kv_heads, len(ids), head_dim)` of the prefix. The cache has full layers only:
    a sliding-window cache layer would drop keys, and the attention weights over the whole prompt are recorded."""
    from transformers import DynamicCache

    cache = DynamicCache()
    _base_model(model)(input_ids=torch.tensor([ids], device=device), cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _batch_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A fresh cache holding the prefix once per row (each forward pass appends to the cache it is given)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (keys, values) in enumerate(prefix):
        cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), layer)
    return cache


def extract(loaded: LoadedModel, stimuli, template: str, settings: ExtractSettings = ExtractSettings(),
            prompt_name: str = "", set_name: str = "", progress: bool = True) -> dict[str, np.ndarray]:
    """Activations of every stimulus at the extraction position; returns the arrays of the .npz contract.

    h, a, m: `(n, n_layers, d_model)` float32; embed `(n, d_model)` (h[-1]); attention `(n, n_layers, n_heads,
    max_tokens)` over the prompt's tokens in order, zero beyond n_tokens; tokens `(n, max_tokens)` strings.
    """
    if not stimuli:
        raise DataError(f"set {set_name or '?'}: no stimuli to extract")
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [tokenize_prompt(tokenizer, template, s.text) for s in stimuli]
    too_long = [s.id for s, p in zip(stimuli, prompts) if len(p.ids) > settings.max_tokens]
    if too_long:
        raise DataError(f"set {set_name}: prompts of {', '.join(too_long[:5])} exceed extract.max_tokens="
                        f"{settings.max_tokens}")
    cfg = model.config.get_text_config()
    n, n_layers, d_model, n_heads = len(stimuli), cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads
    max_tokens = max(len(p.ids) for p in prompts)
    out = {kind: np.zeros((n, n_layers, d_model), np.float32) for kind in KINDS}
    out["embed"] = np.zeros((n, d_model), np.float32)
    out["attention"] = np.zeros((n, n_layers, n_heads, max_tokens), np.float32)
    sites = all_sites(n_layers)
    n_prefix = shared_prefix_length(prompts) if settings.prefix_cache else 0
    order = np.argsort([len(p.ids) for p in prompts], kind="stable")
    batches = [order[i:i + settings.batch_size] for i in range(0, n, settings.batch_size)]
    with torch.inference_mode():
        prefix = _prefix_keys_values(model, prompts[0].ids[:n_prefix], loaded.device) if n_prefix else None
        for rows in tqdm(batches, desc=f"extract {loaded.name} {prompt_name} {set_name}", disable=not progress):
            lengths = [len(prompts[r].ids) for r in rows]
            if prefix is None:  # left-padded whole prompts: every row's last token is the last column
                batch = pad_left([prompts[r].ids for r in rows], tokenizer.pad_token_id, loaded.device)
                position, key_start = -1, [batch["input_ids"].shape[1] - k for k in lengths]
                extra = {"use_cache": False}
            else:  # right-padded continuations of the prefix: each row read at its own last token
                batch = pad_right([prompts[r].ids[n_prefix:] for r in rows], tokenizer.pad_token_id, loaded.device,
                                  offset=n_prefix)
                position, key_start = torch.tensor(lengths) - n_prefix - 1, [0] * len(rows)
                extra = {"cache": _batch_cache(prefix, len(rows)), "use_cache": True}
            with hooked(model, reads=sites, attention=True, position=position) as cache:
                result = model(**batch, **extra, logits_to_keep=1, output_hidden_states=True)
            out["embed"][rows] = at_position(result.hidden_states[0], position).float().cpu().numpy()
            for site in sites:
                out[site.kind][rows, site.layer] = cache[site].float().cpu().numpy()
            for layer in range(n_layers):
                weights = cache[("attn", layer)].float().cpu().numpy()  # (batch, heads, keys)
                for j, r in enumerate(rows):
                    out["attention"][r, layer, :, :lengths[j]] = weights[j, :, key_start[j]: key_start[j] + lengths[j]]
    for key in ("h", "a", "m", "embed"):
        if not np.isfinite(out[key]).all():
            raise DataError(f"{loaded.name} {set_name}: non-finite values in {key} (try dtype float32)")
    tokens = np.full((n, max_tokens), "", dtype=object)
    for i, p in enumerate(prompts):
        tokens[i, : len(p.ids)] = tokenizer.convert_ids_to_tokens(p.ids)
    meta = {**describe(loaded), "prompt": prompt_name, "template": template, "set": set_name,
            "position": "last token of the prompt (the ':' after 'Answer')",
            "padding": "right, after the shared prefix" if n_prefix else "left", "prefix_cache": bool(n_prefix),
            "prefix_tokens": n_prefix, "versions": {"emotion_circuits": __version__, "torch": torch.__version__,
                                            "transformers": _version("transformers"), "numpy": np.__version__,
                                            "python": platform.python_version()}}
    out.update(
        ids=np.array([s.id for s in stimuli], dtype=str),
        emotions=np.array([s.emotion for s in stimuli], dtype=str),
        n_tokens=np.array([len(p.ids) for p in prompts], dtype=np.int64),
        tokens=tokens.astype(str),
        text_start=np.array([p.text_start for p in prompts], dtype=np.int64),
        text_end=np.array([p.text_end for p in prompts], dtype=np.int64),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    return out


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


def extract_sets(loaded: LoadedModel, sets: dict[str, tuple[list, str]], template: str,
                 settings: ExtractSettings = ExtractSettings(), prompt_name: str = "", progress: bool = True) -> None:
    """Extract several stimulus sets with one loaded model and prompt, writing each set's .npz (atomically) as soon
    as it is done. sets: set name -> (stimuli, output path). One process per model x prompt instead of one per set
    saves a Python, torch and model start-up per set."""
    for set_name, (stimuli, path) in sets.items():
        arrays = extract(loaded, stimuli, template, settings, prompt_name=prompt_name, set_name=set_name,
                         progress=progress)
        save_activations(path, arrays)


def save_activations(path, arrays: dict[str, np.ndarray]) -> None:
    """Write the contract's arrays atomically (temporary name, then rename)."""
    missing = [k for k in ACTIVATION_ARRAYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: refusing to write without {', '.join(missing)}")
    save_npz(path, **arrays)
