"""Batched extraction: equality with one-at-a-time runs and of the prefix-cached path with the plain one, the
extraction position, the file contract, bad input."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from emotion_circuits.extract import (ExtractSettings, extract, extract_sets, pad_right, save_activations,
                                      shared_prefix_length, tokenize_prompt)
from emotion_circuits.io import DataError, load_npz

TEMPLATE = "Which emotion? Choose one.\n\nText: {text}\nAnswer:"
TEXTS = ["The boat tipped over.", "A letter arrived at noon, two days late, with the wrong stamp on it.",
         "Rain.", "She found the keys where she had left them, under the blue bowl by the door."]
STIMULI = [SimpleNamespace(id=f"b-x-{i}", emotion="grief", text=t) for i, t in enumerate(TEXTS)]


def test_batched_equals_one_at_a_time(tiny):
    batched = extract(tiny, STIMULI, TEMPLATE, ExtractSettings(batch_size=4), progress=False)
    for i, stim in enumerate(STIMULI):
        single = extract(tiny, [stim], TEMPLATE, ExtractSettings(batch_size=1), progress=False)
        for key in ("h", "a", "m", "embed"):
            np.testing.assert_allclose(batched[key][i], single[key][0], rtol=1e-4, atol=1e-5)
        k = single["n_tokens"][0]
        np.testing.assert_allclose(batched["attention"][i, ..., :k], single["attention"][0, ..., :k], atol=1e-6)
        assert not batched["attention"][i, ..., k:].any()
        np.testing.assert_allclose(batched["attention"][i].sum(-1), 1.0, atol=1e-5)  # weights over real tokens only


PLAIN = ExtractSettings(batch_size=3, prefix_cache=False)
FAST = ExtractSettings(batch_size=3, prefix_cache=True)


def assert_same_activations(fast, plain, tol=1e-5):
    """Every array equal; floats within `tol` of each array's largest magnitude (float32 rounding of another
    summation order: the prefix runs in a batch of one, the plain path with padding)."""
    for key in ("h", "a", "m", "embed", "attention"):
        scale = np.abs(plain[key]).max()
        assert np.abs(fast[key] - plain[key]).max() <= tol * scale, key
    for key in ("ids", "emotions", "n_tokens", "tokens", "text_start", "text_end"):
        assert np.array_equal(fast[key], plain[key]), key


def test_prefix_cache_equals_plain_path(tiny):
    """Batches of 3 over prompts of 47..118 tokens: rows of unequal length share a batch, and the tiny Gemmas'
    16-token sliding window is far shorter than the prompts (a misplaced key column or position would show)."""
    fast = extract(tiny, STIMULI, TEMPLATE, FAST, progress=False)
    plain = extract(tiny, STIMULI, TEMPLATE, PLAIN, progress=False)
    assert_same_activations(fast, plain)
    meta_fast, meta_plain = json.loads(str(fast["meta"])), json.loads(str(plain["meta"]))
    n_prefix = len(tokenize_prompt(tiny.tokenizer, TEMPLATE, "x").ids) - len("x\nAnswer:")  # byte tokens
    assert meta_fast["prefix_cache"] is True and meta_fast["prefix_tokens"] == n_prefix
    assert meta_plain["prefix_cache"] is False and meta_plain["prefix_tokens"] == 0
    if tiny.model.config.model_type != "llama":  # the window is exercised: no weight on keys 16+ tokens back
        assert not plain["attention"][1, 0, :, : plain["n_tokens"][1] - 16].any()


def test_prefix_cache_single_stimulus_and_one_row_batches(tiny):
    fast = extract(tiny, STIMULI[:1], TEMPLATE, ExtractSettings(batch_size=1), progress=False)
    plain = extract(tiny, STIMULI[:1], TEMPLATE, ExtractSettings(batch_size=1, prefix_cache=False), progress=False)
    assert_same_activations(fast, plain)


def test_shared_prefix_stops_before_the_text_and_leaves_a_token(tiny):
    prompts = [tokenize_prompt(tiny.tokenizer, TEMPLATE, t) for t in ("Rain.", "Rain fell.")]
    assert shared_prefix_length(prompts) == prompts[0].text_start  # "Rain" is shared but is stimulus text
    assert shared_prefix_length(prompts[:1]) == prompts[0].text_start
    bare = tokenize_prompt(tiny.tokenizer, "{text}", "Rain.")
    assert shared_prefix_length([bare]) == bare.text_start  # nothing fixed before the text: no prefix run


def test_pad_right_positions_continue_the_prefix():
    batch = pad_right([[5, 6, 7], [8]], pad_id=0, device="cpu", offset=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]
    assert batch["position_ids"].tolist() == [[4, 5, 6], [4, 5, 6]]


def test_extract_sets_writes_one_file_per_set_equal_to_single_runs(tiny, tmp_path):
    sets = {"A": (STIMULI[:2], tmp_path / "A.npz"), "B": (STIMULI[2:], tmp_path / "B.npz")}
    extract_sets(tiny, sets, TEMPLATE, FAST, prompt_name="p", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.npz", "B.npz"]
    for name, (stimuli, path) in sets.items():
        written = load_npz(path)
        alone = extract(tiny, stimuli, TEMPLATE, FAST, prompt_name="p", set_name=name, progress=False)
        assert_same_activations(written, alone, tol=0)
        assert json.loads(str(written["meta"]))["set"] == name


def test_contract_and_round_trip(tiny, tmp_path):
    arrays = extract(tiny, STIMULI, TEMPLATE, ExtractSettings(batch_size=2), prompt_name="p", set_name="B",
                     progress=False)
    path = tmp_path / "B.npz"
    save_activations(path, arrays)
    loaded = load_npz(path)
    n_layers, d = tiny.n_layers, tiny.model.config.hidden_size
    assert loaded["h"].shape == (4, n_layers, d) and loaded["h"].dtype == np.float32
    assert list(loaded["ids"]) == [s.id for s in STIMULI]
    assert loaded["attention"].shape == (4, n_layers, tiny.model.config.num_attention_heads, max(loaded["n_tokens"]))
    meta = json.loads(str(loaded["meta"]))
    assert meta["n_layers"] == n_layers and meta["set"] == "B" and meta["template"] == TEMPLATE
    for i, stim in enumerate(STIMULI):
        toks = loaded["tokens"][i]
        assert toks[loaded["n_tokens"][i] - 1] == ":"  # the extraction position is the final ':'
        span = "".join(toks[loaded["text_start"][i]:loaded["text_end"][i]]).replace("Ġ", " ").strip()
        assert span == stim.text


def test_bos_follows_the_tokenizer(tiny):
    prompt = tokenize_prompt(tiny.tokenizer, TEMPLATE, "Rain.")
    has_bos = tiny.model.config.model_type != "llama"
    assert (prompt.ids[0] == tiny.tokenizer.bos_token_id) == has_bos
    assert prompt.ids.count(tiny.tokenizer.bos_token_id) == int(has_bos)


@pytest.mark.slow
def test_embedded_extraction_position_is_the_final_colon(embedded_model):
    prompt = tokenize_prompt(embedded_model.tokenizer, TEMPLATE, TEXTS[1])
    tokens = embedded_model.tokenizer.convert_ids_to_tokens(prompt.ids)
    assert tokens[-1] == ":" and tokens[-2].strip("Ġ▁") == "Answer"
    gemma = "gemma" in embedded_model.name
    assert (tokens[0] == "<bos>") == gemma and "<bos>" not in tokens[1:]


@pytest.mark.slow
def test_embedded_prefix_cache_equals_plain_path(embedded_model):
    two_shot = __import__("emotion_circuits.config", fromlist=["load_params"]).load_params().prompt("two-shot")
    fast = extract(embedded_model, STIMULI, two_shot.template, FAST, progress=False)
    plain = extract(embedded_model, STIMULI, two_shot.template, PLAIN, progress=False)
    assert_same_activations(fast, plain, tol=1e-5)
    n_prefix = json.loads(str(fast["meta"]))["prefix_tokens"]
    assert n_prefix == fast["text_start"].min() and n_prefix > 50  # the instructions and both exemplars
    prefix = embedded_model.tokenizer.convert_tokens_to_string(list(fast["tokens"][0][:n_prefix]))
    assert prefix.endswith("Text:") and "Answer: ecstasy" in prefix, prefix


@pytest.mark.slow
def test_embedded_batched_equals_single(embedded_model):
    batched = extract(embedded_model, STIMULI[:3], TEMPLATE, ExtractSettings(batch_size=3), progress=False)
    single = extract(embedded_model, STIMULI[1:2], TEMPLATE, ExtractSettings(batch_size=1), progress=False)
    scale = np.abs(single["h"]).max(axis=-1, keepdims=True)
    np.testing.assert_allclose(batched["h"][1] / scale[0], single["h"][0] / scale[0], atol=1e-4)


def test_empty_set_and_too_long_prompt(tiny):
    with pytest.raises(DataError, match="set B: no stimuli"):
        extract(tiny, [], TEMPLATE, set_name="B", progress=False)
    long = [SimpleNamespace(id="b-long", emotion="grief", text="word " * 200)]
    with pytest.raises(DataError, match="b-long.*max_tokens"):
        extract(tiny, long, TEMPLATE, ExtractSettings(max_tokens=100), set_name="B", progress=False)


def test_failed_write_leaves_existing_file_intact(tiny, tmp_path):
    path = tmp_path / "B.npz"
    good = extract(tiny, STIMULI, TEMPLATE, progress=False)
    save_activations(path, good)
    before = path.read_bytes()
    with pytest.raises(DataError, match="refusing"):
        save_activations(path, {k: v for k, v in good.items() if k != "h"})
    bad = dict(good, h=object())  # np.savez fails part-way on an object array it cannot store without pickle
    with pytest.raises(Exception):
        save_activations(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.npz"]


def test_truncated_file_is_a_one_line_error(tiny, tmp_path):
    path = tmp_path / "B.npz"
    save_activations(path, extract(tiny, STIMULI, TEMPLATE, progress=False))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="B.npz: corrupted or truncated") as err:
        load_npz(path)
    assert "\n" not in str(err.value)


def test_temp_file_of_a_killed_writer_is_cleaned_up(tiny, tmp_path):
    stale = tmp_path / ".B.npz.abc123.tmp.npz"  # what a writer killed mid-write leaves behind
    stale.write_bytes(b"PK\x03\x04partial")
    save_activations(tmp_path / "B.npz", extract(tiny, STIMULI[:1], TEMPLATE, progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.npz"]
