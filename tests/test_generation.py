"""Steered generation (issue 25 item 5): a zero addition equals the unsteered continuation and the hooked run equals
plain `model.generate`; batched (left padding) equals one by one; on a tiny model whose next token reads one planted
direction, steering along it writes the planted token and a same-norm random direction does not (the test that can
fail); the NRC share and the summary; one-line errors for bad params."""
import numpy as np
import pytest
import torch

from conftest import tiny_model
from emotion_circuits.config import EMOTIONS, ConfigError, parse_section
from emotion_circuits.decoder import Decoder
from emotion_circuits.generation import (NRC_CATEGORY, GenerationSettings, ScreenedHead, adding,
                                         generation_summary, greedy, greedy_shared, nrc_share, run_generation,
                                         screened_head, shared_prefill)
from emotion_circuits.nrc import NRC_EMOTIONS, load_nrc
from emotion_circuits.steering import Directions
from emotion_circuits.stimuli import Stimulus

TEXTS = ["The clerk filed the form.", "A bus left the depot at noon and", "Rain."]


def plain(loaded, text: str, n: int) -> str:
    batch = loaded.tokenizer([text], return_tensors="pt")
    ids = loaded.model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    return loaded.tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def test_zero_addition_equals_unsteered_and_plain_generate(tiny):
    d = tiny.model.config.hidden_size
    unhooked = greedy(tiny, TEXTS, 8)
    zero = greedy(tiny, TEXTS, 8, layer=1, vectors=torch.zeros(len(TEXTS), d))
    assert zero == unhooked
    assert unhooked[0] == plain(tiny, TEXTS[0], 8)
    assert [plain(tiny, t, 8) for t in TEXTS] == unhooked


def test_batched_equals_one_by_one_under_steering(tiny):
    d = tiny.model.config.hidden_size
    vectors = torch.randn(len(TEXTS), d, generator=torch.Generator().manual_seed(0)) * 3
    batched = greedy(tiny, TEXTS, 8, layer=0, vectors=vectors, batch_size=len(TEXTS))
    single = [greedy(tiny, [t], 8, layer=0, vectors=vectors[i:i + 1])[0] for i, t in enumerate(TEXTS)]
    assert batched == single
    assert batched != greedy(tiny, TEXTS, 8)           # the additions do change the text


