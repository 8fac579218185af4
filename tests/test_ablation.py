"""Directional ablation (issue 25 item 4): the project op leaves h orthogonal to the subspace at every position and
equals the plain hooked forward through the fast path's clean run; the 8 difference-of-means directions have rank
7; on synthetic activations with the class planted in a low-dimensional subspace, projecting it out drops the refit
AUROC to chance while the norm-matched random subspace does not; an unmatched uniform subspace removes far less norm;
projecting at the extraction position only leaves the class recoverable downstream; bad params fail in one line."""
import numpy as np
import pytest
import torch

from conftest import tiny_model
from emotion_circuits.ablation import (AblationSettings, Run, ablated_items, ablated_items_plain, ablation_rows,
                                       clean_items, emotion_basis, matched_random, project,
                                       removed_norm, uniform_random)
from emotion_circuits.config import EMOTIONS, ConfigError
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.readout import AnswerSettings, Readout
from emotion_circuits.sites import Intervention, Site, SiteError, hooked, site_module

TEMPLATE = "Text: {text}\nAnswer:"


def _basis(d: int, r: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(uniform_random(d, r, np.random.default_rng(seed))).float()


def test_projection_leaves_h_orthogonal_at_every_position_and_a_null_basis_changes_nothing(tiny):
    ids = torch.tensor([tokenize_prompt(tiny.tokenizer, TEMPLATE, "The clerk filed the form on time.").ids])
    d = tiny.model.config.hidden_size
    basis = _basis(d, 7)
    seen = []                                  # h[1] at every position as it flows on (hidden_states would not
    module, _ = site_module(tiny.model, Site("h", 1))                  # show a hook's edit)
    with torch.inference_mode():
        clean = tiny.model(input_ids=ids, output_hidden_states=True)
        with hooked(tiny.model, interventions=[Intervention(Site("h", 1), "project", basis)]):
            handle = module.register_forward_hook(lambda _m, _i, o: seen.append(o[0] if isinstance(o, tuple) else o))
            try:
                out = tiny.model(input_ids=ids)
            finally:
                handle.remove()
        h = seen[0][0]
        assert h.shape[0] == ids.shape[1] > 20
        assert ((h @ basis.T).norm(dim=-1) / h.norm(dim=-1)).max() < 1e-5
        assert not torch.allclose(out.logits, clean.logits, atol=1e-4)
        for null in (torch.zeros(0, d), None):
            if null is None:                                           # orthogonal to every h[1]: remove the span
                x = clean.hidden_states[2][0].double()
                q = torch.linalg.svd(x, full_matrices=True)[2][x.shape[0]:] if x.shape[0] < d else None
                if q is None:
                    continue
                null = q[:3].float()
            with hooked(tiny.model, interventions=[Intervention(Site("h", 1), "project", null)]):
                same = tiny.model(input_ids=ids).logits
            torch.testing.assert_close(same, clean.logits, rtol=0, atol=1e-5)


def test_fast_path_clean_run_under_the_projection_equals_the_plain_hooked_forward(tiny):
    readout = Readout.build(tiny.tokenizer, AnswerSettings())
    engine = Engine(tiny, readout)
    ids = tokenize_prompt(tiny.tokenizer, TEMPLATE, "The clerk filed the form on time.").ids
    iv = Intervention(Site("h", 1), "project", _basis(tiny.model.config.hidden_size, 7))
    with hooked(tiny.model, interventions=[iv]):
        fast = engine.prepare(ids).raw
    plain = plain_scores(tiny, readout, ids, [[iv]])[0]
    torch.testing.assert_close(fast, plain, rtol=0, atol=5e-5)
    assert (fast - engine.prepare(ids).raw).abs().max() > 1e-3        # the projection does move the scores
    with pytest.raises(SiteError, match="every position"):
        engine.run(engine.prepare(ids), [[iv]])


def test_ablated_runs_from_the_clean_states_equal_the_plain_run_from_the_first_token(tiny):
    """The fast path starts each condition at block l + 1 from the clean h[l] projected, all bases side by side;
    the plain path runs every prompt from its first token under the project hook. Same h at every layer at the
    extraction position and the same calibrated scores; and a wrong start (projecting h[l-1] instead) differs."""
    readout = Readout.build(tiny.tokenizer, AnswerSettings())
    engine = Engine(tiny, readout)
    d, layer = tiny.model.config.hidden_size, 1
    prompts = [tokenize_prompt(tiny.tokenizer, TEMPLATE, t).ids for t in
               ("The clerk filed the form on time.", "A parcel came on Tuesday and was signed for.")]
    offsets = torch.randn(len(EMOTIONS))
    bases = [_basis(d, 7, 1).numpy(), _basis(d, 7, 2).numpy(), np.zeros((0, d), np.float32)]
    clean, _, preps = clean_items(engine, prompts, offsets, [layer])
    fast = ablated_items(engine, preps, offsets, layer, bases)
    plain = ablated_items_plain(engine, prompts, offsets, layer, bases)
    for f, p in zip(fast, plain):
        np.testing.assert_allclose(f.h, p.h, rtol=0, atol=2e-4 * np.abs(p.h).max())
        np.testing.assert_allclose(f.scores, p.scores, rtol=0, atol=5e-4)
    np.testing.assert_allclose(fast[2].scores, clean.scores, rtol=0, atol=5e-4)   # the null basis: the clean run
    assert np.abs(fast[0].scores - clean.scores).max() > 1e-3
    wrong = ablated_items_plain(engine, prompts, offsets, layer - 1, bases[:1])[0]
    assert np.abs(wrong.scores - fast[0].scores).max() > 1e-3


def test_a_malformed_basis_is_a_one_line_site_error():
    for bad, msg in ((torch.ones(4), "2-D"), (torch.ones(2, 4), "orthonormal"),
                     (torch.full((1, 4), float("nan")), "non-finite")):
        with pytest.raises(SiteError, match=msg) as err:
            Intervention(Site("h", 0), "project", bad)
        assert "\n" not in str(err.value)
    loaded = tiny_model("llama")
    with pytest.raises(SiteError, match="columns"):
        with hooked(loaded.model, interventions=[Intervention(Site("h", 0), "project", _basis(8, 2))]):
            loaded.model(input_ids=torch.tensor([[1, 2, 3]]))


def planted(n_per: int, d: int, r: int, seed: int, loud: int = 20):
    """Activations `(n, d)` whose class mean sits in an r-dim subspace S, on anisotropic noise (`loud` axes of
    large variance, orthogonal to S) plus a large shared mean, as the residual stream has."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.standard_normal((d, d)))[0].T
    s, noisy = axes[:r], axes[r:r + loud]
    means = rng.standard_normal((len(EMOTIONS), r)) * 3.0
    labels = np.repeat(EMOTIONS, n_per)
    codes = np.repeat(np.arange(len(EMOTIONS)), n_per)
    x = means[codes] @ s + rng.standard_normal((len(codes), d)) * 0.5
    x += (rng.standard_normal((len(codes), loud)) * 6.0) @ noisy + 12.0 * axes[-1]
    return x, labels


def test_ablating_a_planted_subspace_drops_auroc_to_chance_and_the_matched_control_does_not():
    d, settings = 192, AblationSettings(n_folds=4)
    fit, fit_labels = planted(30, d, 7, seed=0)
    x, labels = planted(16, d, 7, seed=0)                               # same geometry, other noise
    x += np.random.default_rng(9).standard_normal(x.shape) * 0.5
    basis = emotion_basis(fit, fit_labels, EMOTIONS)
    assert len(basis) == 7                                              # 8 directions summing to zero: rank 7
    target = removed_norm(fit, basis)
    rng = np.random.default_rng(1)
    matched = matched_random(fit, target, len(basis), 3, rng)
    assert abs(matched.achieved - target) < 0.15 * target and len(basis) < matched.q < d
    uniform = uniform_random(d, len(basis), rng)
    matched_norm = np.mean([removed_norm(x, b) for b in matched.bases])
    assert removed_norm(x, uniform) < 0.6 * matched_norm                # the unmatched control is the lax one
    as_run = lambda h: Run(h[:, None], np.zeros((len(h), 8)))          # noqa: E731  one "layer"
    rows, _ = ablation_rows(as_run(x), as_run(project(x, basis)), [as_run(project(x, b)) for b in matched.bases],
                            labels, EMOTIONS, 0, settings, 200, 0)
    row = rows[0]
    assert row["auroc_clean"] > 0.95 and row["auroc_ablated"] < 0.62 and row["auroc_random"] > 0.85
    assert row["drop_minus_random_low"] > 0.2
    # a subspace that carries nothing: its removal drops nothing (the method can also say "no")
    shuffled = emotion_basis(fit, np.random.default_rng(3).permutation(fit_labels), EMOTIONS)
    rows, _ = ablation_rows(as_run(x), as_run(project(x, np.linalg.qr(
        (np.eye(d) - basis.T @ basis) @ shuffled.T)[0].T)), [as_run(project(x, b)) for b in matched.bases],
        labels, EMOTIONS, 0, settings, 200, 0)
    assert rows[0]["auroc_ablated"] > 0.9 and rows[0]["drop_low"] < 0.05


def test_ablating_only_the_extraction_position_leaves_the_class_recoverable_downstream():
    """A toy later layer: the last position's output mixes in (through a rotation W, as attention and MLP do) the
    mean of the earlier positions. The class is carried at every position; projecting the subspace out of the last
    position only leaves it decodable downstream, projecting it out everywhere does not."""
    d, T = 48, 6
    fit, fit_labels = planted(30, d, 7, seed=2, loud=0)
    basis = emotion_basis(fit, fit_labels, EMOTIONS)
    rng = np.random.default_rng(4)
    seq = np.stack([planted(12, d, 7, seed=2, loud=0)[0] + rng.standard_normal((96, d)) * 0.5 for _ in range(T)], 1)
    labels = planted(12, d, 7, seed=2, loud=0)[1]
    w = np.linalg.qr(rng.standard_normal((d, d)))[0]

    def later(x):
        return x[:, -1] + x[:, :-1].mean(1) @ w
    last_only = seq.copy()
    last_only[:, -1] = project(seq[:, -1], basis)
    runs = {name: Run(later(x)[:, None], np.zeros((len(x), 8)))
            for name, x in (("clean", seq), ("last", last_only), ("all", project(seq, basis)))}
    settings = AblationSettings(n_folds=4)
    rows_last, _ = ablation_rows(runs["clean"], runs["last"], [runs["clean"]], labels, EMOTIONS, 0, settings, 200, 0)
    rows_all, _ = ablation_rows(runs["clean"], runs["all"], [runs["clean"]], labels, EMOTIONS, 0, settings, 200, 0)
    assert rows_last[0]["auroc_ablated"] > 0.9
    assert rows_all[0]["auroc_ablated"] < 0.62


def test_bad_ablation_params_are_one_line_errors():
    stimuli = {"A": "a.jsonl", "B": "b.jsonl"}
    cases = [(dict(set="Z"), "steering.ablation.set"), (dict(set="A"), "steering.ablation.set"),
             (dict(n_items=10), "steering.ablation.n_items"), (dict(layers=(12,)), "steering.ablation.layers"),
             (dict(layers=(3,)), "steering.ablation.layers")]
    for raw, key in cases:
        with pytest.raises(ConfigError, match=key) as err:
            AblationSettings.parse(raw).validate(stimuli, 8, "A", n_layers=4)
        assert "\n" not in str(err.value)
    for raw, key in ((dict(n_folds=1), "n_folds"), (dict(n_random=0), "n_random"), (dict(bogus=1), "bogus")):
        with pytest.raises(ConfigError, match=key):
            AblationSettings.parse(raw)
    assert AblationSettings.parse(None).validate(stimuli, 8, "A", n_layers=30) == [15]


def test_ablation_figure_draws_the_drop_and_its_control_per_ablation_layer():
    import pandas as pd
    from emotion_circuits import figures as F
    rng = np.random.default_rng(0)
    rows = []
    for layer in (1, 3):
        for j in range(layer, 6):
            drop, rnd = rng.uniform(0, 0.3, 2)
            rows.append({"ablation_layer": layer, "layer": j, "depth": (j + 1) / 6, "drop": drop, "drop_low": drop - .1,
                         "drop_high": drop + .1, "random_drop": rnd, "random_drop_low": rnd - .1,
                         "random_drop_high": rnd + .1})
    frame = pd.DataFrame(rows)
    fig = F.ablation_drop({"tiny-a": frame, "tiny-b": frame})
    ax = fig.axes[0]
    assert ax.get_title() == "tiny-a"
    lines = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    for layer in (1, 3):
        part = frame[frame["ablation_layer"] == layer].sort_values("depth")
        for column in ("drop", "random_drop"):
            assert any(y.shape == (len(part),) and np.allclose(y, part[column]) for y in lines), (layer, column)


def test_matched_draws_remove_the_target_norm_on_the_rows_they_are_matched_on():
    """One random subspace at the bisected q removes the target norm only on average (draws spread by several
    hundredths); the kept draws are the closest of many, so each removes the target within 0.01."""
    from emotion_circuits.ablation import N_CANDIDATES, removed_norm
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 64)) * np.geomspace(8.0, 0.2, 64)        # anisotropic rows
    target = 0.45
    matched = matched_random(x, target, 7, 3, rng)
    kept = [removed_norm(x, b) for b in matched.bases]
    assert max(abs(k - target) for k in kept) < 0.01 and abs(matched.achieved - np.mean(kept)) < 1e-9
    axes = np.linalg.svd(x, full_matrices=False)[2][:matched.q]
    spread = [removed_norm(x, np.linalg.qr(rng.standard_normal((matched.q, 7)))[0].T @ axes)
              for _ in range(N_CANDIDATES)]
    assert np.std(spread) > 0.01
