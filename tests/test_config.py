"""params.yaml validation: every bad value fails before any work, with one line naming the key."""
import pytest
import yaml

from emotion_circuits.config import ConfigError, load_params
from emotion_circuits.models import ModelUnavailable, load_model

GOOD = yaml.safe_load(open("params.yaml"))


def write(tmp_path, **changes):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_params_load():
    params = load_params("params.yaml")
    assert params.run.models and set(params.run.models) <= set(params.models)
    assert all(params.prompt(p).template.rstrip().endswith("Answer:") for p in params.run.prompts)


@pytest.mark.parametrize("changes, message", [
    ({"dtype": "float8"}, "dtype: 'float8' is not one of"),
    ({"device": "tpu"}, "device: 'tpu' is not one of"),
    ({"seed": "zero"}, "seed: expected an integer"),
    ({"run__models": ["smollm2-135m-instruct", "gpt-7"]}, "run.models: unknown model 'gpt-7'"),
    ({"run__sets": ["A", "Z"]}, "run.sets: unknown set 'Z'"),
    ({"prompts__zero-shot__template": "no slot here"}, "prompts.zero-shot.template: must contain {text}"),
    ({"models__gemma3-270m__source": "torrent"}, "models.gemma3-270m.source: 'torrent' is not one of"),
    ({"models__gemma3-270m-random-init__base": "nope"}, "models.gemma3-270m-random-init.base"),
    ({"extract__batch_size": "big"}, None),
    ({"models__smollm2-135m-instruct__colour": "red"}, "models.smollm2-135m-instruct.colour: unknown key"),
])
def test_bad_values_name_the_key(tmp_path, changes, message):
    path = write(tmp_path, **changes)
    if message is None:  # sections read by a stage are checked when that stage parses them
        from emotion_circuits.extract import ExtractSettings
        with pytest.raises(ConfigError, match="extract.batch_size: expected an integer"):
            load_params(path).section("extract", ExtractSettings)
        return
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_unknown_model_and_absent_weights(tmp_path, monkeypatch):
    params = load_params("params.yaml")
    with pytest.raises(ConfigError, match="unknown model 'gpt-7'"):
        load_model("gpt-7", params)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty Hugging Face cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailable, match="llama-3.2-1b.*not in the local Hugging Face cache") as err:
        load_model("llama-3.2-1b", params)
    assert "\n" not in str(err.value)
