"""Batched extraction of h / a / m and the attention of the extraction position, to the .npz contract of DESIGN §5.

Prompts are left-padded (so the extraction position, the prompt's last token, is the last column of every row),
sorted by length into batches to waste little on padding, and the model computes logits for the last position only.
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
from .sites import KINDS, all_sites, hooked

ACTIVATION_ARRAYS = ("h", "a", "m", "embed", "ids", "emotions", "n_tokens", "attention", "tokens",
                     "text_start", "text_end", "meta")


@dataclass(frozen=True)
class ExtractSettings:
    batch_size: int = 8
    max_tokens: int = 480


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
    order = np.argsort([len(p.ids) for p in prompts], kind="stable")
    batches = [order[i:i + settings.batch_size] for i in range(0, n, settings.batch_size)]
    with torch.inference_mode(), hooked(model, reads=sites, attention=True) as cache:
        for rows in tqdm(batches, desc=f"extract {loaded.name} {prompt_name} {set_name}", disable=not progress):
            batch = pad_left([prompts[r].ids for r in rows], tokenizer.pad_token_id, loaded.device)
            result = model(**batch, logits_to_keep=1, output_hidden_states=True, use_cache=False)
            out["embed"][rows] = result.hidden_states[0][:, -1].float().cpu().numpy()
            for site in sites:
                out[site.kind][rows, site.layer] = cache[site].float().cpu().numpy()
            for layer in range(n_layers):
                weights = cache[("attn", layer)].float().cpu().numpy()  # (batch, heads, width)
                for j, r in enumerate(rows):
                    k = len(prompts[r].ids)
                    out["attention"][r, layer, :, :k] = weights[j, :, weights.shape[-1] - k:]
    for key in ("h", "a", "m", "embed"):
        if not np.isfinite(out[key]).all():
            raise DataError(f"{loaded.name} {set_name}: non-finite values in {key} (try dtype float32)")
    tokens = np.full((n, max_tokens), "", dtype=object)
    for i, p in enumerate(prompts):
        tokens[i, : len(p.ids)] = tokenizer.convert_ids_to_tokens(p.ids)
    meta = {**describe(loaded), "prompt": prompt_name, "template": template, "set": set_name,
            "position": "last token of the prompt (the ':' after 'Answer')",
            "padding": "left", "versions": {"emotion_circuits": __version__, "torch": torch.__version__,
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


def save_activations(path, arrays: dict[str, np.ndarray]) -> None:
    """Write the contract's arrays atomically (temporary name, then rename)."""
    missing = [k for k in ACTIVATION_ARRAYS if k not in arrays]
    if missing:
        raise DataError(f"{path}: refusing to write without {', '.join(missing)}")
    save_npz(path, **arrays)
