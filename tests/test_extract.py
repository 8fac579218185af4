"""Batched extraction: equality with one-at-a-time runs, the extraction position, the file contract, bad input."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from emotion_circuits.extract import ExtractSettings, extract, save_activations, tokenize_prompt
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
