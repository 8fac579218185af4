"""Steered generation (issue 25 item 5): does adding d_e while the model writes make its text about e?

For the first `n_texts` items of the steered (neutral) set, the text alone (no classification template), a greedy
continuation of `max_new_tokens` tokens under three conditions per emotion e: unsteered; steered, alpha * s_l * d_e
added to h[l] at EVERY position (prompt and generated tokens; the hook sees the prompt in the first forward pass and
one new token per later pass of the KV cache); random, alpha * s_l * u with u a random unit direction (the same norm;
one seeded draw per text and emotion). l and alpha: the steering grid's best cell unless params override them.
A text's 1 + 2 * 8 rows differ only from h[l] on, so they share its prefill (`greedy_shared`): the text's prompt runs
once, blocks l+1.. run per row on h[l] plus the row's vector at every prompt position, and `model.generate` goes on
from that cache with one forward hook whose addition differs per row (the unsteered row adds zero). `greedy`, every
row from its first token in left-padded batches, is the reference the tests hold it to. In `greedy_shared` the
output layer is `ScreenedHead`: greedy decoding needs only the argmax, which a bfloat16 product finds among a few
candidates (with a proven error bound) that are then scored exactly in float32 (3.7x faster on Gemma 3's 262k
vocabulary, where the output layer is most of a step).

Per continuation: the share of its words (nrc.words) whose NRC categories include e's category (NRC_CATEGORY).
Cells are (text, emotion): means of steered, unsteered and random shares with bootstrap intervals over texts (a
resampled text brings its eight cells), and a one-sided sign-flip p of steered minus random over cells (under H0
d_e acts as one more random direction, so each cell's pair is exchangeable).
"""
from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from . import stats
from .causal import unit_directions
from .config import ConfigError
from .decoder import Decoder
from .nrc import load_nrc, words
from .seeds import derive
from .sites import Site, _put, _take, site_module

log = logging.getLogger(__name__)

# Plutchik's wheel: each intense emotion of the project (config.EMOTIONS) and its basic emotion, the NRC category.
NRC_CATEGORY = {"rage": "anger", "grief": "sadness", "terror": "fear", "ecstasy": "joy", "loathing": "disgust",
                "amazement": "surprise", "admiration": "trust", "vigilance": "anticipation"}
CONDITIONS = ("unsteered", "steered", "random")


@dataclass(frozen=True)
class GenerationSettings:
    """params.yaml `steering_generation:`. n_texts: the first items of steering.set; max_new_tokens: greedy
    continuation length; layer / dose: null = the best cell of the steering grid; batch_size: rows per generate
    call (n_texts * (1 + 2 * 8) rows in all); n_flip: sign flips of the steered-minus-random p."""
    n_texts: int = 4
    max_new_tokens: int = 30
    layer: int | None = None
    dose: float | None = None
    batch_size: int = 72
    n_flip: int = 10000

    def __post_init__(self):
        for key, low in (("n_texts", 2), ("max_new_tokens", 1), ("batch_size", 1), ("n_flip", 100)):
            if getattr(self, key) < low:
                raise ConfigError(f"params.yaml: steering_generation.{key}: must be at least {low}")
        if self.dose is not None and not self.dose > 0:
            raise ConfigError(f"params.yaml: steering_generation.dose: {self.dose!r} must be positive (or null)")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"params.yaml: steering_generation.layer: {self.layer} must be >= 0 (or null)")

    def check(self, n_layers: int, n_items: int) -> "GenerationSettings":
        """The layer and text count against the model and the steered set (before any forward pass)."""
        if self.layer is not None and self.layer >= n_layers:
            raise ConfigError(f"params.yaml: steering_generation.layer: {self.layer} out of range (the model has "
                              f"layers 0..{n_layers - 1})")
        if self.n_texts > n_items:
            raise ConfigError(f"params.yaml: steering_generation.n_texts: {self.n_texts} but the steered set has "
                              f"{n_items} items")
        return self


