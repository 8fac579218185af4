"""Fast path (prefix keys/values once, last token recomputed, many interventions side by side) against the plain full
forward pass with the same interventions hooked in; the clean run against the model's own forward; residual
identities; hook hygiene; bad interventions."""
import pytest
import torch

from emotion_circuits.interventions import Engine, plain_logits
from emotion_circuits.sites import Intervention, Site, SiteError, all_sites, hooked

PROMPT = "Text: The lift stopped between floors and the lights went out.\nAnswer:"  # > the tiny sliding window (16)
# Tiny float32 models: the two paths differ only in summation order (measured max |diff| ~2e-7).
TINY_ATOL = 1e-5
# Embedded models, float32: largest |logit| 34 (SmolLM2) and 58 (Gemma 3); on 500 interventions of the bench the
# measured max |diff| was 2.3e-4 and 1.0e-4 (different summation order over 30 / 18 layers).
EMBEDDED_ATOL = 5e-4


def ids_of(loaded, text=PROMPT):
    return loaded.tokenizer(text)["input_ids"]


def mixed_groups(n_layers: int, d_model: int, n_heads: int, seed: int = 0):
    """Every op on every kind at several layers, a head ablation, a two-intervention group and the empty group."""
    g = torch.Generator().manual_seed(seed)
    layers = sorted({0, n_layers // 2, n_layers - 1})
    groups = [[]]
    for layer in layers:
        for kind in "ham":
            site = Site(kind, layer)
            unit = torch.nn.functional.normalize(torch.randn(d_model, generator=g), dim=0)
            groups += [[Intervention(site, "set", 3 * torch.randn(d_model, generator=g))],
                       [Intervention(site, "zero")],
                       [Intervention(site, "add", torch.randn(d_model, generator=g))],
                       [Intervention(site, "random", unit)]]
    groups.append([Intervention(Site("a", layers[-1]), "zero", head=n_heads - 1)])
    groups.append([Intervention(Site("a", layers[0]), "zero", head=0),
                   Intervention(Site("m", layers[-1]), "add", torch.randn(d_model, generator=g))])
    return groups


@pytest.mark.parametrize("skip", [True, False])
def test_fast_path_equals_plain_path_tiny(tiny, skip):
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
    engine = Engine(tiny, batch_size=5, skip_lower_layers=skip)  # several chunks, each with its own start layer
    fast = engine.run(engine.prepare(ids_of(tiny)), groups)
    plain = plain_logits(tiny, ids_of(tiny), groups)
    torch.testing.assert_close(fast, plain, rtol=0, atol=TINY_ATOL)
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))
    assert (plain[1:] - plain[0]).abs().amax(-1).min() > 1e-3  # every intervention does change the logits


def test_restricted_rows_are_those_rows_of_the_full_logits(tiny):
    rows = [5, 17, 100, 3]
    groups = mixed_groups(3, tiny.model.config.hidden_size, tiny.model.config.num_attention_heads)[:6]
    full_engine, row_engine = Engine(tiny), Engine(tiny, rows=rows)
    full = full_engine.run(full_engine.prepare(ids_of(tiny)), groups)
    prepared = row_engine.prepare(ids_of(tiny))
    torch.testing.assert_close(row_engine.run(prepared, groups), full[:, rows], rtol=0, atol=1e-6)
    torch.testing.assert_close(prepared.logits, full[0, rows], rtol=0, atol=1e-6)


def test_clean_run_matches_the_model(tiny):
    """prepare(): logits, every site and every block input equal the plain forward pass's."""
    engine = Engine(tiny)
    prepared = engine.prepare(ids_of(tiny))
    n_layers = engine.n_layers
    with torch.inference_mode(), hooked(tiny.model, reads=all_sites(n_layers)) as cache:
        out = tiny.model(input_ids=torch.tensor([ids_of(tiny)]), output_hidden_states=True)
    logits = out.logits[0, -1]
    torch.testing.assert_close(prepared.logits, logits, rtol=0, atol=TINY_ATOL)
    torch.testing.assert_close(prepared.log_norm.float(), torch.logsumexp(logits, -1), rtol=0, atol=TINY_ATOL)
    for site in all_sites(n_layers):
        torch.testing.assert_close(prepared.sites[site], cache[site][0], rtol=0, atol=TINY_ATOL)
    for layer in range(n_layers):  # hidden_states[l] is the input of block l (the last one is final-normed)
        torch.testing.assert_close(prepared.resid[layer], out.hidden_states[layer][0, -1], rtol=0, atol=TINY_ATOL)


