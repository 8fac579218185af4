"""Activation sites h / a / m: one naming scheme, one table per architecture, scoped hooks to read and intervene.

Sites (DESIGN §4), at layer l and one token position:
  h  residual stream after block l           (== output_hidden_states[l+1] for l < L-1)
  a  what attention adds to the residual     (Gemma: after its post-attention norm)
  m  what the MLP adds to the residual       (Gemma: after its post-feedforward norm)
so that h[l] = h[l-1] + a[l] + m[l], with h[-1] the embeddings.

Interventions are data (`Intervention`); `hooked()` applies a list of them and records reads, and removes every hook
however the block exits.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

KINDS = ("h", "a", "m")
OPS = ("set", "add", "zero", "random", "shift", "project")
TRANSFORMER_LENS = {"hook_resid_post": "h", "hook_attn_out": "a", "hook_mlp_out": "m"}   # hook name -> site kind


class SiteError(ValueError):
    """A malformed or out-of-range site, op or architecture; the message names the value."""


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int

    def __str__(self) -> str:
        return f"{self.kind}{self.layer}"

    @staticmethod
    def parse(text: str, n_layers: int | None = None) -> "Site":
        """'h12' -> Site('h', 12); TransformerLens hook names are aliases: 'blocks.12.hook_resid_post' (h),
        'blocks.12.hook_attn_out' (a), 'blocks.12.hook_mlp_out' (m). Anything else (or a layer out of range) is a
        SiteError naming the value."""
        text = str(text).strip()
        match = re.fullmatch(r"([ham])(\d+)", text)
        if match:
            return Site(match.group(1), int(match.group(2))).check(n_layers)
        match = re.fullmatch(r"blocks\.(\d+)\.(hook_resid_post|hook_attn_out|hook_mlp_out)", text)
        if match:
            return Site(TRANSFORMER_LENS[match.group(2)], int(match.group(1))).check(n_layers)
        raise SiteError(f"site {text!r}: expected h, a or m followed by a layer index, e.g. 'h12', or a "
                        "TransformerLens hook name, e.g. 'blocks.12.hook_resid_post'")

    def check(self, n_layers: int | None) -> "Site":
        if self.kind not in KINDS:
            raise SiteError(f"site {self}: unknown kind {self.kind!r} (expected one of {', '.join(KINDS)})")
        if n_layers is not None and not 0 <= self.layer < n_layers:
            raise SiteError(f"site {self}: layer {self.layer} out of range (the model has layers 0..{n_layers - 1})")
        return self


@dataclass(frozen=True)
class Intervention:
    """Change one site at one token position of every sequence in the batch.

    op: set (value), add (value), zero, random (value is a unit direction; the site keeps its norm), shift (value is
    a unit direction u; the site moves to x + ||x|| u, the same displacement norm as zeroing it: its matched control),
    project (value is an orthonormal basis B `(r, d_model)`, r >= 0; x -> x - (x B^T) B at EVERY position of the
    sequence, `position` ignored: directional ablation). value: `(d_model,)` or `(batch, d_model)`. head: with kind 'a', act on that attention head only (its slice of
    the input to the output projection), which is how single heads are ablated.
    """
    site: Site
    op: str
    value: torch.Tensor | None = None
    position: int = -1
    head: int | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise SiteError(f"intervention op {self.op!r}: expected one of {', '.join(OPS)}")
        if self.op in ("set", "add", "random", "shift") and self.value is None:
            raise SiteError(f"intervention {self.op} at {self.site}: needs a value")
        if self.op == "project":
            check_basis(self.value, f"intervention project at {self.site}")
        if self.head is not None and self.site.kind != "a":
            raise SiteError(f"intervention on head {self.head} at {self.site}: heads belong to site kind 'a'")


def check_basis(basis, where: str, tol: float = 1e-4) -> None:
    """A projection basis must be a finite `(r, d)` tensor with orthonormal rows (B B^T = I within `tol`)."""
    if not isinstance(basis, torch.Tensor) or basis.ndim != 2:
        raise SiteError(f"{where}: the basis must be a 2-D tensor (r, d_model), got "
                        f"{getattr(basis, 'shape', type(basis).__name__)}")
    if not torch.isfinite(basis).all():
        raise SiteError(f"{where}: the basis has non-finite values")
    gram = basis.double() @ basis.double().T
    if len(basis) and (gram - torch.eye(len(basis), dtype=gram.dtype)).abs().max() > tol:
        raise SiteError(f"{where}: the basis rows are not orthonormal (max |B B^T - I| "
                        f"{(gram - torch.eye(len(basis), dtype=gram.dtype)).abs().max():.2g})")


# Per architecture: module name (relative to a decoder layer) for a and m, and which element of its output is the
# vector added to the residual stream (None: the output is the tensor itself).
ARCHITECTURES = {
    "llama": {"a": ("self_attn", 0), "m": ("mlp", None)},
    "gemma2": {"a": ("post_attention_layernorm", None), "m": ("post_feedforward_layernorm", None)},
    "gemma3": {"a": ("post_attention_layernorm", None), "m": ("post_feedforward_layernorm", None)},
    "gemma3_text": {"a": ("post_attention_layernorm", None), "m": ("post_feedforward_layernorm", None)},
}
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers")


def architecture(model) -> str:
    model_type = model.config.get_text_config().model_type
    if model_type not in ARCHITECTURES:
        raise SiteError(f"architecture {model_type!r} has no site table; add its a/m modules to sites.ARCHITECTURES")
    return model_type


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks, found at one of the known attribute paths."""
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise SiteError(f"{type(model).__name__}: no decoder layers at {', '.join(_LAYER_PATHS)}")


