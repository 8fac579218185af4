"""Statistics of the causal stages on designed arrays with known answers: the two-way cluster bootstrap covers where
a pair bootstrap does not, the sign-flip and max-statistic tests are calibrated under the null and have power,
BH picks the planted knockout cells, split-half head selection is honest on noise, and the patching summary
(recovery, control, first layer above 0.5, best cell) matches hand-computed values."""
import numpy as np
import pytest

from emotion_circuits import causal_summary, stats
from emotion_circuits.causal import KnockoutResult, HeadResult, PatchingResult, split_halves, top_heads


def _coverage(n_sims: int, two_way: bool) -> float:
    """Share of 95% intervals covering the true mean 0 of pair values a_t + b_s + e over all pairs of 12 x 12 items."""
    rng = np.random.default_rng(0)
    t, s = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    t, s = t.ravel(), s.ravel()
    hits = 0
    for k in range(n_sims):
        values = rng.standard_normal(12)[t] + rng.standard_normal(12)[s] + 0.3 * rng.standard_normal(len(t))
        if two_way:
            counts = stats.two_way_counts(t, s, 300, k)
        else:
            counts = stats.index_counts(stats.bootstrap_index(len(t), 300, k), len(t))
        _, low, high = stats.interval(values.mean(), stats.weighted_means(values, counts))
        hits += low <= 0 <= high
    return hits / n_sims


def test_two_way_bootstrap_covers_where_the_pair_bootstrap_does_not():
    naive, two_way = _coverage(150, False), _coverage(150, True)
    assert naive < 0.5           # pairs sharing items are not independent: the naive interval is far too narrow
    assert two_way > 0.85


def test_two_way_counts_multiply_row_and_column_draws():
    t, s = np.array([0, 0, 1, 1]), np.array([5, 6, 5, 6])
    counts = stats.two_way_counts(t, s, 50, 1)
    assert counts.shape == (50, 4)
    assert np.allclose(counts[:, 0] * counts[:, 3], counts[:, 1] * counts[:, 2])   # rank-one per resample
    assert np.allclose(counts.sum(1), 4)                                          # 2 x 2 draws


def _rejections(effect: float, n_sims: int = 300, n_cells: int = 12, n_units: int = 30) -> tuple[float, float]:
    """(max-statistic rejection rate, uncorrected min-p rejection rate) at 0.05; effect planted in cell 0."""
    rng = np.random.default_rng(1)
    max_hits = min_hits = 0
    for k in range(n_sims):
        shared = rng.standard_normal((n_units, 1))
        diffs = 0.5 * shared + rng.standard_normal((n_units, n_cells)) + rng.choice([-1, 1], (n_units, 1)) * 0
        diffs[:, 0] += effect
        _, p_cell, p_max = stats.sign_flip_test(diffs, 199, k)
        max_hits += p_max <= 0.05
        min_hits += p_cell.min() <= 0.05
    return max_hits / n_sims, min_hits / n_sims


def test_max_statistic_p_is_calibrated_and_has_power():
    null_max, null_min = _rejections(0.0)
    assert 0.02 <= null_max <= 0.08
    assert null_min > 0.2          # the best cell's own p, uncorrected, rejects far too often
    planted, _ = _rejections(0.8, n_sims=60)
    assert planted > 0.8


def test_sign_flip_per_cell_is_calibrated_and_has_power():
    rng = np.random.default_rng(2)
    null = rng.standard_normal((40, 400))
    _, p, _ = stats.sign_flip_test(null, 199, 0)
    assert 0.02 <= np.mean(p <= 0.05) <= 0.08
    _, p, _ = stats.sign_flip_test(null + 0.6, 199, 0)
    assert np.mean(p <= 0.05) > 0.9


def _knockout(n=40, layers=(0, 1, 2, 3, 4, 5), planted=((0, 2), (1, 5)), seed=3) -> KnockoutResult:
    rng = np.random.default_rng(seed)
    shape = (n, 2, len(layers), 2)
    control = {k: np.abs(rng.standard_normal(shape)) for k in ("drop", "kl")}
    effect = {k: control[k] + rng.standard_normal(shape) for k in ("drop", "kl")}
    for site, j in planted:                                  # zero ablation only
        for k in effect:
            effect[k][:, site, j, 0] += 1.5
    return KnockoutResult(["a", "m"], list(layers), ["zero", "mean"], effect["drop"], effect["kl"],
                          control["drop"], control["kl"], np.ones(shape))


def test_knockout_critical_cells_are_the_planted_ones_after_bh():
    out = causal_summary.knockout_summary(_knockout(), 200, 0, 999)
    for metric in ("kl", "drop"):
        assert out["critical"][metric] == {"a": {"zero": [2], "mean": []}, "m": {"zero": [5], "mean": []}}
    row = next(r for r in out["rows"] if (r["site"], r["layer"], r["ablation"]) == ("a", 2, "zero"))
    assert row["kl_minus_control_low"] > 1.0 and row["kl_q"] < 0.05
    assert row["kl"] - row["control_kl"] == pytest.approx(row["kl_minus_control"])


