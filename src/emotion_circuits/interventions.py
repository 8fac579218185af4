"""The intervention engine: one list of `Intervention` declarations per group, run either by a plain full forward
pass per group (the reference) or by the fast path of DESIGN §8; tests run the same declarations through both.
Both return each emotion's raw whole-word score (`readout`): log P(all tokens of its word | prompt), teacher-forced.

Fast path, per prompt. `Engine.prepare` runs the prefix (every token but the last) once through the model and keeps
each layer's keys and values for every prefix position (sliding-window layers too: the window is applied by the
mask), then runs the clean *tree* once: the last prompt token followed by every label word's tokens but its last,
each word a branch (its tokens attend to the prefix, the last prompt token and their own word's earlier tokens;
the last token's output predicts every word's first token, a word's token j predicts its token j+1). It records
the sites of the last token and the input of every block for every tree column. `Engine.run` takes many groups
of interventions and recomputes only the tree, k groups side by side in one sequence (a block-diagonal mask over
the shared prefix keys, so the prefix is never copied k times), from the lowest layer the chunk touches (the layers
below cannot change) up; the label columns attend to the intervened keys and values, and the hooks touch only the
columns of the intervened prompt positions. With `prepare(..., positions=True)` a group may intervene at an
earlier prompt position p: the prompt tokens p..end are recomputed as well, from the prefix keys sliced at p.
Each scored position needs the full-vocabulary log-softmax (its partition function), so the output layer runs over
the whole vocabulary at the tree's columns only. `Engine.run(..., relative=True)`, which every experiment uses
(`causal.scores`), scores relative to the last prompt token's partition function: every word's first token is
predicted by that one column, so its log-normalizer is the same for all eight words and cancels in every calibrated
answer (`readout.calibrate` log-softmaxes over the emotions); that column then needs only the logits of the words'
first tokens, and the full vocabulary runs at the later columns alone (half of the output layer's work when every
multi-token word has two tokens). The clean run (`prepare`) keeps the true log-probabilities (label mass, raw
answers). The output layer runs on the final columns of all chunks of a call together, so its matrix product sees
many rows at once (`LOGIT_BUDGET`).

The decoder blocks are the model's own modules, called in order as the model's forward calls them; only the
architectures of `sites.ARCHITECTURES` with full or sliding-window causal attention are supported.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .decoder import Decoder
from .models import LoadedModel
from .readout import Readout
from .sites import Intervention, Site, SiteError, all_sites, decoder_layers, hooked, site_module

Group = Sequence[Intervention]
LOGIT_BUDGET = 2 ** 26  # floats of full-vocabulary logits computed at once (256 MB in float32)


def _take(output, index):
    return output if index is None or isinstance(output, torch.Tensor) else output[index]


def _put(output, index, new):
    return new if index is None or isinstance(output, torch.Tensor) else (*output[:index], new, *output[index + 1:])


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _compile(model, groups: Sequence[Group], column_of) -> dict[tuple, list]:
    """{(kind, layer, head): slots}; slot j holds every group's j-th intervention at that module as
    {op: (columns `(n,)`, values `(n, features)` or None)}, so each group's own list is applied in its order;
    `column_of(group_index, iv)` is the batch column the intervention acts on."""
    cfg = model.config.get_text_config()
    n_layers, width, head_dim = cfg.num_hidden_layers, cfg.hidden_size, _head_dim(cfg)
    raw: dict[tuple, list[dict]] = {}
    for index, group in enumerate(groups):
        count: dict[tuple, int] = defaultdict(int)
        for iv in group:
            iv.site.check(n_layers)
            if iv.op == "project":
                raise SiteError(f"intervention project at {iv.site}: acts at every position; run it with "
                                "sites.hooked around Engine.prepare (as ablation.py does), not in Engine.run groups")
            if iv.head is not None and not 0 <= iv.head < cfg.num_attention_heads:
                raise SiteError(f"head {iv.head} at {iv.site}: out of range (0..{cfg.num_attention_heads - 1})")
            key = (iv.site.kind, iv.site.layer, iv.head)
            slots = raw.setdefault(key, [])
            if count[key] == len(slots):
                slots.append({})
            slots[count[key]].setdefault(iv.op, []).append((column_of(index, iv), iv.value))
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
def column_interventions(model, groups: Sequence[Group], column_of):
    """Inside this block, the interventions `groups[j]` (in order) act on column `column_of(j, iv)` of the
    one-sequence fast-path batch."""
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
        for (kind, layer, head), plan in _compile(model, groups, column_of).items():
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


def _position(iv: Intervention, n_prompt: int) -> int:
    """The intervention's prompt position (negative counts from the end of the prompt); out of range: SiteError."""
    position = iv.position if iv.position >= 0 else n_prompt + iv.position
    if not 0 <= position < n_prompt:
        raise SiteError(f"intervention at {iv.site} position {iv.position}: outside the prompt ({n_prompt} tokens)")
    return position