@contextlib.contextmanager
def adding(model, layer: int, vectors: torch.Tensor):
    """Inside this block every forward pass adds `vectors (batch, d)` (row b to every position of row b) to h[layer],
    the output of decoder block `layer`. The hook is removed however the block exits."""
    module, index = site_module(model, Site("h", layer))

    def hook(_module, _inputs, output):
        x = _take(output, index)
        return _put(output, index, x + vectors.to(device=x.device, dtype=x.dtype)[:, None, :])

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ScreenedHead(torch.nn.Module):
    """A float32 output layer (no bias) for greedy decoding: logits exact in float32 at the candidates for the
    argmax, the float minimum elsewhere (argmax, and any softcap or repetition penalty, keep the same winner).

    The candidates come from the product in bfloat16: rounding h and W (unit roundoff u = 2^-8) moves each term by
    at most (2u + u^2)|h_i W_ji|, the float32 accumulation over d terms adds at most 1.01 d 2^-24 sum|h_i W_ji|,
    sum|h_i W_ji| <= ||h|| ||W_j||, and the bfloat16 output rounds by at most u |logit| / (1 - u). So every
    |bf16 logit - logit| <= E = (2u + u^2 + 1.01 d 2^-24) ||h|| max_j ||W_j|| + 1.004 u max_j |bf16 logit_j|, and
    the true argmax is among the tokens within 2E of the bf16 max."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight
        self.low = weight.to(torch.bfloat16)
        u = 2.0 ** -8
        self.scale = (2 * u + u * u + 1.01 * weight.shape[1] * 2.0 ** -24) * float(weight.norm(dim=1).max())
        self.rounding = 1.004 * u

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1]).float()
        approx = F.linear(flat.to(torch.bfloat16), self.low).float()                  # (rows, vocab)
        top = approx.max(dim=1, keepdim=True).values
        bound = self.scale * flat.norm(dim=1, keepdim=True) + self.rounding * approx.abs().max(dim=1, keepdim=True).values
        rows, cols = torch.nonzero(approx >= top - 2 * bound, as_tuple=True)
        out = torch.full_like(approx, torch.finfo(torch.float32).min)
        out[rows, cols] = (flat[rows] * self.weight[cols]).sum(-1)
        return out.view(*h.shape[:-1], -1)


@contextlib.contextmanager
def screened_head(model):
    """Inside this block `model`'s output layer is a `ScreenedHead` when it is a float32 linear map without bias
    (otherwise it is left as it is); the original is put back however the block exits."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight.dtype != torch.float32:
        yield
        return
    model.set_output_embeddings(ScreenedHead(head.weight.detach()))
    try:
        yield
    finally:
        model.set_output_embeddings(head)


def greedy(loaded, texts: list[str], max_new_tokens: int, layer: int | None = None,
           vectors: torch.Tensor | None = None, batch_size: int = 72) -> list[str]:
    """Greedy continuations (decoded new tokens, special tokens dropped) of `texts`, in batches of `batch_size`
    (left padding); with `layer` and `vectors (len(texts), d)`, row i adds vectors[i] at h[layer] everywhere."""
    tok, model = loaded.tokenizer, loaded.model
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tok(texts[start:start + batch_size], return_tensors="pt", padding=True).to(loaded.device)
        hook = adding(model, layer, vectors[start:start + batch_size]) if layer is not None else contextlib.nullcontext()
        with torch.no_grad(), hook:
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def shared_prefill(loaded, ids: torch.Tensor, layer: int, vectors: torch.Tensor) -> DynamicCache:
    """The cache of prompt `ids (1, n)` but its last token for len(vectors) rows, row r steered by vectors[r] added
    at h[layer] at every position. Blocks 0..layer never see the addition, so they run once and their keys and
    values are copied to every row; blocks layer+1.. run per row on h[layer] + vectors[r]."""
    decoder = Decoder(loaded)
    module, index = site_module(loaded.model, Site("h", layer))
    states = []
    handle = module.register_forward_hook(lambda _m, _i, out: states.append(_take(out, index)))
    try:
        with torch.no_grad():
            shared = DynamicCache(config=loaded.model.config)
            decoder.base(input_ids=ids[:, :-1], cache=shared, use_cache=True)
    finally:
        handle.remove()
    v = vectors.to(device=states[0].device, dtype=states[0].dtype)
    cache = DynamicCache(config=loaded.model.config)
    for i in range(layer + 1):
        cache.layers[i] = copy.copy(shared.layers[i])
        cache.layers[i].keys = shared.layers[i].keys.expand(len(v), -1, -1, -1).contiguous()
        cache.layers[i].values = shared.layers[i].values.expand(len(v), -1, -1, -1).contiguous()
    if layer + 1 < decoder.n_layers:
        masks, position_ids = decoder.causal(ids.shape[1] - 1, 0, v.dtype, v.device)
        with torch.no_grad():
            decoder.forward_from(states[0] + v[:, None, :], layer + 1, cache, masks, position_ids)
    return cache