def test_knockout_against_the_raw_effect_would_flag_every_cell():
    """The control matters: an effect equal to its matched control's is not critical, although it is > 0."""
    r = _knockout(planted=())
    r.kl = r.control_kl + 0.01 * np.random.default_rng(0).standard_normal(r.kl.shape)
    out = causal_summary.knockout_summary(r, 200, 0, 999)
    assert sum(len(v) for s in out["critical"]["kl"].values() for v in s.values()) <= 1
    assert all(row["kl_low"] > 0 for row in out["rows"])   # every raw effect is "above 0"


def _heads_on_noise(split: bool, seed: int):
    rng = np.random.default_rng(seed)
    n, layers, n_heads = 60, [0, 1, 2, 3, 4, 5], 80
    drop = rng.standard_normal((n, len(layers), n_heads))          # pure noise: no head matters
    control = rng.standard_normal((n, len(layers), n_heads)) * 0.1
    rank, test = split_halves(n, seed) if split else (np.arange(n), np.arange(n))
    tested = top_heads(drop[rank], layers, 5)
    cols = [(layers.index(layer), head) for layer, head in tested]
    pick = lambda a, rows: np.stack([a[rows][:, j, h] for j, h in cols], axis=1)
    r = HeadResult(layers, rank, test, drop[rank], tested, pick(drop, test), pick(drop, test) * 0,
                   pick(control, test), pick(control, test) * 0)
    return causal_summary.heads_summary(r, 200, seed, 999)


def test_split_half_heads_give_no_false_positive_on_noise():
    same = [len(_heads_on_noise(False, k)["survivors"]) for k in range(5)]
    split = [len(_heads_on_noise(True, k)["survivors"]) for k in range(5)]
    assert np.mean(same) >= 3        # chosen and tested on the same stimuli: noise "survives"
    assert sum(split) <= 1


def test_split_halves_are_disjoint_and_cover():
    a, b = split_halves(11, 0)
    assert len(a) == 5 and len(b) == 6 and not set(a) & set(b) and set(a) | set(b) == set(range(11))


def _patching(ld_patch, ld_control, n_targets=16, layers=(0, 1, 2, 3)):
    """8 emotions x 2 targets each, one source per other emotion; LD_target 0, LD_source 2 for every pair."""
    pairs, tgt, src = [], [], []
    for t in range(n_targets):
        for e in range(8):
            if e != t % 8:
                pairs.append((t, n_targets + (t * 7 + e) % 24))
                tgt.append(t % 8)
                src.append(e)
    n = len(pairs)
    shape = (n, 3, len(layers))
    zeros = np.zeros(n)
    return PatchingResult(["h", "a", "m"], list(layers), np.array(pairs), np.array(tgt), np.array(src),
                          ld_source=zeros + 2, ld_target=zeros, top1_source=np.array(src), top1_target=np.array(tgt),
                          ld_patch=np.broadcast_to(ld_patch, shape).copy(),
                          ld_control=np.broadcast_to(ld_control, shape).copy(),
                          top1_patch=np.broadcast_to(np.array(tgt)[:, None, None], shape).copy(),
                          top1_control=np.broadcast_to(np.array(tgt)[:, None, None], shape).copy())


def test_patching_summary_designed_recovery_control_first_layer_and_best_cell():
    rng = np.random.default_rng(4)
    ld = np.zeros((3, 4))
    ld[0] = [0.2, 0.8, 1.4, 2.0]          # h: recovery 0.1, 0.4, 0.7, 1.0 -> first layer above 0.5 is 2
    ld[2, 1] = 1.0                        # m1: recovery 0.5, the best inner cell
    n = 16 * 7
    r = _patching(ld[None] + 0.05 * rng.standard_normal((n, 3, 4)), 0.05 * rng.standard_normal((n, 3, 4)))
    r.top1_patch[:, 0, 3] = r.src                           # h at the last layer answers the source
    out = causal_summary.patching_summary(r, 300, 0, 999)
    assert out["denominator"]["denominator"] == pytest.approx(2.0) and not out["denominator"]["covers_zero"]
    rows = {(row["site"], row["layer"]): row for row in out["rows"]}
    assert rows["h", 2]["recovery"] == pytest.approx(0.7, abs=0.02)
    assert rows["h", 3]["transfer"] == 1.0 and rows["h", 3]["flip"] == 1.0 and rows["h", 2]["flip"] == 0.0
    assert rows["h", 3]["control_transfer"] == 0.0 and rows["h", 3]["baseline_transfer"] == 0.0
    assert abs(rows["h", 2]["control_recovery"]) < 0.05
    assert rows["m", 1]["above_control"] and not rows["a", 1]["above_control"]
    assert rows["m", 1]["recovery_minus_control_low"] < 0.5 < rows["m", 1]["recovery_minus_control_high"]
    assert out["h"]["first_layer"] == 2 and out["h"]["first_layer_low"] == 2 and out["h"]["first_layer_high"] == 2
    assert out["best"]["site"] == "m" and out["best"]["layer"] == 1 and out["best"]["p_max"] < 0.01
    assert out["best"]["recovery_minus_control"] == pytest.approx(rows["m", 1]["recovery_minus_control"])


def test_patching_summary_flags_a_denominator_interval_covering_zero():
    r = _patching(np.zeros((3, 4)), np.zeros((3, 4)))
    r.ld_source = np.random.default_rng(5).standard_normal(len(r.pairs))
    out = causal_summary.patching_summary(r, 300, 0, 199)
    assert out["denominator"]["covers_zero"] and all(row["denominator_covers_zero"] for row in out["rows"])
