"""Sites h / a / m: the residual identity, equality with output_hidden_states, interventions, hook hygiene."""
import re

import pytest
import torch

from emotion_circuits.sites import Intervention, Site, SiteError, all_sites, decoder_layers, hooked

PROMPT = "Text: The lift stopped between floors.\nAnswer:"
# float32 sums of three vectors: the identity is exact up to rounding of the residual additions.
RTOL, ATOL = 1e-5, 1e-4


def run(loaded, reads=(), interventions=(), **kw):
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").to(loaded.device)
    with torch.inference_mode(), hooked(loaded.model, reads=reads, interventions=interventions, **kw) as cache:
        out = loaded.model(**ids, output_hidden_states=True)
    return out, cache


def check_identity(loaded):
    n_layers = len(decoder_layers(loaded.model))
    out, cache = run(loaded, reads=all_sites(n_layers))
    hidden = out.hidden_states
    for layer in range(n_layers):
        prev = hidden[0][:, -1] if layer == 0 else cache[Site("h", layer - 1)]
        h = cache[Site("h", layer)]
        scale = max(1.0, float(h.abs().max()))  # Gemma's residual grows to ~1e4: compare relative to its size
        torch.testing.assert_close(h, prev + cache[Site("a", layer)] + cache[Site("m", layer)],
                                   rtol=RTOL, atol=ATOL * scale)
        if layer < n_layers - 1:  # the last entry of hidden_states has the final norm applied
            torch.testing.assert_close(h, hidden[layer + 1][:, -1], rtol=0, atol=0)


def test_identity_tiny(tiny):
    check_identity(tiny)


@pytest.mark.slow
def test_identity_embedded(embedded_model):
    check_identity(embedded_model)


def test_overwrite_with_own_value_keeps_logits_and_ablation_changes_them(tiny):
    base, cache = run(tiny, reads=[Site("a", 1), Site("m", 1), Site("h", 1)])
    for kind in "ham":
        site = Site(kind, 1)
        same, _ = run(tiny, interventions=[Intervention(site, "set", cache[site][0])])
        torch.testing.assert_close(same.logits, base.logits, rtol=0, atol=0)
        zeroed, _ = run(tiny, interventions=[Intervention(site, "zero")])
        assert (zeroed.logits[:, -1] - base.logits[:, -1]).abs().max() > 1e-3


def test_zeroing_a_site_removes_its_term_from_the_residual(tiny):
    """h[l] with a[l] zeroed equals h[l-1] + m'[l], where m' is the MLP's output on the changed input."""
    _, cache = run(tiny, reads=[Site("h", 0), Site("a", 1), Site("m", 1), Site("h", 1)],
                   interventions=[Intervention(Site("a", 1), "zero")])
    assert torch.count_nonzero(cache[Site("a", 1)]) == 0
    torch.testing.assert_close(cache[Site("h", 1)], cache[Site("h", 0)] + cache[Site("m", 1)], rtol=RTOL, atol=ATOL)


def test_random_direction_keeps_norm(tiny):
    _, before = run(tiny, reads=[Site("m", 2)])
    direction = torch.nn.functional.normalize(torch.randn(tiny.model.config.hidden_size), dim=0)
    _, after = run(tiny, reads=[Site("m", 2)], interventions=[Intervention(Site("m", 2), "random", direction)])
    torch.testing.assert_close(after[Site("m", 2)].norm(), before[Site("m", 2)].norm())
    torch.testing.assert_close(after[Site("m", 2)][0] / after[Site("m", 2)].norm(), direction)


def test_head_ablation_changes_only_through_that_head(tiny):
    base, _ = run(tiny)
    heads = tiny.model.config.num_attention_heads
    changed = [run(tiny, interventions=[Intervention(Site("a", 0), "zero", head=h)])[0] for h in range(heads)]
    assert all((c.logits[:, -1] - base.logits[:, -1]).abs().max() > 0 for c in changed)
    # zeroing every head zeroes the input of the bias-free output projection, hence a (Gemma's RMSNorm maps 0 to 0)
    all_heads = [Intervention(Site("a", 0), "zero", head=h) for h in range(heads)]
    _, cache = run(tiny, reads=[Site("a", 0)], interventions=all_heads)
    assert torch.count_nonzero(cache[Site("a", 0)]) == 0


def test_hooks_removed_after_exception(tiny):
    modules = list(tiny.model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(tiny.model, reads=all_sites(3), interventions=[Intervention(Site("h", 0), "zero")],
                    attention=True):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


def test_transformer_lens_hook_names_are_aliases_of_h_a_m():
    """blocks.{l}.hook_resid_post / hook_attn_out / hook_mlp_out name the same sites as h / a / m (resid_post is the
    residual after block l, attn_out and mlp_out what each sublayer adds); other hook names are one-line errors."""
    assert Site.parse("blocks.12.hook_resid_post") == Site.parse("h12") == Site("h", 12)
    assert Site.parse(" blocks.0.hook_attn_out ", n_layers=3) == Site("a", 0)
    assert Site.parse("blocks.2.hook_mlp_out", n_layers=3) == Site("m", 2)
    for bad in ["blocks.3.hook_resid_pre", "blocks.x.hook_mlp_out", "blocks.3.hook_mlp_out.x", "blocks3.hook_attn_out"]:
        with pytest.raises(SiteError, match=re.escape(repr(bad))):
            Site.parse(bad)
    with pytest.raises(SiteError, match="out of range"):
        Site.parse("blocks.30.hook_resid_post", n_layers=30)


def test_site_parser_and_bad_values():
    assert Site.parse("h12") == Site("h", 12)
    assert Site.parse("a0", n_layers=3) == Site("a", 0)
    for bad in ["x3", "h", "h-1", "12", "hh1"]:
        with pytest.raises(SiteError, match=repr(bad)):
            Site.parse(bad)
    with pytest.raises(SiteError, match="out of range"):
        Site.parse("m30", n_layers=30)
    with pytest.raises(SiteError, match="op"):
        Intervention(Site("h", 1), "scramble")
    with pytest.raises(SiteError, match="needs a value"):
        Intervention(Site("h", 1), "set")


def test_layer_out_of_range_fails_before_running(tiny):
    with pytest.raises(SiteError, match="out of range"):
        with hooked(tiny.model, reads=[Site("h", 3)]):
            pass


def test_reads_at_a_position_per_row(tiny):
    """A `(batch,)` tensor of positions reads row j at its own position: the same values as reading every row at
    that one position, sites and attention alike."""
    ids = torch.tensor([tiny.tokenizer(PROMPT)["input_ids"]] * 2)
    sites = [Site("h", 0), Site("m", 1), Site("a", 2)]
    with torch.inference_mode():
        with hooked(tiny.model, reads=sites, attention=True, position=torch.tensor([3, 7])) as per_row:
            tiny.model(input_ids=ids)
        for j, pos in enumerate((3, 7)):
            with hooked(tiny.model, reads=sites, attention=True, position=pos) as fixed:
                tiny.model(input_ids=ids)
            for key in [*sites, ("attn", 1)]:
                torch.testing.assert_close(per_row[key][j], fixed[key][j], rtol=0, atol=0)
    assert not torch.equal(per_row[Site("h", 0)][0], per_row[Site("h", 0)][1])