def site_module(model, site: Site) -> tuple[torch.nn.Module, int | None]:
    """(module whose output is the site, index of the site in that output or None)."""
    layer = decoder_layers(model)[site.layer]
    if site.kind == "h":
        return layer, 0
    name, index = ARCHITECTURES[architecture(model)][site.kind]
    return layer.get_submodule(name), index


def _take(output, index):
    if index is None or isinstance(output, torch.Tensor):
        return output
    return output[index]


def _put(output, index, new):
    if index is None or isinstance(output, torch.Tensor):
        return new
    return (*output[:index], new, *output[index + 1:])


def at_position(x: torch.Tensor, position) -> torch.Tensor:
    """`x (batch, seq, ...)` at one position per row: an int for every row, or a `(batch,)` tensor of positions."""
    if isinstance(position, torch.Tensor):
        return x[torch.arange(x.shape[0], device=x.device), position.to(x.device)]
    return x[:, position]


def _apply(x: torch.Tensor, iv: Intervention, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
    """Return a copy of `x (batch, seq, features)` with the intervention applied at its position (features lo:hi;
    project: at every position)."""
    x = x.clone()
    if iv.op == "project":
        basis = iv.value.to(device=x.device, dtype=x.dtype)
        part = x[..., lo:hi]
        if basis.shape[1] != part.shape[-1]:
            raise SiteError(f"intervention project at {iv.site}: the basis has {basis.shape[1]} columns, the site "
                            f"has {part.shape[-1]} features")
        x[..., lo:hi] = part - (part @ basis.T) @ basis
        return x
    pos = iv.position
    target = x[:, pos, lo:hi]
    if iv.op == "zero":
        new = torch.zeros_like(target)
    else:
        value = iv.value.to(device=x.device, dtype=x.dtype)
        if iv.op == "set":
            new = value.expand_as(target)
        elif iv.op == "add":
            new = target + value
        elif iv.op == "shift":
            new = target + value.expand_as(target) * target.norm(dim=-1, keepdim=True)
        else:  # random: the given direction, scaled to the site's own norm
            new = value.expand_as(target) * target.norm(dim=-1, keepdim=True)
    x[:, pos, lo:hi] = new
    return x


@contextlib.contextmanager
def hooked(model, reads=(), interventions=(), position: int = -1, attention: bool = False):
    """Run forward passes inside this block with `interventions` applied and `reads` recorded.

    Yields a dict filled by each forward pass: `cache[site]` is `(batch, d_model)` at `position` (an int, or a
    `(batch,)` tensor giving each row its own position, for right-padded batches), read *after* any
    intervention on that site (what flows downstream); with `attention=True`, `cache[("attn", l)]` is the attention
    weights of `position` over all keys, `(batch, n_heads, seq)` (needs eager attention). Hooks are removed however the
    block exits.
    """
    n_layers = len(decoder_layers(model))
    reads = [s.check(n_layers) for s in reads]
    interventions = list(interventions)
    for iv in interventions:
        iv.site.check(n_layers)
    cache: dict = {}
    handles = []
    by_module: dict[tuple, dict] = {}
    for site in reads:
        by_module.setdefault((site.kind, site.layer), {"reads": [], "ivs": []})["reads"].append(site)
    head_ivs = [iv for iv in interventions if iv.head is not None]
    for iv in interventions:
        if iv.head is None:
            by_module.setdefault((iv.site.kind, iv.site.layer), {"reads": [], "ivs": []})["ivs"].append(iv)

    def make_hook(site: Site, index, jobs):
        def hook(_module, _inputs, output):
            x = _take(output, index)
            for iv in jobs["ivs"]:
                x = _apply(x, iv)
            for _ in jobs["reads"]:
                cache[site] = at_position(x, position).detach()
            return _put(output, index, x) if jobs["ivs"] else None
        return hook

    def make_head_hook(iv: Intervention, head_dim: int):
        lo, hi = iv.head * head_dim, (iv.head + 1) * head_dim

        def pre_hook(_module, args):
            return (_apply(args[0], iv, lo, hi), *args[1:])
        return pre_hook

    def make_attention_hook(layer: int):
        def hook(_module, _inputs, output):
            if not isinstance(output, tuple) or len(output) < 2 or output[1] is None:
                raise SiteError("attention weights are not returned; load the model with attn_implementation='eager'")
            cache[("attn", layer)] = at_position(output[1].transpose(1, 2), position).detach()
        return hook

    try:
        for (kind, layer), jobs in by_module.items():
            site = Site(kind, layer)
            module, index = site_module(model, site)
            handles.append(module.register_forward_hook(make_hook(site, index, jobs)))
        for iv in head_ivs:
            attn = decoder_layers(model)[iv.site.layer].self_attn
            cfg = model.config.get_text_config()
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            if not 0 <= iv.head < cfg.num_attention_heads:
                raise SiteError(f"head {iv.head} at {iv.site}: out of range (0..{cfg.num_attention_heads - 1})")
            handles.append(attn.o_proj.register_forward_pre_hook(make_head_hook(iv, head_dim)))
        if attention:
            for layer, block in enumerate(decoder_layers(model)):
                handles.append(block.self_attn.register_forward_hook(make_attention_hook(layer)))
        yield cache
    finally:
        for handle in handles:
            handle.remove()


def all_sites(n_layers: int, kinds=KINDS) -> list[Site]:
    return [Site(kind, layer) for kind in kinds for layer in range(n_layers)]

