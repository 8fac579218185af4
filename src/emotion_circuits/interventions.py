"""The intervention engine: one list of `Intervention` declarations per group, run either by a plain full forward
pass per group (the reference) or by the fast path of DESIGN §8; tests run the same declarations through both.

Fast path, per prompt. `Engine.prepare` runs the prefix (every token but the last) once through the model and keeps
each layer's keys and values, then runs the last token once without intervention, recording every site and the
input of every block (h[l-1]; the embeddings for block 0). `Engine.run` takes many groups of interventions and
recomputes only the last token, k groups at a time, from the lowest layer any of them touches (the layers below
cannot change) up. The k copies of the last token sit side by side in one sequence, all at the last token's
position: each attends to the shared prefix keys and to itself only (a block-diagonal mask), so the prefix is never
copied k times (batching k rows over an expanded cache spent half its time copying keys). The output layer can be
restricted to a few vocabulary rows (the answer tokens). Only the last position can be intervened on here.

The decoder blocks are the model's own modules, called in order as the model's forward calls them; only the
architectures of `sites.ARCHITECTURES` with full or sliding-window causal attention are supported.
"""
from __future__ import annotations

import contextlib
import inspect
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .models import LoadedModel
from .sites import Intervention, Site, SiteError, all_sites, decoder_layers, hooked, site_module

Group = Sequence[Intervention]
LAYER_TYPES = ("full_attention", "sliding_attention")


def _take(output, index):
    return output if index is None or isinstance(output, torch.Tensor) else output[index]


def _put(output, index, new):
    return new if index is None or isinstance(output, torch.Tensor) else (*output[:index], new, *output[index + 1:])


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _compile(model, groups: Sequence[Group]) -> dict[tuple, list]:
    """{(kind, layer, head): slots}; slot j holds every group's j-th intervention at that module as
    {op: (columns `(n,)`, values `(n, features)` or None)}, so each group's own list is applied in its order."""
    cfg = model.config.get_text_config()
    n_layers, width, head_dim = cfg.num_hidden_layers, cfg.hidden_size, _head_dim(cfg)
    raw: dict[tuple, list[dict]] = {}
    for column, group in enumerate(groups):
        count: dict[tuple, int] = defaultdict(int)
        for iv in group:
            iv.site.check(n_layers)
            if iv.head is not None and not 0 <= iv.head < cfg.num_attention_heads:
                raise SiteError(f"head {iv.head} at {iv.site}: out of range (0..{cfg.num_attention_heads - 1})")
            key = (iv.site.kind, iv.site.layer, iv.head)
            slots = raw.setdefault(key, [])
            if count[key] == len(slots):
                slots.append({})
            slots[count[key]].setdefault(iv.op, []).append((column, iv.value))
            count[key] += 1
    plans = {}
    for key, slots in raw.items():
        features = width if key[2] is None else head_dim
        plan = []
        for slot in slots:
            entries = {}
            for op, items in slot.items():
                values = None
                if op != "zero":
                    flat = [v.reshape(-1) for _, v in items]
                    bad = next((v for v in flat if v.numel() != features), None)
                    if bad is not None:
                        raise SiteError(f"intervention {op} at {key[0]}{key[1]}: a value has {bad.numel()} numbers, "
                                        f"expected {features}")
                    values = torch.stack(flat)
                entries[op] = (torch.tensor([c for c, _ in items]), values)
            plan.append(entries)
        plans[key] = plan
    return plans


def _edit(x: torch.Tensor, plan, lo=None, hi=None) -> torch.Tensor:
    """Copy of `x (1, k, features)` with each slot's interventions applied to their own columns (features lo:hi)."""
    x = x.clone()
    for entries in plan:
        for op, (columns, values) in entries.items():
            columns = columns.to(x.device)
            target = x[0, columns, lo:hi]
            if op == "zero":
                new = torch.zeros_like(target)
            else:
                values = values.to(device=x.device, dtype=x.dtype)
                if op == "set":
                    new = values
                elif op == "add":
                    new = target + values
                elif op == "shift":  # moved by its own norm along the unit direction (zeroing's matched control)
                    new = target + values * target.norm(dim=-1, keepdim=True)
                else:  # random: the given unit direction, scaled to the site's own norm
                    new = values * target.norm(dim=-1, keepdim=True)
            x[0, columns, lo:hi] = new
    return x