def greedy_shared(loaded, text: str, max_new_tokens: int, layer: int, vectors: torch.Tensor,
                  batch_size: int = 72) -> list[str]:
    """`greedy([text] * len(vectors), max_new_tokens, layer, vectors)` with one shared prefill of the blocks
    0..layer (`shared_prefill`); generation goes on from that cache, the hook adding at the last prompt token and
    at every new token as in `greedy`."""
    tok, model = loaded.tokenizer, loaded.model
    ids = tok([text], return_tensors="pt")["input_ids"].to(loaded.device)
    if ids.shape[1] < 2:
        return greedy(loaded, [text] * len(vectors), max_new_tokens, layer, vectors, batch_size)
    out = []
    for start in range(0, len(vectors), batch_size):
        v = vectors[start:start + batch_size]
        cache = shared_prefill(loaded, ids, layer, v)
        rows = ids.repeat(len(v), 1)
        with torch.no_grad(), adding(model, layer, v), screened_head(model):
            new = model.generate(input_ids=rows, attention_mask=torch.ones_like(rows), cache=cache,
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(new[:, rows.shape[1]:], skip_special_tokens=True)
    return out


def nrc_share(text: str, category: str, nrc: dict) -> tuple[float, int]:
    """(share of the words of `text` whose NRC categories include `category`, number of words); 0 for no words."""
    ws = words(text)
    return sum(category in nrc.get(w, ()) for w in ws) / max(len(ws), 1), len(ws)


def rows_for(texts, ids, emotions, unsteered, steered, random) -> list[dict]:
    """One row per (text, emotion, condition): `unsteered (n_texts,)`, `steered` and `random (n_texts, k)` strings."""
    nrc = load_nrc()
    rows = []
    for i, text_id in enumerate(ids):
        for j, e in enumerate(emotions):
            for condition, text in zip(CONDITIONS, (unsteered[i], steered[i][j], random[i][j])):
                share, n = nrc_share(text, NRC_CATEGORY[e], nrc)
                rows.append({"text_id": text_id, "emotion": e, "condition": condition,
                             "continuation": " ".join(text.split()), "nrc_share": share, "n_words": n})
    return rows


def generation_summary(rows: list[dict], n_boot: int, n_flip: int, seed: int) -> dict:
    """Means over (text, emotion) cells of each condition's NRC share, steered minus random and minus unsteered,
    each with a bootstrap interval over texts; `p`: one-sided sign-flip p of steered minus random over cells."""
    cells = sorted({(r["text_id"], r["emotion"]) for r in rows})
    share = {(r["text_id"], r["emotion"], r["condition"]): r["nrc_share"] for r in rows}
    values = {c: np.array([share[(*cell, c)] for cell in cells]) for c in CONDITIONS}
    groups = np.array([t for t, _ in cells])
    counts = stats.bootstrap_counts(groups, len(cells), n_boot, seed)
    out = {"n_cells": len(cells), "n_texts": len(set(groups))}
    arms = {**values, "steered_minus_random": values["steered"] - values["random"],
            "steered_minus_unsteered": values["steered"] - values["unsteered"]}
    for name, v in arms.items():
        point, low, high = stats.interval(v.mean(), stats.weighted_means(v, counts))
        out.update({name: point, f"{name}_low": low, f"{name}_high": high})
    _, p, _ = stats.sign_flip_test(arms["steered_minus_random"][:, None], n_flip, derive(seed, "flips"))
    out["p_steered_vs_random"] = float(p[0])
    return out


def run_generation(loaded, stimuli, directions, emotions, best: dict, cfg: GenerationSettings, n_boot: int,
                   seed: int) -> tuple[dict, list[dict]]:
    """Generate the three conditions for the first `cfg.n_texts` stimuli at the chosen layer and dose; returns
    (metrics, table rows)."""
    layer = best["layer"] if cfg.layer is None else cfg.layer
    dose = best["dose"] if cfg.dose is None else cfg.dose
    items = list(stimuli)[:cfg.n_texts]
    texts = [s.text for s in items]
    n, k, d = len(texts), len(emotions), directions.directions.shape[-1]
    norm = float(dose * directions.scale[layer])
    d_e = torch.from_numpy(directions.directions[layer]) * norm                       # (k, d)
    u = unit_directions(np.random.default_rng(derive(seed, "directions")), (n, k), d) * norm   # (n, k, d)
    unsteered, steered, random = [], [], []
    for i, text in enumerate(texts):   # per text: unsteered (a zero addition), k steered, k random; one prefill
        vectors = torch.cat([torch.zeros(1, d), d_e, u[i]])
        out = greedy_shared(loaded, text, cfg.max_new_tokens, layer, vectors, cfg.batch_size)
        unsteered.append(out[0])
        steered.append(out[1:1 + k])
        random.append(out[1 + k:])
    rows = rows_for(texts, [s.id for s in items], emotions, unsteered, steered, random)
    metrics = {"layer": int(layer), "dose": float(dose), "max_new_tokens": cfg.max_new_tokens,
               **generation_summary(rows, n_boot, cfg.n_flip, seed)}
    log.info("generation at h%d dose %g: NRC share steered %.3f, unsteered %.3f, random %.3f (p %.3g)", layer, dose,
             metrics["steered"], metrics["unsteered"], metrics["random"], metrics["p_steered_vs_random"])
    return metrics, rows
