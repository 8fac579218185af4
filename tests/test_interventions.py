"""Fast path (prefix keys/values once, the last token and the label words' tokens recomputed, many interventions
side by side) against the plain full forward pass of prompt + label tokens with the same interventions hooked in,
at the last position and at earlier ones; the clean run against the model's own forward; hook hygiene; errors."""
import pytest
import torch

from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.sites import Intervention, Site, SiteError, all_sites, hooked

PROMPT = "Text: The lift stopped between floors and the lights went out.\nAnswer:"  # > the tiny sliding window (16)
# Tiny float32 models: the two paths differ only in summation order; a word's score sums 5-13 token log-probs
# (measured max |diff| ~8e-6).
TINY_ATOL = 5e-5
# Embedded models, float32: whole-word scores of the real multi-token words; tolerance of the old logit test.
EMBEDDED_ATOL = 5e-4
SYNONYMS = AnswerSettings(words={"rage": ("rage", "anger")})  # byte tokens: every word is 5-11 tokens


def ids_of(loaded, text=PROMPT):
    return loaded.tokenizer(text)["input_ids"]


def engine_for(loaded, **kwargs) -> Engine:
    return Engine(loaded, Readout.build(loaded.tokenizer, SYNONYMS), **kwargs)


def mixed_groups(n_layers: int, d_model: int, n_heads: int, seed: int = 0, position: int = -1):
    """Every op on every kind at several layers, a head ablation, a two-intervention group and the empty group."""
    g = torch.Generator().manual_seed(seed)
    layers = sorted({0, n_layers // 2, n_layers - 1})
    groups = [[]]
    for layer in layers:
        for kind in "ham":
            site = Site(kind, layer)
            unit = torch.nn.functional.normalize(torch.randn(d_model, generator=g), dim=0)
            groups += [[Intervention(site, "set", 3 * torch.randn(d_model, generator=g), position=position)],
                       [Intervention(site, "zero", position=position)],
                       [Intervention(site, "add", torch.randn(d_model, generator=g), position=position)],
                       [Intervention(site, "random", unit, position=position)]]
    groups.append([Intervention(Site("a", layers[-1]), "zero", head=n_heads - 1, position=position)])
    groups.append([Intervention(Site("a", layers[0]), "zero", head=0, position=position),
                   Intervention(Site("m", layers[-1]), "add", torch.randn(d_model, generator=g))])
    return groups


@pytest.mark.parametrize("skip", [True, False])
def test_fast_path_equals_plain_path_tiny(tiny, skip):
    """Multi-token labels (every byte-level word), interventions at three layers, several chunks."""
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
    engine = engine_for(tiny, batch_size=5, skip_lower_layers=skip)
    fast = engine.run(engine.prepare(ids_of(tiny)), groups)
    plain = plain_scores(tiny, engine.readout, ids_of(tiny), groups)
    torch.testing.assert_close(fast, plain, rtol=0, atol=TINY_ATOL)
    assert (plain[1:] - plain[0]).abs().amax(-1).min() > 5e-4  # every intervention does change the scores


@pytest.mark.parametrize("position", [2, -4])
def test_fast_path_from_an_earlier_position_equals_plain_path_tiny(tiny, position):
    """Interventions at an earlier prompt position (2: outside the last token's sliding window of 16; 4th from the
    end), mixed with groups at the last token; the prompt is recomputed from that position on."""
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, position=position)
    engine = engine_for(tiny, batch_size=6)
    prepared = engine.prepare(ids_of(tiny), positions=True)
    fast = engine.run(prepared, groups)
    plain = plain_scores(tiny, engine.readout, ids_of(tiny), groups)
    torch.testing.assert_close(fast, plain, rtol=0, atol=TINY_ATOL)
    effect = (plain[1:] - plain[0]).abs().amax(-1)
    if tiny.name != "tiny-llama" and position == 2:
        # sliding windows of 16 keep many changes at position 2 from reaching the end (~70 tokens): some do not
        assert (effect < TINY_ATOL).any() and (effect > 1e-3).any()
    else:
        assert effect.median() > 1e-3  # an earlier change reaches the answer


def test_a_shared_prefix_run_once_equals_each_prompt_from_its_first_token(tiny):
    """Two prompts with a common start longer than the sliding window (16): prepared with the shared prefix run once
    (`shared=`), the clean run (keys, values, block inputs at every position, sites, scores) and interventions at
    an earlier position equal the prompt run from its first token. The check can fail: a kept run of another
    prefix of the same length gives other scores."""
    head = "Text: The lift stopped between floors and the lights went out. "
    prompts = [ids_of(tiny, head + "Then it moved.\nAnswer:"), ids_of(tiny, head + "Nobody came.\nAnswer:")]
    shared = next(i for i, (a, b) in enumerate(zip(*prompts)) if a != b)
    assert shared > 16
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, position=-6)
    engine = engine_for(tiny, batch_size=8)
    for ids in prompts:
        once, alone = engine.prepare(ids, positions=True, shared=shared), engine.prepare(ids, positions=True)
        for a, b in [*zip(once.keys, alone.keys), *zip(once.values, alone.values),
                     (once.resid, alone.resid), (once.prompt_resid, alone.prompt_resid), (once.raw, alone.raw)]:
            torch.testing.assert_close(a, b, rtol=0, atol=TINY_ATOL)
        torch.testing.assert_close(engine.run(once, groups), engine.run(alone, groups), rtol=0, atol=TINY_ATOL)
    assert list(engine._shared) == [tuple(prompts[0][:shared])]
    other = ids_of(tiny, "Text: A dog barked at the far end of the yard, twice and loud. Then it moved.\nAnswer:")
    engine._shared[tuple(prompts[0][:shared])] = engine._shared_run(tuple(other[:shared]), True)
    wrong = engine.prepare(prompts[0], shared=shared)
    assert (wrong.raw - engine.prepare(prompts[0]).raw).abs().max() > 1e-3