def _capped(logits: torch.Tensor, softcap) -> torch.Tensor:
    """Output-layer logits in float32, after the model's logit soft-capping, if any."""
    logits = logits.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def plain_scores(loaded: LoadedModel, readout: Readout, ids: Sequence[int], groups: Sequence[Group]) -> torch.Tensor:
    """Reference: per group, one full forward pass of the prompt followed by each word's tokens (one right-padded
    row per word), the group hooked in by `sites.hooked` at its prompt positions (-1: the prompt's last token).
    Returns raw scores `(len(groups), n_emotions)`."""
    ids, n = list(ids), len(ids)
    width = max(len(seq) for seq in readout.sequences)
    rows = [ids + list(seq[:-1]) + [0] * (width - len(seq)) for seq in readout.sequences]
    mask = [[1] * (n + len(seq) - 1) + [0] * (width - len(seq)) for seq in readout.sequences]
    input_ids = torch.tensor(rows, device=loaded.device)
    attention_mask = torch.tensor(mask, device=loaded.device)
    softcap = getattr(loaded.model.config.get_text_config(), "final_logit_softcapping", None)
    out = []
    with torch.inference_mode():
        for group in groups:
            group = [dataclasses.replace(iv, position=_position(iv, n)) for iv in group]
            with hooked(loaded.model, interventions=group):
                logits = loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                      logits_to_keep=width).logits  # positions n-1 .. n-1+width-1
            lp = torch.log_softmax(logits.float(), dim=-1)  # the model's forward already soft-caps
            words = torch.stack([sum(lp[w, j, t] for j, t in enumerate(seq))
                                 for w, seq in enumerate(readout.sequences)])
            out.append(readout.combine(words))
    return torch.stack(out).float()


class _PrefixKV:
    """Stands in for the model's cache during a fast-path call: each layer's attention gets the prefix's keys and
    values `(1, kv_heads, n_prefix, head_dim)` followed by those of the new columns; nothing is stored."""

    def __init__(self, keys: list, values: list):
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return (torch.cat([self.keys[layer_idx], key_states], dim=-2),
                torch.cat([self.values[layer_idx], value_states], dim=-2))


@dataclass(frozen=True)
class _Tree:
    """The label continuation of the last prompt token. ids `(T,)` (column 0: the last prompt token, set per
    prompt), offset `(T,)` position minus the last token's, allowed `(T, T)` column i may attend to column j;
    per scored token `(R,)`: source (the column whose output predicts it), target (its id), word (its word)."""
    ids: torch.Tensor
    offset: torch.Tensor
    allowed: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    word: torch.Tensor

    @staticmethod
    def build(sequences) -> "_Tree":
        ids, offset, chains = [0], [0], [[0]]
        source, target, word = [], [], []
        for w, seq in enumerate(sequences):
            chain = [0]
            for j, token in enumerate(seq):
                source.append(chain[-1])
                target.append(token)
                word.append(w)
                if j < len(seq) - 1:  # the word's last token predicts nothing that is scored
                    chain = chain + [len(ids)]
                    ids.append(token)
                    offset.append(j + 1)
                    chains.append(chain)
        allowed = torch.zeros(len(ids), len(ids), dtype=torch.bool)
        for column, chain in enumerate(chains):
            allowed[column, chain] = True
        t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        return _Tree(t(ids), t(offset), allowed, t(source), t(target), t(word))