@contextlib.contextmanager
def column_interventions(model, groups: Sequence[Group]):
    """Inside this block, column j of the one-sequence fast-path batch gets the interventions `groups[j]` (in order)."""
    head_dim = _head_dim(model.config.get_text_config())
    handles = []

    def forward_hook(index, plan):
        def hook(_module, _inputs, output):
            return _put(output, index, _edit(_take(output, index), plan))
        return hook

    def head_hook(plan, head):
        def pre_hook(_module, args):
            return (_edit(args[0], plan, head * head_dim, (head + 1) * head_dim), *args[1:])
        return pre_hook

    try:
        for (kind, layer, head), plan in _compile(model, groups).items():
            if head is None:
                module, index = site_module(model, Site(kind, layer))
                handles.append(module.register_forward_hook(forward_hook(index, plan)))
            else:
                o_proj = decoder_layers(model)[layer].self_attn.o_proj
                handles.append(o_proj.register_forward_pre_hook(head_hook(plan, head)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def plain_logits(loaded: LoadedModel, ids: Sequence[int], groups: Sequence[Group], rows=None) -> torch.Tensor:
    """Reference: one full forward pass of the whole prompt per group, the group hooked in by `sites.hooked`.
    Returns `(len(groups), n_out)` last-position logits (vocabulary `rows` only, if given)."""
    input_ids = torch.tensor([list(ids)], device=loaded.device)
    out = []
    with torch.inference_mode():
        for group in groups:
            with hooked(loaded.model, interventions=group):
                logits = loaded.model(input_ids=input_ids, logits_to_keep=1, use_cache=False).logits[0, -1]
            out.append(logits if rows is None else logits[list(rows)])
    return torch.stack(out).float()


class _PrefixKV:
    """Stands in for the model's cache during a fast-path call: each layer's attention gets the prefix's keys and
    values `(1, kv_heads, n_prefix, head_dim)` followed by those of the k new columns; nothing is stored."""

    def __init__(self, keys: list, values: list):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return (torch.cat([self.keys[layer_idx], key_states], dim=-2),
                torch.cat([self.values[layer_idx], value_states], dim=-2))


@dataclass
class Prepared:
    """One prompt after its clean run. keys, values: per layer `(1, kv_heads, n_prefix_l, head_dim)` (a sliding-window
    layer keeps only its window); resid `(n_layers + 1, d_model)`: row l is the input of block l (row 0 the
    embeddings, the last row h[L-1]); sites: Site -> `(d_model,)` clean value at the last token; logits `(n_out,)`
    clean; log_norm: logsumexp of the clean logits over the whole vocabulary (for full-vocabulary probabilities)."""
    ids: tuple[int, ...]
    keys: list | None
    values: list | None
    resid: torch.Tensor
    sites: dict
    logits: torch.Tensor
    log_norm: torch.Tensor

    def without_cache(self) -> "Prepared":
        """The same clean run without its prefix keys and values (enough to read sites and answers)."""
        return Prepared(self.ids, None, None, self.resid, self.sites, self.logits, self.log_norm)


class Engine:
    """Fast-path runner for one model. rows: vocabulary rows of the output (None: all); batch_size: groups per
    last-token call; skip_lower_layers: start at the lowest intervened layer (False: always at block 0)."""

    def __init__(self, loaded: LoadedModel, rows: Sequence[int] | None = None, batch_size: int = 64,
                 skip_lower_layers: bool = True):
        self.loaded, self.model = loaded, loaded.model
        self.layers = decoder_layers(self.model)
        self.base = next(m for m in self.model.modules() if getattr(m, "layers", None) is self.layers)
        self.cfg = self.model.config.get_text_config()
        self.n_layers = len(self.layers)
        self.batch_size, self.skip = batch_size, skip_lower_layers
        self.layer_types = list(getattr(self.cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown or getattr(self.cfg, "use_bidirectional_attention", False):
            raise SiteError(f"{loaded.name}: attention {unknown or 'bidirectional'} is not supported by the fast path "
                            "(causal full or sliding-window attention only)")
        self._rope_by_type = "layer_type" in inspect.signature(self.base.rotary_emb.forward).parameters
        head = self.model.get_output_embeddings()
        self.full_weight, self.full_bias = head.weight, head.bias
        self.rows = None if rows is None else list(rows)
        self.weight = head.weight if rows is None else head.weight[self.rows]
        self.bias = None if head.bias is None or rows is None else head.bias[self.rows]
        self.softcap = getattr(self.cfg, "final_logit_softcapping", None)

    def _head(self, h: torch.Tensor, weight, bias) -> torch.Tensor:
        """Final-normed `(k, d_model)` -> logits `(k, n_out)`, as the model's output layer (with its soft-capping)."""
        logits = F.linear(h, weight, bias)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def _blocks(self, prepared: Prepared, h: torch.Tensor, start: int, inputs: list | None = None) -> torch.Tensor:
        """Run blocks start.. on `h (1, k, d_model)`, k copies of the last token at its position; returns the
        final-normed `(1, k, d_model)`. If `inputs` is a list, block l's input `(d_model,)` (column 0) is appended."""
        k = h.shape[1]
        position = torch.full((1, k), len(prepared.ids) - 1, device=h.device)
        own = torch.full((k, k), torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device).fill_diagonal_(0)
        masks = {}
        for keys in prepared.keys[start:]:
            n_prefix = keys.shape[-2]
            if n_prefix not in masks:
                masks[n_prefix] = torch.cat([own.new_zeros(k, n_prefix), own], dim=1)[None, None]
        types = set(self.layer_types)
        if self._rope_by_type:
            rope = {t: self.base.rotary_emb(h, position, t) for t in types}
        else:
            rope = dict.fromkeys(types, self.base.rotary_emb(h, position))
        cache = _PrefixKV(prepared.keys, prepared.values)
        for layer in range(start, self.n_layers):
            if inputs is not None:
                inputs.append(h[0, 0])
            h = self.layers[layer](h, attention_mask=masks[prepared.keys[layer].shape[-2]],
                                   position_embeddings=rope[self.layer_types[layer]], position_ids=position,
                                   cache=cache)
        return self.base.norm(h)

    def prepare(self, ids: Sequence[int]) -> Prepared:
        """Prefix keys and values (the model's own forward, once) and the clean run of the last token."""
        ids = tuple(int(i) for i in ids)
        if len(ids) < 2:
            raise SiteError("the fast path needs a prompt of at least two tokens")
        device = self.loaded.device
        with torch.inference_mode():
            prefix = self.base(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True).cache
            prepared = Prepared(ids, [layer.keys for layer in prefix.layers],
                                [layer.values for layer in prefix.layers], None, {}, None, None)
            h = self.model.get_input_embeddings()(torch.tensor([ids[-1:]], device=device))
            resid = []
            with hooked(self.model, reads=all_sites(self.n_layers)) as read:
                final = self._blocks(prepared, h, 0, inputs=resid)
            full = self._head(final[:, -1], self.full_weight, self.full_bias)[0]
        prepared.sites = {site: value[0] for site, value in read.items()}
        prepared.resid = torch.stack([*resid, prepared.sites[Site("h", self.n_layers - 1)]])
        prepared.logits = full if self.rows is None else full[self.rows]
        prepared.log_norm = torch.logsumexp(full.double(), dim=-1)
        return prepared

    def _start(self, group: Group) -> int:
        return min((iv.site.layer for iv in group), default=self.n_layers - 1) if self.skip else 0

    def run(self, prepared: Prepared, groups: Sequence[Group]) -> torch.Tensor:
        """Logits `(len(groups), n_out)` of the last token with group j's interventions `groups[j]`."""
        if prepared.keys is None:
            raise SiteError("this prepared prompt was stored without its prefix cache; prepare it again to run it")
        for group in groups:
            for iv in group:
                iv.site.check(self.n_layers)
                if iv.position not in (-1, len(prepared.ids) - 1):
                    raise SiteError(f"intervention at {iv.site} position {iv.position}: the fast path recomputes "
                                    "the last token only (use plain_logits for other positions)")
        order = sorted(range(len(groups)), key=lambda i: self._start(groups[i]))
        out = torch.empty(len(groups), len(prepared.logits))
        with torch.inference_mode():
            for at in range(0, len(order), self.batch_size):
                chunk = order[at:at + self.batch_size]
                start = min(self._start(groups[i]) for i in chunk)
                h = prepared.resid[start].expand(1, len(chunk), -1)
                with column_interventions(self.model, [groups[i] for i in chunk]):
                    final = self._blocks(prepared, h, start)
                out[chunk] = self._head(final[0], self.weight, self.bias)
        return out