def test_clean_run_matches_the_model(tiny):
    """prepare(): every site and every block input at the last token equal the plain forward pass's, the clean
    scores the plain path's, and the prefix states the hidden states at earlier positions."""
    engine = engine_for(tiny)
    ids = ids_of(tiny)
    prepared = engine.prepare(ids, positions=True)
    n_layers = engine.n_layers
    with torch.inference_mode(), hooked(tiny.model, reads=all_sites(n_layers)) as cache:
        out = tiny.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    for site in all_sites(n_layers):
        torch.testing.assert_close(prepared.sites[site], cache[site][0], rtol=0, atol=1e-5)
    for layer in range(n_layers):  # hidden_states[l] is the input of block l (the last one is final-normed)
        torch.testing.assert_close(prepared.resid[layer, 0], out.hidden_states[layer][0, -1], rtol=0, atol=1e-5)
        torch.testing.assert_close(prepared.prompt_resid[layer], out.hidden_states[layer][0, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(prepared.resid[-1, 0], prepared.sites[Site("h", n_layers - 1)], rtol=0, atol=1e-5)
    torch.testing.assert_close(prepared.raw, plain_scores(tiny, engine.readout, ids, [[]])[0], rtol=0, atol=TINY_ATOL)


def test_same_stimulus_patch_changes_nothing_and_a_far_value_does(tiny):
    engine = engine_for(tiny, batch_size=7)
    prepared = engine.prepare(ids_of(tiny))
    sites = all_sites(engine.n_layers)
    same = engine.run(prepared, [[Intervention(s, "set", prepared.sites[s])] for s in sites])
    torch.testing.assert_close(same, prepared.raw.expand_as(same), rtol=0, atol=TINY_ATOL)
    far = engine.run(prepared, [[Intervention(s, "set", -50 * prepared.sites[s])] for s in sites])
    assert (far - prepared.raw).abs().amax(-1).min() > 1e-3


def test_runs_leave_prefix_and_model_untouched(tiny):
    engine = engine_for(tiny, batch_size=4)
    prepared = engine.prepare(ids_of(tiny))
    keys = [k.clone() for k in prepared.keys]
    groups = mixed_groups(3, tiny.model.config.hidden_size, tiny.model.config.num_attention_heads)
    first = engine.run(prepared, groups)
    assert torch.equal(engine.run(prepared, groups), first)
    assert all(torch.equal(a, b) for a, b in zip(keys, prepared.keys))
    assert [m for m in tiny.model.modules() if m._forward_hooks or m._forward_pre_hooks] == []
    with pytest.raises(SiteError):
        engine.run(prepared, [[Intervention(Site("m", 1), "zero")], [Intervention(Site("m", 1), "set", torch.zeros(3))]])
    assert [m for m in tiny.model.modules() if m._forward_hooks or m._forward_pre_hooks] == []


@pytest.mark.parametrize("group, message", [
    ([Intervention(Site("h", 1), "zero", position=0)], "prepare the prompt with positions=True"),
    ([Intervention(Site("h", 1), "zero", position=500)], "position 500: outside the prompt"),
    ([Intervention(Site("h", 9), "zero")], "layer 9 out of range"),
    ([Intervention(Site("a", 1), "zero", head=4)], "head 4 at a1: out of range"),
    ([Intervention(Site("m", 1), "set", torch.zeros(3))], "has 3 numbers, expected 32"),
])
def test_bad_interventions_are_one_line_errors(tiny, group, message):
    engine = engine_for(tiny)
    with pytest.raises(SiteError, match=message) as err:
        engine.run(engine.prepare(ids_of(tiny)), [group])
    assert "\n" not in str(err.value)


def test_prepared_without_cache_cannot_run(tiny):
    engine = engine_for(tiny)
    light = engine.prepare(ids_of(tiny)).without_cache()
    with pytest.raises(SiteError, match="without its prefix cache"):
        engine.run(light, [[]])


@pytest.mark.slow
def test_fast_path_equals_plain_path_embedded(embedded_model):
    """Both embedded architectures, the real label words (' lo'+'athing', ...): set on every kind at three depths,
    a pair and the empty group at the last position; zero on every kind at three depths and a head at an earlier one
    (each plain forward costs about a second here; every op at every position is checked on the tiny models)."""
    cfg = embedded_model.model.config.get_text_config()
    ids = embedded_model.tokenizer("Text: She found the old photographs in a box after the funeral.\nAnswer:")
    ids = ids["input_ids"]
    engine = Engine(embedded_model, Readout.build(embedded_model.tokenizer, AnswerSettings()), batch_size=8)
    assert max(len(s) for s in engine.readout.sequences) >= 2
    prepared = engine.prepare(ids, positions=True)
    for position, op in ((-1, "set"), (len(ids) - 6, "zero")):
        groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, position=position)
        groups = [g for g in groups if not g or g[0].op == op or (position == -1 and len(g) == 2)]
        fast = engine.run(prepared, groups)
        plain = plain_scores(embedded_model, engine.readout, ids, groups)
        torch.testing.assert_close(fast, plain, rtol=0, atol=EMBEDDED_ATOL)
        assert torch.equal(fast.argmax(-1), plain.argmax(-1))


def _per_word_by_hand(loaded, readout, ids, normalize_first: bool, normalize_rest: bool) -> torch.Tensor:
    """Clean whole-word scores from the model's own forward on prompt + word: per token its logit, minus the
    vocabulary's logsumexp where asked (column 0: the last prompt token; the rest: the word's own tokens)."""
    words = []
    with torch.inference_mode():
        for seq in readout.sequences:
            logits = loaded.model(torch.tensor([list(ids) + list(seq[:-1])])).logits[0, len(ids) - 1:].float()
            score = 0.0
            for j, token in enumerate(seq):
                normalize = normalize_first if j == 0 else normalize_rest
                score += logits[j, token] - (torch.logsumexp(logits[j], -1) if normalize else 0.0)
            words.append(score)
    return readout.combine(torch.stack(words)[None])


def test_relative_scores_differ_from_log_probs_by_one_constant_per_group(tiny):
    """relative=True leaves out the last prompt token's log-normalizer: the same for every word of a group, so the
    raw scores move by one constant per group and the calibrated answers (log-softmax over emotions) do not move."""
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
    engine = engine_for(tiny, batch_size=5)
    prepared = engine.prepare(ids_of(tiny))
    full, relative = engine.run(prepared, groups), engine.run(prepared, groups, relative=True)
    shift = relative - full
    assert shift.std(-1).max() < TINY_ATOL                               # one constant per group ...
    assert shift.mean(-1).abs().min() > 1.0                              # ... and not zero: the normalizer is left out
    torch.testing.assert_close(torch.log_softmax(relative, -1), torch.log_softmax(full, -1), rtol=0, atol=TINY_ATOL)


def test_only_the_first_column_normalizer_may_be_dropped(tiny):
    """The method can fail: leaving out the later columns' normalizers too (each word's own tokens are predicted at
    columns that differ between words) changes the calibrated answers; leaving out column 0's alone does not."""
    readout = Readout.build(tiny.tokenizer, AnswerSettings())
    assert max(len(s) for s in readout.sequences) > 1                    # byte-level: multi-token words
    ids = ids_of(tiny)
    truth = torch.log_softmax(_per_word_by_hand(tiny, readout, ids, True, True), -1)
    first_dropped = torch.log_softmax(_per_word_by_hand(tiny, readout, ids, False, True), -1)
    all_dropped = torch.log_softmax(_per_word_by_hand(tiny, readout, ids, False, False), -1)
    torch.testing.assert_close(first_dropped, truth, rtol=0, atol=TINY_ATOL)
    assert (all_dropped - truth).abs().max() > 0.05
    engine = Engine(tiny, readout, batch_size=3)
    fast = engine.run(engine.prepare(ids), [[]], relative=True)
    torch.testing.assert_close(torch.log_softmax(fast, -1), truth, rtol=0, atol=TINY_ATOL)


@pytest.mark.parametrize("batch_size", [1, 64])
def test_pooled_output_layer_is_chunk_invariant(tiny, batch_size, monkeypatch):
    """The output layer runs on every chunk's columns at once, split by LOGIT_BUDGET: any chunking and any budget
    give the same scores (rows stay with their groups after the sort by starting layer)."""
    import emotion_circuits.interventions as interventions
    cfg = tiny.model.config
    groups = mixed_groups(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)[::3]  # every op, every kind
    ids = ids_of(tiny)
    reference = engine_for(tiny, batch_size=len(groups)).run(engine_for(tiny).prepare(ids), groups, relative=True)
    monkeypatch.setattr(interventions, "LOGIT_BUDGET", 5 * tiny.model.config.vocab_size)  # 5 rows per matmul
    engine = engine_for(tiny, batch_size=batch_size)
    torch.testing.assert_close(engine.run(engine.prepare(ids), groups, relative=True), reference, rtol=0,
                               atol=TINY_ATOL)


def test_clean_runs_scored_together_equal_each_scored_alone(tiny):
    """score_clean runs the output layer on many clean runs at once: the same raw scores as prepare's own."""
    engine = engine_for(tiny)
    texts = [PROMPT, "Text: She read the letter twice.\nAnswer:", "Text: x\nAnswer:"]
    alone = [engine.prepare(ids_of(tiny, t)).raw for t in texts]
    later = [engine.prepare(ids_of(tiny, t), score=False) for t in texts]
    assert all(p.raw is None for p in later)
    engine.score_clean(later)
    torch.testing.assert_close(torch.stack([p.raw for p in later]), torch.stack(alone), rtol=0, atol=TINY_ATOL)