@dataclass
class Prepared:
    """One prompt after its clean run. keys, values: per layer `(1, kv_heads, n_prompt - 1, head_dim)` (every
    prefix position); resid `(n_layers + 1, T, d_model)`: row l is the input of block l at the tree's columns
    (column 0 the last prompt token; row 0 the embeddings, the last row h[L-1]); prompt_resid: the same
    `(n_layers + 1, n_prompt - 1, d_model)` at the prefix positions (only with positions=True); sites: Site ->
    `(d_model,)` clean value at the last token; raw `(n_emotions,)` clean whole-word scores."""
    ids: tuple[int, ...]
    keys: list | None
    values: list | None
    resid: torch.Tensor
    sites: dict
    raw: torch.Tensor
    prompt_resid: torch.Tensor | None = None

    def without_cache(self) -> "Prepared":
        """The same clean run without its prefix keys and values (enough to read sites and answers)."""
        return Prepared(self.ids, None, None, self.resid, self.sites, self.raw)


class Engine(Decoder):
    """Fast-path runner for one model and readout. batch_size: groups per call; skip_lower_layers: start at the
    lowest intervened layer (False: always at block 0)."""

    def __init__(self, loaded: LoadedModel, readout: Readout, batch_size: int = 64, skip_lower_layers: bool = True):
        super().__init__(loaded)
        self.readout = readout
        self.batch_size, self.skip = batch_size, skip_lower_layers
        self.tree = _Tree.build(readout.sequences)
        self._shared: dict = {}   # shared prefix ids -> its run (`_shared_run`)

    def _layout(self, n_prompt: int, start: int):
        """Columns of one group when recomputing from prompt position `start`: the prompt tokens start..n-1, then
        the tree's label columns. Returns (positions `(G,)`, allowed `(G, G)`, index of the last prompt token)."""
        tail, T = n_prompt - start, len(self.tree.ids)
        positions = torch.cat([torch.arange(start, n_prompt), n_prompt - 1 + self.tree.offset[1:]])
        allowed = torch.zeros(tail + T - 1, tail + T - 1, dtype=torch.bool)
        allowed[:tail, :tail] = torch.ones(tail, tail, dtype=torch.bool).tril()
        allowed[tail:, :tail - 1] = True
        allowed[tail - 1:, tail - 1:] = self.tree.allowed
        return positions, allowed, tail - 1

    def _blocks(self, prepared: Prepared, h: torch.Tensor, layer0: int, start: int, k: int,
                inputs: list | None = None) -> torch.Tensor:
        """Run blocks layer0.. on `h (1, k*G, d_model)`: k groups laid out by `_layout(n, start)`; returns the
        final-normed `(1, k*G, d_model)`. If `inputs` is a list, block l's input `(k*G, d_model)` is appended."""
        positions, allowed, _ = self._layout(len(prepared.ids), start)
        masks = self.masks(positions, allowed, k, start, h.dtype, h.device)
        position_ids = positions.repeat(k)[None].to(h.device)
        cache = _PrefixKV([x[..., :start, :] for x in prepared.keys], [x[..., :start, :] for x in prepared.values])
        return self.base.norm(self.forward_from(h, layer0, cache, masks, position_ids, inputs))

    def _scores(self, final: torch.Tensor, relative: bool = False) -> torch.Tensor:
        """Final-normed tree columns `(k, T, d_model)` -> raw scores `(k, n_emotions)`: per word the sum of its
        tokens' log-probabilities (full-vocabulary log-softmax at each source column). relative=True leaves out
        column 0's log-normalizer, the same for every word of a row (exact for calibrated answers): column 0 then
        needs only the logits of the words' first tokens."""
        k, T, _ = final.shape
        tree = self.tree
        source, target = tree.source.to(final.device), tree.target.to(final.device)
        per_token = torch.empty(k, len(source), device=final.device)
        first = source == 0
        if relative:
            w = self.weight[target[first]]
            logits = F.linear(final[:, 0], w, None if self.bias is None else self.bias[target[first]])
            per_token[:, first] = _capped(logits, self.softcap)
            columns, rows = range(1, T), ~first
        else:
            columns, rows = range(T), torch.ones_like(first)
        if len(columns):
            c = torch.tensor(list(columns), device=final.device)
            flat = final[:, c].reshape(k * len(c), -1)                       # row i*len(c)+j: group i, column c[j]
            where = source[rows] - columns[0]                                  # index into c of each scored token
            step = max(1, LOGIT_BUDGET // self.weight.shape[0])
            picked, lse = [], []
            for at in range(0, len(flat), step):
                logits = _capped(F.linear(flat[at:at + step], self.weight, self.bias), self.softcap)
                lse.append(torch.logsumexp(logits, dim=-1))
                picked.append(logits[:, target[rows]])                        # (s, n_rows): every row's targets
            lse = torch.cat(lse).view(k, len(c))
            picked = torch.cat(picked).view(k, len(c), -1)
            per_token[:, rows] = picked.gather(1, where[None, None].expand(k, 1, -1))[:, 0] - lse[:, where]
        words = torch.zeros(k, len(self.readout.words), device=final.device).index_add_(1, tree.word.to(final.device),
                                                                                         per_token)
        return self.readout.combine(words)

    def prepare(self, ids: Sequence[int], positions: bool = False, shared: int = 0, score: bool = True) -> Prepared:
        """Prefix keys and values (the model's own forward, once), and the clean run of the tree. positions=True
        also keeps every block's input at the prefix positions, for interventions at earlier positions.
        shared: the first `shared` tokens are a prefix common to many prompts (the template's fixed part): they
        run once per engine (`_shared_run`) and the model's forward goes on from their cache. score=False leaves
        `raw` to `score_clean`, which runs the output layer on many clean runs at once."""
        ids = tuple(int(i) for i in ids)
        if len(ids) < 2:
            raise SiteError("the fast path needs a prompt of at least two tokens")
        device, n = self.loaded.device, len(ids)
        shared = shared if 0 < shared < n - 1 else 0
        with torch.inference_mode():
            cache, before = DynamicCache(), None
            if shared:
                keys, values, before = self._shared_run(ids[:shared], positions)
                for layer, (k, v) in enumerate(zip(keys, values)):
                    cache.update(k, v, layer)
            states = []
            last = self.layers[-1].register_forward_hook(lambda _m, _i, out: states.append(_take(out, 0)))
            try:
                prefix = self.base(input_ids=torch.tensor([ids[shared:-1]], device=device), cache=cache,
                                   use_cache=True, output_hidden_states=positions)
            finally:
                last.remove()
            prompt_resid = None
            if positions:
                prompt_resid = torch.cat([*prefix.hidden_states[:-1], states[-1]])
                if before is not None:
                    prompt_resid = torch.cat([before, prompt_resid], dim=1)
            prepared = Prepared(ids, [layer.keys for layer in prefix.cache.layers],
                                [layer.values for layer in prefix.cache.layers], None, {}, None, prompt_resid)
            tree_ids = self.tree.ids.clone()
            tree_ids[0] = ids[-1]
            h = self.model.get_input_embeddings()(tree_ids[None].to(device))
            resid = []
            with hooked(self.model, reads=all_sites(self.n_layers), position=0) as read:
                final = self._blocks(prepared, h, 0, n - 1, 1, inputs=resid)
            if score:
                prepared.raw = self._scores(final)[0]
        prepared.sites = {site: value[0] for site, value in read.items()}
        prepared.resid = torch.stack(resid)
        return prepared

    def score_clean(self, prepared: Sequence[Prepared]) -> None:
        """Fill in `raw` of clean runs prepared with score=False, the output layer on all their tree columns
        together (the final norm of each run's last block output `resid[-1]`)."""
        if prepared:
            with torch.inference_mode():
                final = self.base.norm(torch.stack([p.resid[-1] for p in prepared]))
                for p, raw in zip(prepared, self._scores(final)):
                    p.raw = raw

    def _shared_run(self, ids: tuple[int, ...], positions: bool):
        """(keys, values per layer `(1, kv_heads, len(ids), head_dim)`, block inputs `(n_layers + 1, len(ids),
        d_model)` or None) of the shared prefix `ids`, run once per engine and kept (with the block inputs once
        any caller asked for positions)."""
        kept = self._shared.get(ids)
        if kept is None or (positions and kept[2] is None):
            states = []
            last = self.layers[-1].register_forward_hook(lambda _m, _i, out: states.append(_take(out, 0)))
            try:
                out = self.base(input_ids=torch.tensor([ids], device=self.loaded.device), cache=DynamicCache(),
                                use_cache=True, output_hidden_states=positions)
            finally:
                last.remove()
            before = torch.cat([*out.hidden_states[:-1], states[-1]]) if positions else None
            kept = ([layer.keys for layer in out.cache.layers], [layer.values for layer in out.cache.layers], before)
            self._shared[ids] = kept
        return kept

    def _start(self, group: Group) -> int:
        return min((iv.site.layer for iv in group), default=self.n_layers - 1) if self.skip else 0

    def run(self, prepared: Prepared, groups: Sequence[Group], relative: bool = False) -> torch.Tensor:
        """Raw whole-word scores `(len(groups), n_emotions)` (log-probabilities, teacher-forced; `readout`) with
        group j's interventions `groups[j]`, each at its prompt position (-1: the last token). relative=True: plus
        one constant per group, the last token's log-normalizer (see the module docstring), so that only their
        differences and the calibrated answers are defined; exact for those and cheaper."""
        if prepared.keys is None:
            raise SiteError("this prepared prompt was stored without its prefix cache; prepare it again to run it")
        n = len(prepared.ids)
        start = min((_position(iv, n) for group in groups for iv in group), default=n - 1)
        for group in groups:
            for iv in group:
                iv.site.check(self.n_layers)
        if start < n - 1 and prepared.prompt_resid is None:
            raise SiteError(f"intervention at position {start}: prepare the prompt with positions=True to intervene "
                            "before its last token")
        tail = prepared.resid if start == n - 1 else torch.cat([prepared.prompt_resid[:, start:], prepared.resid], 1)
        width, last = tail.shape[1], n - 1 - start
        order = sorted(range(len(groups)), key=lambda i: self._start(groups[i]))
        out = torch.empty(len(groups), len(self.readout.emotions))
        finals = []   # the tree columns of every chunk: the output layer runs on them all at once (`_scores`)
        with torch.inference_mode():
            for at in range(0, len(order), self.batch_size):
                chunk = order[at:at + self.batch_size]
                layer0 = min(self._start(groups[i]) for i in chunk)
                h = tail[layer0].repeat(len(chunk), 1)[None]
                column_of = lambda j, iv: j * width + _position(iv, n) - start  # noqa: E731
                with column_interventions(self.model, [groups[i] for i in chunk], column_of):
                    final = self._blocks(prepared, h, layer0, start, len(chunk))
                finals.append(final.view(len(chunk), width, -1)[:, last:])
            out[order] = self._scores(torch.cat(finals), relative).cpu()
        return out