def test_same_stimulus_patch_changes_nothing_and_a_far_value_does(tiny):
    engine = Engine(tiny, batch_size=7)
    prepared = engine.prepare(ids_of(tiny))
    sites = all_sites(engine.n_layers)
    same = engine.run(prepared, [[Intervention(s, "set", prepared.sites[s])] for s in sites])
    torch.testing.assert_close(same, prepared.logits.expand_as(same), rtol=0, atol=TINY_ATOL)
    far = engine.run(prepared, [[Intervention(s, "set", -50 * prepared.sites[s])] for s in sites])
    assert (far - prepared.logits).abs().amax(-1).min() > 1e-2


def test_zeroing_a_site_removes_its_term_from_the_residual(tiny):
    """At the last layer L-1, h = h[L-2] + a + m: zeroing m leaves h[L-2] + a (a does not depend on m); zeroing
    a and m leaves h[L-2]; zeroing h leaves nothing. The logits are then the output layer on those sums."""
    engine = Engine(tiny)
    prepared = engine.prepare(ids_of(tiny))
    last = engine.n_layers - 1
    a, m, h = (Site(k, last) for k in "amh")
    out = engine.run(prepared, [[Intervention(m, "zero")],
                                [Intervention(a, "zero"), Intervention(m, "zero")],
                                [Intervention(h, "zero")]])
    h_prev = prepared.resid[last]
    assert torch.allclose(h_prev + prepared.sites[a] + prepared.sites[m], prepared.sites[h], atol=1e-5)
    expected = [h_prev + prepared.sites[a], h_prev, torch.zeros_like(h_prev)]
    with torch.inference_mode():
        heads = [engine._head(engine.base.norm(x[None]), engine.weight, engine.bias)[0] for x in expected]
    torch.testing.assert_close(out, torch.stack(heads), rtol=0, atol=TINY_ATOL)


def test_runs_leave_prefix_and_model_untouched(tiny):
    engine = Engine(tiny, batch_size=4)
    prepared = engine.prepare(ids_of(tiny))
    keys = [k.clone() for k in prepared.keys]
    groups = mixed_groups(3, tiny.model.config.hidden_size, tiny.model.config.num_attention_heads)
    first = engine.run(prepared, groups)
    assert torch.equal(engine.run(prepared, groups), first)
    assert all(torch.equal(a, b) for a, b in zip(keys, prepared.keys))
    hooks = [m for m in tiny.model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []
    with pytest.raises(SiteError):
        engine.run(prepared, [[Intervention(Site("m", 1), "zero")], [Intervention(Site("m", 1), "set", torch.zeros(3))]])
    assert [m for m in tiny.model.modules() if m._forward_hooks or m._forward_pre_hooks] == []


@pytest.mark.parametrize("group, message", [
    ([Intervention(Site("h", 1), "zero", position=0)], "last token only"),
    ([Intervention(Site("h", 9), "zero")], "layer 9 out of range"),
    ([Intervention(Site("a", 1), "zero", head=4)], "head 4 at a1: out of range"),
    ([Intervention(Site("m", 1), "set", torch.zeros(3))], "has 3 numbers, expected 32"),
])
def test_bad_interventions_are_one_line_errors(tiny, group, message):
    engine = Engine(tiny)
    with pytest.raises(SiteError, match=message) as err:
        engine.run(engine.prepare(ids_of(tiny)), [group])
    assert "\n" not in str(err.value)


def test_prepared_without_cache_cannot_run(tiny):
    engine = Engine(tiny)
    light = engine.prepare(ids_of(tiny)).without_cache()
    with pytest.raises(SiteError, match="without its prefix cache"):
        engine.run(light, [[]])


@pytest.mark.slow
def test_fast_path_equals_plain_path_embedded(embedded_model):
    """Both embedded architectures, every kind at three depths, a head, the empty group; full vocabulary."""
    cfg = embedded_model.model.config.get_text_config()
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
    groups = [g for g in groups if not g or g[0].op in ("set", "zero")]  # set and zero per site, head, pair: 21
    ids = embedded_model.tokenizer("Text: She found the old photographs in a box after the funeral.\nAnswer:")
    ids = ids["input_ids"]
    engine = Engine(embedded_model, batch_size=8)
    fast = engine.run(engine.prepare(ids), groups)
    plain = plain_logits(embedded_model, ids, groups)
    torch.testing.assert_close(fast, plain, rtol=0, atol=EMBEDDED_ATOL)
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))
