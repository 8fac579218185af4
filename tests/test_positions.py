"""Per-position patching (B item -> its neutral twin at one text token per bin): the recovery statistic against a
simulation where the per-pair ratio fails, the position mapping and agreement with the plain path, bad params."""
import numpy as np
import pytest
import torch

from conftest import tiny_model
from emotion_circuits.config import ConfigError, parse_section
from emotion_circuits.extract import tokenize_prompt
from emotion_circuits.interventions import Engine, plain_scores
from emotion_circuits.positions import (PositionSettings, _ld, choose_pairs, default_layers, patch_positions,
                                        recovery)
from emotion_circuits.readout import AnswerSettings, Readout, calibrate
from emotion_circuits.sites import Intervention, Site
from emotion_circuits.stimuli import Stimulus

TEMPLATE = "Text: {text}\nAnswer:"


def test_recovery_is_a_ratio_of_means_where_per_pair_ratios_explode():
    """Simulation: every patch recovers half of the pair's LD difference (plus noise); the pairs' clean
    differences scatter around 1 with some near 0. The ratio of means finds 0.5 and its interval covers it; the
    mean of per-pair ratios is far off."""
    rng = np.random.default_rng(0)
    n = 200
    ld_n = rng.normal(0, 1, n)
    diff = rng.normal(1.0, 1.0, n)
    ld_b = ld_n + diff
    patched = (ld_n + 0.5 * diff + rng.normal(0, 0.3, n))[:, None]
    out = recovery(patched, ld_b, ld_n, n_boot=500, seed=0)
    per_pair = np.mean((patched[:, 0] - ld_n) / diff)
    assert abs(out["recovery"][0] - 0.5) < 0.1 and out["low"][0] < 0.5 < out["high"][0]
    assert abs(per_pair - 0.5) > 0.5
    assert out["denominator_low"] < 1.0 < out["denominator_high"]


def test_positions_match_the_plain_path_and_stay_in_the_text():
    loaded = tiny_model("llama")
    readout = Readout.build(loaded.tokenizer, AnswerSettings())
    engine = Engine(loaded, readout, batch_size=8)
    item = Stimulus("b-rage-0", "B", "rage", "He shouted at the clerk who lost the file.", pair="n-rage-0")
    twin = Stimulus("n-rage-0", "N", "neutral", "He spoke to the clerk who filed the form.", pair="b-rage-0")
    offsets = torch.zeros(8)
    result = patch_positions(engine, loaded.tokenizer, TEMPLATE, [(item, twin)], offsets, [0, 1], bins=3)
    pb, pn = (tokenize_prompt(loaded.tokenizer, TEMPLATE, s.text) for s in (item, twin))
    b = engine.prepare(pb.ids, positions=True)
    for j, r in enumerate((np.arange(3) + 0.5) / 3):
        src = pb.text_start + int(r * (pb.text_end - pb.text_start))
        dst = pn.text_start + int(r * (pn.text_end - pn.text_start))
        assert pn.text_start <= dst < pn.text_end and pb.text_start <= src < pb.text_end
        groups = [[Intervention(Site("h", layer), "set", b.prompt_resid[layer + 1, src], position=dst)]
                  for layer in (0, 1)]
        expected = _ld(calibrate(plain_scores(loaded, readout, pn.ids, groups), offsets), 0).numpy()
        np.testing.assert_allclose(result.ld_patched[0, :, j], expected, atol=5e-5)
    assert not np.allclose(result.ld_patched[0], result.ld_n[0])


def test_pairs_take_emotions_in_turn_and_need_twins():
    items = [Stimulus(f"b-{e}-{i}", "B", e, "t", pair=f"n-{e}-{i}") for e in ("rage", "grief") for i in range(3)]
    twins = [Stimulus(s.pair, "N", "neutral", "t", pair=s.id) for s in items]
    pairs = choose_pairs(items, twins, ("rage", "grief"), 3)
    assert [p[0].id for p in pairs] == ["b-rage-0", "b-grief-0", "b-rage-1"]
    assert all(t.id == s.pair for s, t in pairs)
    with pytest.raises(ConfigError, match="b-rage-0 has no twin 'n-rage-0'"):
        choose_pairs(items, twins[1:], ("rage", "grief"), 3)
    assert default_layers(30) == [0, 14, 28]


@pytest.mark.parametrize("raw, message", [
    ({"n_pairs": 1}, "params.yaml: positions.n_pairs: must be at least 2"),
    ({"bins": 0}, "params.yaml: positions.bins: must be at least 1"),
    ({"bin": 3}, "params.yaml: positions.bin: unknown key"),
])
def test_bad_position_params(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_section(raw, PositionSettings, "positions")
    assert "\n" not in str(err.value)
