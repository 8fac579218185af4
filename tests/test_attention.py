"""Attention shares: hand-built known answers, emotion-word matching on real token shapes, and clear errors."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from emotion_circuits import attention as att
from emotion_circuits.config import ConfigError, parse_section
from emotion_circuits.io import DataError, save_npz

ROOT = Path(__file__).resolve().parents[1]

# <bos> Text : ĠI Ġwas Ġfur ious . \n Answer :      text span [3, 8): "I was furious."
TOKENS = ["<bos>", "Text", ":", "ĠI", "Ġwas", "Ġfur", "ious", ".", "Ċ", "Answer", ":"]
LEXICON = "rage: [furious, livid]\ngrief: [heartbroken]\ngeneral: [emotion, feel*]\nexpressive: [so angry]\n" \
          "note: a description that is not a word list\n"


def stage():
    spec = importlib.util.spec_from_file_location("stage_attention", ROOT / "stages" / "attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lexicon(tmp_path, text: str = LEXICON):
    path = tmp_path / "lexicon.yaml"
    path.write_text(text)
    return att.load_lexicon(path)


def test_shares_on_a_hand_built_example():
    # one stimulus, one layer, two heads, 6 slots of which 5 are prompt tokens; text span [2, 4)
    attention = np.array([[[[0.5, 0.1, 0.2, 0.1, 0.1, 0.0],
                            [0.0, 0.0, 0.3, 0.3, 0.4, 0.0]]]])
    sh = att.shares(attention, np.array([5]), np.array([2]), np.array([4]), np.array([[0, 0, 0, 1, 0, 1]], bool))
    np.testing.assert_allclose(sh["sink"][0, 0], [0.5, 0.0])
    np.testing.assert_allclose(sh["text"][0, 0], [0.3, 0.6])
    np.testing.assert_allclose(sh["template"][0, 0], [0.2, 0.4])
    np.testing.assert_allclose(sh["text"] + sh["sink"] + sh["template"], 1.0)
    np.testing.assert_allclose(sh["emotion_word"][0, 0], [0.1, 0.3])           # slot 5 is beyond the text span
    np.testing.assert_allclose(sh["emotion_word_uniform"][0, 0], [0.15, 0.3])  # 1 of 2 text tokens
    np.testing.assert_allclose(sh["text_ratio"][0, 0], [0.3 / (2 / 5), 0.6 / (2 / 5)])   # 2 of 5 prompt tokens
    np.testing.assert_allclose(sh["sink_ratio"][0, 0], [0.5 * 5, 0.0])
    np.testing.assert_allclose(sh["template_ratio"][0, 0], [0.2 / (2 / 5), 0.4 / (2 / 5)])
    np.testing.assert_allclose(sh["emotion_word_ratio"][0, 0], [0.1 * 5, 0.3 * 5])  # 1 emotion-word token of 5


def test_emotion_words_found_by_word_start_across_tokenizers(tmp_path):
    lex = lexicon(tmp_path)
    assert ("so", "angry") in lex and ("feel*",) in lex and ("a", "description") not in {e[:2] for e in lex}
    mask = att.emotion_word_mask(np.array([TOKENS]), np.array([3]), np.array([8]), lex)
    assert list(np.flatnonzero(mask[0])) == [5, 6]                            # "Ġfur" + "ious"
    sentencepiece = ["<bos>", "▁Fur", "iously", "▁so", "▁angry", "▁feelings", "▁furniture", "▁olivid", "▁livid,"]
    mask = att.emotion_word_mask(np.array([sentencepiece]), np.array([1]), np.array([9]), lex)
    assert list(np.flatnonzero(mask[0])) == [1, 2, 3, 4, 5, 8]
    decoded = [" heart", "broken", " emotional", " emotion", "<0xE2>"]      # decoded strings, byte fallback
    mask = att.emotion_word_mask(np.array([decoded]), np.array([0]), np.array([5]), lex)
    assert list(np.flatnonzero(mask[0])) == [0, 1, 3]                         # "emotional" is not an inflection


def test_lexicon_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.yaml: lexicon not found"):
        att.load_lexicon(tmp_path / "nowhere.yaml")
    with pytest.raises(DataError, match=r"lexicon\.yaml: no words found"):
        lexicon(tmp_path, "title: emotion words\n")


def write_attention(path: Path, n: int, n_layers: int, n_heads: int, text_weight: float, emotions, drop=()):
    """Prompts of TOKENS (11 tokens, text [3, 8)) padded to 12 slots; `text_weight` of each row on the text."""
    T = 12
    attention = np.zeros((n, n_layers, n_heads, T))
    attention[..., 0] = 0.2
    attention[..., 3:8] = text_weight / 5
    attention[..., [1, 2, 8, 9, 10]] = (0.8 - text_weight) / 5
    tokens = np.array([TOKENS + [""]] * n)
    arrays = {"attention": attention.astype(np.float32), "tokens": tokens, "n_tokens": np.full(n, 11),
              "text_start": np.full(n, 3), "text_end": np.full(n, 8), "ids": np.array([f"s{i}" for i in range(n)]),
              "emotions": np.asarray(emotions), "h": np.zeros((n, n_layers, 4), np.float32), "meta": np.array("{}")}
    save_npz(path, **{k: v for k, v in arrays.items() if k not in drop})
    return path


def test_contract_round_trip_with_the_real_extraction(tiny, tmp_path):
    """Extraction of a tiny random model -> .npz -> read_attention: shares sum to 1 and the lexicon word is found."""
    from types import SimpleNamespace

    from emotion_circuits.extract import extract, save_activations

    stimuli = [SimpleNamespace(id="a-rage-01", text="I was so furious at him.", emotion="rage"),
               SimpleNamespace(id="a-grief-01", text="The tray is on the table.", emotion="grief")]
    path = tmp_path / "A.npz"
    save_activations(path, extract(tiny, stimuli, "Choose: rage, grief.\n\nText: {text}\nAnswer:", progress=False))
    data = att.read_attention(path)
    mask = att.emotion_word_mask(data["tokens"], data["text_start"], data["text_end"], (("furious",), ("rage",)))
    assert ["".join(data["tokens"][i][mask[i]]) for i in range(2)] == ["furious", ""]   # "rage" in the template
    sh = att.shares(data["attention"], data["n_tokens"], data["text_start"], data["text_end"], mask)
    np.testing.assert_allclose(sh["text"] + sh["sink"] + sh["template"], 1.0, atol=1e-5)
    assert (sh["emotion_word"] <= sh["text"] + 1e-7).all() and (sh["emotion_word"][1] == 0).all()
    # (the tiny Gemmas' 16-token sliding window hides the word from some layers, so no "> 0" everywhere)


def test_read_attention_errors_are_one_line_and_name_the_file(tmp_path):
    path = write_attention(tmp_path / "A.npz", 4, 2, 2, 0.5, ["rage"] * 4, drop=("text_end",))
    with pytest.raises(DataError) as err:
        att.read_attention(path)
    assert str(err.value) == f"{path}: missing arrays text_end"
    path = write_attention(tmp_path / "B.npz", 4, 2, 2, 0.5, ["rage"] * 4)
    data = dict(np.load(path))
    data["attention"][0, 0, 0, 11] = 0.3                                        # weight on a padding slot
    save_npz(path, **data)
    with pytest.raises(DataError, match=r"B\.npz: attention is not zero beyond n_tokens"):
        att.read_attention(path)
    data["attention"][0, 0, 0, 11] = 0.0
    data["attention"][0, 0, 0, 0] = 0.9
    save_npz(path, **data)
    with pytest.raises(DataError, match=r"B\.npz: attention rows sum to .* not 1"):
        att.read_attention(path)


def test_compare_sets_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(0.3, 0.02, size=(96, 3))
    a = rng.normal(0.4, 0.02, size=(80, 3))
    out = att.compare_sets(a, b, 1000, seed=0)
    np.testing.assert_allclose(out["diff"], 0.1, atol=0.01)
    assert (out["low"] > 0.09).all() and (out["high"] < 0.11).all() and (out["low"] < out["diff"]).all()
    same = att.compare_sets(b, b.copy(), 1000, seed=0)                      # resampled independently
    assert (same["diff"] == 0).all() and ((same["low"] < 0) & (same["high"] > 0)).all()


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"attention\.compare"):
        parse_section({"sets": ["A", "B"], "compare": ["A", "C"]}, att.AttentionSettings, "attention")


PARAMS = """
seed: 0
stimuli: {A: a.jsonl, B: b.jsonl}
models: {m1: {source: hf, hf_id: x/m1}}
prompts: {two-shot: {template: "Text: {text}\\nAnswer:"}}
run: {models: [m1], prompts: [two-shot], sets: [A, B]}
attention: {n_boot: 200, top_heads: 2, lexicon: LEXICON}
"""


def test_attention_stage_compares_sets(tmp_path):
    (tmp_path / "lexicon.yaml").write_text(LEXICON)
    (tmp_path / "params.yaml").write_text(PARAMS.replace("LEXICON", str(tmp_path / "lexicon.yaml")))
    act = tmp_path / "act" / "m1" / "two-shot"
    write_attention(act / "A.npz", 16, 3, 2, 0.6, ["rage"] * 16)
    write_attention(act / "B.npz", 16, 3, 2, 0.3, ["grief"] * 16)
    stage().main(["--model", "m1", "--params", str(tmp_path / "params.yaml"), "--activations", str(tmp_path / "act"),
                  "--metrics", str(tmp_path / "metrics"), "--plots", str(tmp_path / "plots")])
    metrics = json.loads((tmp_path / "metrics" / "m1" / "attention.json").read_text())
    assert metrics["sets"]["A"]["text_share"]["mean"] == pytest.approx(0.6, abs=1e-6)
    assert metrics["sets"]["A"]["sink_share"]["mean"] == pytest.approx(0.2, abs=1e-6)
    assert metrics["sets"]["B"]["template_share"]["mean"] == pytest.approx(0.5, abs=1e-6)
    ew = metrics["sets"]["A"]["emotion_word_share"]                             # 2 of 5 text tokens: "furious"
    assert ew["mean"] == pytest.approx(0.24, abs=1e-6) and ew["enrichment"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["sets"]["A"]["top_emotion_word_heads"]["top1"]["emotion_word_share"] == pytest.approx(0.24, abs=1e-6)
    assert metrics["sets"]["A"]["text_ratio"]["mean"] == pytest.approx(0.6 / (5 / 11), abs=1e-5)   # 5 of 11 tokens
    assert metrics["sets"]["B"]["emotion_word_ratio"]["mean"] == pytest.approx(0.12 / (2 / 11), abs=1e-5)
    compare = metrics["compare"]
    assert compare["text_share_diff"]["diff"] == pytest.approx(0.3, abs=1e-6)
    assert compare["text_ratio_diff"]["diff"] == pytest.approx(0.3 * 11 / 5, abs=1e-5)
    assert compare["layers_a_higher_bh"] == 3 and compare["layers_b_higher_bh"] == 0
    rows = (tmp_path / "plots" / "m1" / "attention.csv").read_text().splitlines()
    assert rows[0] == ("set,layer,head,text_share,sink_share,template_share,text_ratio,sink_ratio,template_ratio,"
                       "emotion_word_share,emotion_word_uniform,emotion_word_ratio")
    assert len(rows) == 1 + 2 * 3 * 2
    layers = (tmp_path / "plots" / "m1" / "attention_sets.csv").read_text().splitlines()
    assert layers[0] == ("layer,depth,set_a,set_b,text_share_a,text_share_b,text_ratio_a,text_ratio_b,ratio_diff,"
                         "ratio_low,ratio_high,p,q_bh") and len(layers) == 4


def prompts(n: int, n_text: int, n_template: int, L: int, H: int, rng=None):
    """`n` prompts of sink + text + template tokens; uniform attention, or a softmax of i.i.d. random logits (no
    token preferred in expectation) when `rng` is given. Returns attention (n, L, H, T), n_tokens, start, end."""
    T = 1 + n_text + n_template
    if rng is None:
        attention = np.full((n, L, H, T), 1.0 / T)
    else:
        logits = rng.normal(0, 1.5, size=(n, L, H, T))
        attention = np.exp(logits) / np.exp(logits).sum(axis=3, keepdims=True)
    return attention, np.full(n, T), np.full(n, 1), np.full(n, 1 + n_text)


def test_uniform_attention_gives_ratio_one_for_any_text_length():
    for n_text in (30, 90):
        sh = att.shares(*prompts(4, n_text, 20, 2, 3))
        for span in ("text", "sink", "template"):
            np.testing.assert_allclose(sh[f"{span}_ratio"], 1.0, rtol=1e-12)
        summary = att.summarize_set(sh, np.full(4, n_text), 200, 0)
        assert summary["text_ratio"]["mean"] == pytest.approx(1.0, rel=1e-12)
        assert summary["text_ratio_peak"]["mean"] == pytest.approx(1.0, rel=1e-12)


def test_ratio_compares_text_lengths_where_the_per_token_share_does_not():
    """Attention with no preference, texts of 30 vs 90 tokens: the old per-token share (text share / n_text) favours
    the short texts with a disjoint interval; the ratio to uniform does not differ (interval covers 0, p large)."""
    rng = np.random.default_rng(0)
    short, long = att.shares(*prompts(60, 30, 20, 4, 2, rng)), att.shares(*prompts(60, 90, 20, 4, 2, rng))
    per_token = att.compare_sets(short["text"].mean(axis=2) / 30, long["text"].mean(axis=2) / 90, 500, 0)
    assert (per_token["low"] > 0).all()                                   # the artifact: short texts "score higher"
    ratio = att.compare_sets(short["text_ratio"].mean(axis=2), long["text_ratio"].mean(axis=2), 500, 0, n_perm=199)
    assert ((ratio["low"] < 0) & (ratio["high"] > 0)).all() and (ratio["q_bh"] > 0.05).all()
    np.testing.assert_allclose(short["text_ratio"].mean(axis=(0, 2)), 1.0, atol=0.05)
    np.testing.assert_allclose(long["text_ratio"].mean(axis=(0, 2)), 1.0, atol=0.05)


def test_layer_counts_are_corrected_over_layers():
    """30 layers, no set difference anywhere, 60 simulated data sets: counting layers with uncorrected p < 0.05 finds
    one in most data sets; BH (and the max-statistic p of the largest difference) in about 5%. With a difference
    planted in 5 layers, BH finds them."""
    rng = np.random.default_rng(1)
    uncorrected = corrected = max_stat = 0
    for d in range(60):
        a, b = rng.normal(size=(40, 30)), rng.normal(size=(40, 30))
        out = att.compare_sets(a, b, 100, d, n_perm=199)
        uncorrected += (out["p"] < 0.05).any()
        corrected += (out["q_bh"] < 0.05).any()
        max_stat += out["p_max"] < 0.05
    assert uncorrected / 60 > 0.6 and corrected / 60 <= 0.12 and max_stat / 60 <= 0.12
    a = rng.normal(size=(40, 30))
    a[:, :5] += 1.5
    out = att.compare_sets(a, rng.normal(size=(40, 30)), 100, 0, n_perm=199)
    assert (out["q_bh"][:5] < 0.05).all() and (out["q_bh"][5:] >= 0.05).sum() >= 23 and out["p_max"] < 0.01
