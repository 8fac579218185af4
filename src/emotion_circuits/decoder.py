"""A model's decoder blocks run from any layer on given block inputs: the plumbing shared by the intervention
engine (`interventions.Engine`) and the steered generation's shared prefill (`generation`).

The blocks are the model's own modules, called in order as the model's forward calls them, with additive masks
built here (causal, and the window of sliding-window layers) and the model's own rotary embeddings; only the
architectures of `sites.ARCHITECTURES` with full or sliding-window causal attention are supported.
"""
from __future__ import annotations

import inspect

import torch

from .models import LoadedModel
from .sites import SiteError, decoder_layers

LAYER_TYPES = ("full_attention", "sliding_attention")


class Decoder:
    """The decoder blocks, final norm, output head and attention layout of one loaded model."""

    def __init__(self, loaded: LoadedModel):
        self.loaded, self.model = loaded, loaded.model
        self.layers = decoder_layers(self.model)
        self.base = next(m for m in self.model.modules() if getattr(m, "layers", None) is self.layers)
        self.cfg = self.model.config.get_text_config()
        self.n_layers = len(self.layers)
        self.layer_types = list(getattr(self.cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown or getattr(self.cfg, "use_bidirectional_attention", False):
            raise SiteError(f"{loaded.name}: attention {unknown or 'bidirectional'} is not supported by the fast path "
                            "(causal full or sliding-window attention only)")
        self.window = getattr(self.cfg, "sliding_window", None)
        self._rope_by_type = "layer_type" in inspect.signature(self.base.rotary_emb.forward).parameters
        head = self.model.get_output_embeddings()
        self.weight, self.bias = head.weight, head.bias
        self.softcap = getattr(self.cfg, "final_logit_softcapping", None)

    def masks(self, positions: torch.Tensor, allowed: torch.Tensor, k: int, n_prefix: int, dtype, device) -> dict:
        """Additive masks `(1, 1, k*G, n_prefix + k*G)` per layer type for k groups of G columns side by side:
        every column sees the `n_prefix` cached positions, and column i of a group sees column j of the same group
        where `allowed (G, G)` says so; sliding-window layers also drop keys `window` or more positions back."""
        q = positions.repeat(k)
        kv = torch.cat([torch.arange(n_prefix), q])
        ok = torch.cat([torch.ones(len(q), n_prefix, dtype=torch.bool), torch.block_diag(*[allowed] * k)], dim=1)
        out = {}
        for kind in set(self.layer_types):
            keep = ok if kind == "full_attention" or self.window is None else ok & (q[:, None] - kv[None] < self.window)
            mask = torch.zeros(keep.shape, dtype=dtype).masked_fill_(~keep, torch.finfo(dtype).min)
            out[kind] = mask.to(device)[None, None]
        return out

    def rope(self, h: torch.Tensor, position_ids: torch.Tensor) -> dict:
        """The rotary embeddings of `position_ids (1, n)` per layer type (one table when the model has one)."""
        types = set(self.layer_types)
        if self._rope_by_type:
            return {t: self.base.rotary_emb(h, position_ids, t) for t in types}
        return dict.fromkeys(types, self.base.rotary_emb(h, position_ids))

    def forward_from(self, h: torch.Tensor, layer0: int, cache, masks: dict, position_ids: torch.Tensor,
                     inputs: list | None = None) -> torch.Tensor:
        """Blocks layer0..L-1 on `h (b, n, d_model)`, the input of block layer0; `cache` receives (or, like the
        engine's prefix stand-in, supplies) each layer's keys and values. Returns the last block's output (before
        the final norm). If `inputs` is a list, each block's input `h[0]` and the last output are appended."""
        rope = self.rope(h, position_ids)
        for layer in range(layer0, self.n_layers):
            if inputs is not None:
                inputs.append(h[0])
            h = self.layers[layer](h, attention_mask=masks[self.layer_types[layer]],
                                   position_embeddings=rope[self.layer_types[layer]], position_ids=position_ids,
                                   cache=cache)
        if inputs is not None:
            inputs.append(h[0])
        return h

    def causal(self, n: int, start: int, dtype, device) -> tuple[dict, torch.Tensor]:
        """(masks, position_ids `(1, n)`) for n new positions start..start+n-1 after `start` cached ones, causal."""
        positions = torch.arange(start, start + n)
        masks = self.masks(positions, torch.ones(n, n, dtype=torch.bool).tril(), 1, start, dtype, device)
        return masks, positions[None].to(device)