def planted_model(seed: int = 0):
    """Tiny Llama whose unembedding row of token 'q' is a planted unit direction v (rows of the other tokens have
    the same norm, random directions): a state dominated by v writes 'q', one dominated by a random u does not."""
    loaded = tiny_model("llama", seed)
    head = loaded.model.lm_head.weight
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal(tuple(head.shape)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    q = loaded.tokenizer.convert_tokens_to_ids("q")
    v = rows[q].copy()
    with torch.no_grad():
        loaded.model.lm_head.weight.copy_(torch.from_numpy(rows))
    return loaded, v, q


def test_steering_along_the_planted_direction_writes_the_planted_token_and_random_does_not():
    loaded, v, q = planted_model()
    last, n_tok = loaded.model.config.num_hidden_layers - 1, 12
    texts = TEXTS * 4
    steered = greedy(loaded, texts, n_tok, last, torch.from_numpy(v).repeat(len(texts), 1) * 500)
    assert all(t == "q" * n_tok for t in steered)
    rng = np.random.default_rng(1)
    u = rng.standard_normal((len(texts), len(v))).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    random = greedy(loaded, texts, n_tok, last, torch.from_numpy(u) * 500)
    assert sum(t.count("q") for t in random) / (len(texts) * n_tok) < 0.1
    unsteered = greedy(loaded, texts, n_tok)
    assert sum(t.count("q") for t in unsteered) / (len(texts) * n_tok) < 0.1


def test_run_generation_rows_and_metrics_with_the_planted_direction():
    loaded, v, _ = planted_model()
    k, d, L = len(EMOTIONS), len(v), loaded.model.config.num_hidden_layers
    dirs = np.zeros((L, k, d), np.float32)
    dirs[:, :] = v
    directions = Directions(EMOTIONS, dirs, np.full(L, 100.0, np.float32), np.zeros((L, k)))
    items = [Stimulus(f"n-{i}", "N", "neutral", t) for i, t in enumerate(TEXTS)]
    cfg = GenerationSettings(n_texts=2, max_new_tokens=4, n_flip=200)
    metrics, rows = run_generation(loaded, items, directions, EMOTIONS, {"layer": L - 1, "dose": 5.0}, cfg, 200, 0)
    assert len(rows) == 2 * k * 3 and {r["condition"] for r in rows} == {"unsteered", "steered", "random"}
    assert all(r["continuation"] == "qqqq" for r in rows if r["condition"] == "steered")
    assert metrics["layer"] == L - 1 and metrics["dose"] == 5.0 and metrics["n_cells"] == 2 * k
    unsteered = [r["continuation"] for r in rows if r["condition"] == "unsteered"]
    assert unsteered[:k] == [greedy(loaded, [TEXTS[0]], 4)[0]] * k


def test_nrc_mapping_and_share():
    nrc = load_nrc()
    assert set(NRC_CATEGORY) == set(EMOTIONS) and set(NRC_CATEGORY.values()) == set(NRC_EMOTIONS)
    assert "anger" in nrc["furious"]
    share, n = nrc_share("He was furious, the clerk", "anger", nrc)
    assert n == 5 and share == pytest.approx(1 / 5)
    assert nrc_share("", "anger", nrc) == (0.0, 0)


def test_summary_intervals_resample_texts_and_the_p_separates_steered_from_random():
    rng = np.random.default_rng(0)
    rows = []
    for t in range(6):
        for e in EMOTIONS:
            for c, share in (("unsteered", 0.0), ("steered", 0.2 + 0.05 * rng.random()), ("random", 0.0)):
                rows.append({"text_id": f"t{t}", "emotion": e, "condition": c, "nrc_share": share})
    out = generation_summary(rows, 500, 1000, 0)
    assert out["n_cells"] == 48 and out["n_texts"] == 6
    assert out["steered_low"] <= out["steered"] <= out["steered_high"] and out["steered_low"] > 0.19
    assert out["p_steered_vs_random"] < 0.01
    for r in rows:                                            # null: steered and random exchangeable
        if r["condition"] != "unsteered":
            r["nrc_share"] = rng.random()
    assert generation_summary(rows, 500, 1000, 0)["p_steered_vs_random"] > 0.01


@pytest.mark.parametrize("raw, key", [({"n_texts": 1}, "n_texts"), ({"max_new_tokens": 0}, "max_new_tokens"),
                                      ({"dose": 0}, "dose"), ({"layer": -1}, "layer"), ({"batch_size": 0}, "batch_size"),
                                      ({"n_flip": 3}, "n_flip"), ({"bogus": 1}, "bogus")])
def test_bad_params_give_one_line_errors(raw, key):
    with pytest.raises(ConfigError, match=f"steering_generation.{key}") as err:
        parse_section(raw, GenerationSettings, "steering_generation")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="steering_generation.layer: 30 out of range"):
        GenerationSettings(layer=30).check(30, 10)
    with pytest.raises(ConfigError, match="steering_generation.n_texts"):
        GenerationSettings(n_texts=5).check(30, 4)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_shared_prefill_equals_every_row_from_its_first_token(tiny, where, monkeypatch):
    """One prompt, many additions at h[l]: the shared prefill's cache gives the last prompt token the logits of the
    plain hooked forward of each row from its first token, on a prompt longer than the tiny models' sliding window
    (16), and the continuations equal the plain path's. The method can fail: without the per-row pass of blocks
    l+1.. (every row keeping the unsteered keys and values there) the logits differ wherever blocks follow l."""
    d, L = tiny.model.config.hidden_size, tiny.model.config.num_hidden_layers
    layer = {"first": 0, "middle": L // 2, "last": L - 1}[where]
    text = "A bus left the depot at noon and the driver waved at"
    ids = tiny.tokenizer([text], return_tensors="pt")["input_ids"]
    vectors = torch.randn(4, d, generator=torch.Generator().manual_seed(1))
    vectors[0] = 0

    def last_logits(cache):
        with torch.no_grad(), adding(tiny.model, layer, vectors):
            return tiny.model(input_ids=ids[:, -1:].repeat(len(vectors), 1), cache=cache).logits[:, -1]

    with torch.no_grad(), adding(tiny.model, layer, vectors):
        plain_logits = tiny.model(input_ids=ids.repeat(len(vectors), 1)).logits[:, -1]
    shared = last_logits(shared_prefill(tiny, ids, layer, vectors))
    assert torch.allclose(shared, plain_logits, atol=1e-4, rtol=0)
    assert (plain_logits[1:] - plain_logits[0]).abs().max() > 1e-2      # the additions do change the logits
    texts = greedy_shared(tiny, text, 6, layer, vectors, batch_size=3)
    assert texts == [greedy(tiny, [text], 6, layer, vectors[i:i + 1])[0] for i in range(len(vectors))]
    if layer + 1 < L:
        forward_from = Decoder.forward_from     # row 0 adds zero: every row gets the unsteered keys above l
        monkeypatch.setattr(Decoder, "forward_from",
                            lambda self, h, *a, **k: forward_from(self, h[:1].expand_as(h).contiguous(), *a, **k))
        wrong = last_logits(shared_prefill(tiny, ids, layer, vectors))
        assert (wrong[1:] - plain_logits[1:]).abs().max() > 1e-3


def test_screened_head_finds_the_float32_argmax_where_bfloat16_alone_does_not():
    """Rows whose top two logits differ by less than bfloat16's error: the bfloat16 argmax is wrong on some of them
    (the method that can fail), the screened head's argmax is the float32 one on every row, and its candidates carry
    the float32 logits."""
    g = torch.Generator().manual_seed(0)
    vocab, d, n = 5000, 64, 400
    weight = torch.randn(vocab, d, generator=g)
    h = torch.randn(n, d, generator=g) * 3
    rival = torch.randint(0, vocab, (n,), generator=g)
    best = torch.nn.functional.linear(h, weight).argmax(-1)
    weight_rows = weight.clone()
    # plant near-ties: token `rival[i]` gets within ~1e-3 of row i's winner by moving h along their difference
    for i in range(n):
        if rival[i] == best[i]:
            continue
        diff = weight_rows[best[i]] - weight_rows[rival[i]]
        gap = (h[i] @ diff) - 1e-3 * (1 + i % 5)
        h[i] -= gap * diff / (diff @ diff)
    exact = torch.nn.functional.linear(h, weight)
    screened = ScreenedHead(weight)(h)
    bf16 = torch.nn.functional.linear(h.bfloat16(), weight.bfloat16()).float()
    assert (bf16.argmax(-1) != exact.argmax(-1)).sum() >= 5                # 10 of the 400 rows here
    assert torch.equal(screened.argmax(-1), exact.argmax(-1))
    kept = screened > torch.finfo(torch.float32).min
    torch.testing.assert_close(screened[kept], exact[kept], rtol=0, atol=1e-4)
    assert kept.sum(-1).float().mean() < 0.05 * vocab                   # few candidates: the point of screening


def test_screened_head_is_put_back_and_generation_is_unchanged(tiny):
    head = tiny.model.get_output_embeddings()
    with screened_head(tiny.model):
        assert isinstance(tiny.model.get_output_embeddings(), ScreenedHead)
        screened = greedy(tiny, TEXTS, 8)
    assert tiny.model.get_output_embeddings() is head
    assert screened == greedy(tiny, TEXTS, 8)
