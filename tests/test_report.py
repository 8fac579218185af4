"""Summary stage on a fixture run: tiny synthetic activations of two "models" (and their random-init partners) go
through the real probes, geometry, cka and attention stage code, and the patching, knockout and heads outputs are
written by the real causal_report code with only the forward passes replaced; the summary must copy their numbers
exactly, give one column per model, skip absent optional inputs with a warning and name a missing required file in
one line.
`build_run` is shared with tests/test_figures.py (built once per session)."""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from emotion_circuits import report, stats
from emotion_circuits.config import EMOTIONS, load_params
from emotion_circuits.io import DataError, save_npz
from emotion_circuits.probes import random_init_of, run_probes, settings_from, write_outputs

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS, D, HEADS = 6, 12, 2
MODELS = {"tiny-llama": 5, "tiny-gemma": 7}                 # trained model -> n_layers
ZERO_SHOT = ("tiny-llama",)                                  # models with zero-shot activations
# prompt tokens: <bos> Text : [5 text tokens] \n Answer :   -> 11 tokens in 12 slots, text span [3, 8)
TEXT = {"A": ["ĠI", "Ġwas", "Ġfur", "ious", "."], "B": ["ĠThe", "Ġbus", "Ġleft", "Ġearly", "."]}
LEXICON = "rage: [furious]\ngrief: [heartbroken]\n"

PARAMS = {
    "seed": 0,
    "stimuli": {s: f"stimuli/sets/set_{s}.jsonl" for s in "ABNC"},
    "models": {**{m: {"source": "hf", "hf_id": f"x/{m}"} for m in MODELS},
               **{f"{m}-random-init": {"source": "random-init", "base": m} for m in MODELS}},
    "prompts": {"two-shot": {"template": "Text: {text}\nAnswer:"}, "zero-shot": {"template": "{text}\nAnswer:"}},
    "run": {"models": [*MODELS, *(f"{m}-random-init" for m in MODELS)], "prompts": ["two-shot", "zero-shot"],
            "sets": list("ABNC"), "analyze": list(MODELS)},
    "probes": {"folds": 3, "repeats": 2, "n_boot": 100, "n_perm": 5, "n_jobs": 1},
    "geometry": {"n_perm": 19, "n_components": 4},
    "cka": {"n_depths": 4},
    "attention": {"n_boot": 100, "top_heads": 2, "lexicon": "LEXICON"},
    "interventions": {"n_boot": 100},
    "patching": {"per_source": 1},
    "heads": {"top": 3},
}
# text-only baselines as the stimuli stage writes them (metrics/stimuli.json `baselines`)
STIMULI = {"baselines": {
    "set_b_8class": {m: {"auroc": a, "low": a - 0.1, "high": a + 0.05} for m, a in
                     (("length", 0.52), ("polarity", 0.61), ("bow", 0.74))},
    "b_vs_n": {m: {"auroc": a, "low": a - 0.06, "high": a + 0.04} for m, a in
               (("length", 0.71), ("polarity", 0.88), ("bow", 0.93))}}}


def stage(name: str):
    """Import a stage script (stages/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_set(name: str, n_layers: int, emotion_signal, binary_signal, seed: int) -> dict[str, np.ndarray]:
    """One activation file of the contract: Set A/B emotion k adds `emotion_signal[l] * e_k` at layer l; B adds
    `+binary_signal[l] * e_8`, N subtracts it, C is half like each. Attention: the extraction row on 11 tokens with a
    per-layer text share that differs between sets."""
    rng = np.random.default_rng(seed)
    n = 8 * PER_CLASS if name in "ABN" else 8
    emotions = np.repeat(EMOTIONS, PER_CLASS) if name in "AB" else np.full(n, "neutral")
    direction = np.zeros((n, D))
    if name in "AB":
        direction[np.arange(n), [EMOTIONS.index(e) for e in emotions]] = 1.0
    sign = {"A": 0.0, "B": 1.0, "N": -1.0, "C": np.where(np.arange(n) < n // 2, -1.0, 1.0)}[name]
    sign = np.broadcast_to(sign, (n,))
    out = {}
    for kind in ("h", "a", "m"):
        x = rng.normal(size=(n, n_layers, D))
        x += np.asarray(emotion_signal)[None, :, None] * direction[:, None, :]
        x[:, :, 8] += np.asarray(binary_signal)[None, :] * sign[:, None]
        out[kind] = x.astype(np.float32)
    T = 12
    depth = (np.arange(n_layers) + 1) / n_layers
    text_share = (0.3 + 0.4 * depth[None, :, None] * (1.0 if name == "A" else 0.5)
                  + rng.uniform(-0.05, 0.05, (n, n_layers, 1)))                     # (n, L, 1)
    attention = np.zeros((n, n_layers, HEADS, T))
    weights = rng.dirichlet(np.ones(5), size=(n, n_layers, HEADS))
    attention[..., 3:8] = weights * text_share[..., None]                       # (n, L, H, 5)
    attention[..., 0] = 0.2
    attention[..., [1, 2, 8, 9, 10]] = ((0.8 - text_share) / 5)[..., None]
    words = TEXT.get(name, TEXT["B"])
    tokens = np.array([["<bos>", "Text", ":", *words, "Ċ", "Answer", ":", ""]] * n)
    ids = np.array([f"{name.lower()}-{i:02d}" for i in range(n)])
    return {**out, "ids": ids, "emotions": emotions, "n_tokens": np.full(n, 11), "attention": attention,
            "tokens": tokens, "text_start": np.full(n, 3), "text_end": np.full(n, 8), "meta": np.array("{}")}


def write_activations(root: Path, model: str, n_layers: int, trained: bool, seed: int) -> None:
    depth = (np.arange(n_layers) + 1) / n_layers
    if trained:   # emotion signal peaks at two thirds of the depth; the binary one is there from layer 1
        emotion, binary = 4.0 * np.exp(-((depth - 0.66) / 0.3) ** 2), np.r_[0.2, np.full(n_layers - 1, 6.0)]
    else:
        emotion, binary = np.full(n_layers, 0.3), np.full(n_layers, 0.5)
    prompts = {"two-shot": "ABNC", "zero-shot": "ABN" if model in ZERO_SHOT else ""}
    for p, (prompt, sets) in enumerate(prompts.items()):
        for i, name in enumerate(sets):
            scale = 0.6 if prompt == "zero-shot" else 1.0
            save_npz(root / "act" / model / prompt / f"{name}.npz",
                     **make_set(name, n_layers, emotion * scale, binary, seed=seed * 100 + p * 10 + i))


def write_interventions(root: Path, params, model: str, n_layers: int, seed: int) -> None:
    """The patching, knockout and heads outputs of `model`, written by their real stage code (causal_report.run_stage)
    with only the forward passes replaced: per-item effects are drawn at random, patching success peaking at two
    thirds of the depth and the control patch rarely flipping."""
    from emotion_circuits import causal, causal_report as cr, positions
    from emotion_circuits.readout import Readout
    from emotion_circuits.stimuli import Stimulus

    rng = np.random.default_rng(seed)
    depth = (np.arange(n_layers) + 1) / n_layers
    labels = np.repeat(EMOTIONS, PER_CLASS)
    readout = Readout(emotions=EMOTIONS, words=(), sequences=(), owner=())
    stimuli = {name: [Stimulus(f"{name.lower()}-{i:02d}", name, e, "") for i, e in enumerate(labels)]
               for name in "AB"}    # the ids of the probes fixture's sets
    stimuli["N"] = []                 # positions' twin set (its pairs are mocked below)

    def clean(*args, **kwargs):
        raw = torch.from_numpy(rng.normal(size=(len(labels), 8)) * 2 - 6).float()
        offsets = torch.zeros(8)
        log_probs = causal.calibrate(raw, offsets)
        return causal.Clean([], raw, offsets, log_probs, readout.top1(log_probs), labels)

    def setup(params, model, stage):
        shared = params.section("interventions", causal.InterventionSettings)
        engine = SimpleNamespace(loaded=SimpleNamespace(tokenizer=None), n_layers=n_layers)
        return cr.Setup(model, params.section(stage, cr.SECTIONS[stage]), shared, "", stimuli, engine,
                        readout, list(range(n_layers)), seed)

    def patching(engine, readout, clean, sites, layers, per_source, seed):
        pairs, _ = causal.design_pairs(clean.labels, EMOTIONS, per_source, seed)
        index = np.array([EMOTIONS.index(e) for e in clean.labels])
        tgt, src = index[pairs[:, 0]], index[pairs[:, 1]]
        shape = (len(pairs), len(sites), len(layers))
        curve = np.clip(depth * 1.3 - 0.2, 0, 1) * np.array([1.0, 0.3, 0.2])[:len(sites), None]   # h rises to 1
        ld_source, ld_target = 2 + rng.normal(size=len(pairs)), rng.normal(size=len(pairs))
        gap = (ld_source - ld_target)[:, None, None]
        ld_patch = ld_target[:, None, None] + curve * gap + 0.3 * rng.normal(size=shape)
        ld_control = ld_target[:, None, None] + 0.3 * rng.normal(size=shape)
        return causal.PatchingResult(list(sites), list(layers), pairs, tgt, src, ld_source, ld_target,
                                     top1_source=src, top1_target=rng.integers(0, 8, len(pairs)),
                                     ld_patch=ld_patch, ld_control=ld_control,
                                     top1_patch=np.where(rng.random(shape) < curve, src[:, None, None],
                                                         tgt[:, None, None]),
                                     top1_control=np.broadcast_to(tgt[:, None, None], shape).copy())

    def knockout(engine, readout, clean, sites, layers, ablations, n_random, seed):
        shape = (len(clean.labels), len(sites), len(layers), len(ablations))
        profile = 0.2 + 4 * np.exp(-((depth - 0.3) / 0.2) ** 2)     # ablation matters early, like its control late
        kl = rng.gamma(2.0, 0.05, shape) * profile[:, None]
        control = rng.gamma(2.0, 0.05, shape) * 0.8
        return causal.KnockoutResult(list(sites), list(layers), list(ablations), drop=kl / 4, kl=kl,
                                     control_drop=control / 4, control_kl=control, norm=np.ones(shape))

    def heads(engine, readout, clean, layers, top, n_random, seed):
        rank, test = causal.split_halves(len(clean.labels), seed)
        drop = rng.normal(0.0, 0.02, (len(clean.labels), len(layers), HEADS))
        drop[:, -2, 1] += 0.15                                                   # one head that matters
        tested = causal.top_heads(drop[rank], layers, top)
        held = np.stack([drop[test][:, list(layers).index(layer), head] for layer, head in tested], axis=1)
        control = rng.normal(0.0, 0.02, held.shape)
        return causal.HeadResult(list(layers), rank, test, drop[rank], tested, held, np.abs(held), control,
                                 np.abs(control))

    def patch_positions(engine, tokenizer, template, pairs, offsets, layers, bins):
        """Recovery planted in one cell: the second layer at the middle position; elsewhere the twin's own LD."""
        n = len(pairs)
        ld_b, ld_n = 2 + 0.3 * rng.normal(size=n), 0.3 * rng.normal(size=n)
        ld = ld_n[:, None, None] + 0.1 * rng.normal(size=(n, len(layers), bins))
        ld[:, 1, bins // 2] = ld_b + 0.1 * rng.normal(size=n)
        return positions.PositionResult(list(layers), ld, ld_b, ld_n)

    pairs = [(Stimulus(f"b-{i:02d}", "B", e, ""), Stimulus(f"n-{i:02d}", "N", "neutral", ""))
             for i, e in enumerate(EMOTIONS)]
    with mock.patch.multiple(cr, setup=setup, clean_runs=clean, patching=patching, knockout=knockout, heads=heads,
                             patch_positions=patch_positions, choose_pairs=lambda *a: pairs,
                             calibration_offsets=lambda *a: torch.zeros(8)):
        for name in ("patching", "knockout", "heads", "positions"):
            cr.run_stage(params, model, name, root / "metrics", root / "plots")


def write_steering(root: Path, params, model: str, n_layers: int, seed: int) -> None:
    """The steering outputs of `model`, written by the real stage code (steering_report.run_stage, with the real
    directions and statistics) with only the forward passes replaced: steering with d_e moves the answer to e from
    two thirds of the depth on, more with the dose; random directions never do."""
    from emotion_circuits import ablation, causal, steering as st, steering_report as sr
    from emotion_circuits.readout import Readout
    from emotion_circuits.stimuli import Stimulus

    rng = np.random.default_rng(seed)
    k, d = len(EMOTIONS), 16
    readout = Readout(emotions=EMOTIONS, words=(), sequences=(), owner=())
    cfg = params.section("steering", st.SteeringSettings)
    layers = causal.resolve_layers(cfg.layers, n_layers, "steering.layers", cfg.layer_step)
    items = {name: [Stimulus(f"{name.lower()}-{i:02d}", name, e, "") for i, e in
                    enumerate(np.tile(EMOTIONS if name == "B" else ["neutral"], 24))] for name in ("N", "B")}
    engine = SimpleNamespace(loaded=SimpleNamespace(tokenizer=None), n_layers=n_layers,
                             cfg=SimpleNamespace(hidden_size=d))

    def setup(params, model, activations, directions):
        abl = ablation.AblationSettings.parse(cfg.ablation)
        return sr.Setup(model, cfg, params.section("interventions", causal.InterventionSettings), "", items, engine,
                        readout, layers, seed, None, root / "act" / model, root / "steering" / model / "directions.npz",
                        ablation=abl, ablation_layers=tuple(abl.validate(items, k, cfg.fit_set, n_layers)))

    def clean_runs(engine, tokenizer, template, stimuli, answers, positions=False, desc=None, offsets=None,
                   cache=None):
        raw = torch.from_numpy(rng.normal(size=(len(stimuli), k)) - 4).float()
        log_probs = causal.calibrate(raw, torch.zeros(k))
        return causal.Clean([], raw, torch.zeros(k), log_probs, readout.top1(log_probs),
                            np.array([s.emotion for s in stimuli]))

    def effect(layers, doses):
        depth = (np.asarray(layers) + 1) / n_layers
        return 6 * np.clip(depth * 1.5 - 0.5, 0, 1)[:, None] * np.asarray(doses)[None, :]   # (n_layers, n_doses)

    def steer(engine, readout, clean, directions, layers, doses, n_random, seed, positions=None):
        n = len(clean.labels)
        base = clean.log_probs.numpy()[:, None, None, None, :]
        lift = effect(layers, doses)[None, :, :, None, None] * np.eye(k)[None, None, None]
        noisy = base + lift + 0.3 * rng.normal(size=(n, len(layers), len(doses), k, k))
        random = base + 0.3 * rng.normal(size=(n, len(layers), len(doses), n_random, k))
        return st.SteeringResult(list(layers), list(doses), clean.log_probs.numpy(), noisy, random)

    def against_grain(engine, readout, clean, directions, layer, dose, n_random, seed, positions=None):
        r = steer(engine, readout, clean, directions, [layer], [dose], n_random, seed)
        own = np.array([EMOTIONS.index(e) for e in clean.labels])
        return st.GrainResult(layer, dose, own, r.clean, r.steer[:, 0, 0], r.random[:, 0, 0])

    def read_activations(path, n_layers, d_model):
        labels = np.repeat(EMOTIONS, 10)
        h = rng.normal(size=(len(labels), n_layers, d_model)).astype(np.float32)
        h[:, :, :k] += 2.0 * np.eye(k)[[EMOTIONS.index(e) for e in labels]][:, None]
        return h, labels

    def greedy(loaded, prompts, *args, **kwargs):                  # generation: fixed continuations
        return ["the clerk was angry, then glad" for _ in prompts]

    def greedy_shared(loaded, text, max_new_tokens, layer, vectors, *args, **kwargs):   # one text, many rows
        return greedy(loaded, [text] * len(vectors))

    def signal(n, labels, strength):
        """Run-shaped h: the class sits on the first k axes with `strength` at every layer; scores follow it."""
        h = rng.normal(size=(n, n_layers, d)).astype(np.float32)
        h[:, :, :k] += strength * np.eye(k)[[EMOTIONS.index(e) for e in labels]][:, None]
        return ablation.Run(h, h[:, -1, :k].astype(np.float64))

    ablated_labels = []

    def clean_items(engine, prompts, offsets, layers, prepared=None):  # ablation: the clean run, h[l] everywhere
        ablated_labels[:] = [x.emotion for x in ablation.balanced(items["B"], EMOTIONS, len(prompts))]
        return (signal(len(prompts), ablated_labels, 2.0), {l: rng.normal(size=(5 * len(prompts), d)) for l in layers},
                list(prompts))

    def ablated_items(engine, prompts, offsets, layer, bases):     # the emotion subspace removes the class
        return [signal(len(prompts), ablated_labels, 0.0 if i == 0 else 2.0) for i in range(len(bases))]

    with mock.patch.multiple(sr, setup=setup, clean_runs=clean_runs, steer=steer, against_grain=against_grain,
                             read_activations=read_activations, calibration_offsets=lambda *a: torch.zeros(k)), mock.patch.multiple(sr.generation, greedy=greedy, greedy_shared=greedy_shared), \
            mock.patch.multiple(ablation, clean_items=clean_items, ablated_items=ablated_items,
                                tokenize_prompt=lambda *a: SimpleNamespace(ids=[1, 2])):
        sr.run_stage(params, model, root / "metrics", root / "plots")


@functools.lru_cache(maxsize=None)
def build_run(root: Path) -> Path:
    """A full fixture run under `root`: params.yaml, stimuli metrics, activations, and the real outputs of the
    probes, geometry, cka and attention stages for both models. Cached: built once per session."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lexicon.yaml").write_text(LEXICON)
    raw = json.loads(json.dumps(PARAMS))
    raw["attention"]["lexicon"] = str(root / "lexicon.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "stimuli.json").write_text(json.dumps(STIMULI))
    for i, (model, n_layers) in enumerate(MODELS.items()):
        write_activations(root, model, n_layers, True, seed=2 * i)
        write_activations(root, f"{model}-random-init", n_layers, False, seed=2 * i + 1)
    params = load_params(root / "params.yaml")
    settings = settings_from(params)
    common = ["--params", str(root / "params.yaml"), "--activations", str(root / "act"),
              "--metrics", str(root / "metrics"), "--plots", str(root / "plots")]
    for model in MODELS:
        result = run_probes(root / "act" / model, settings, control_folder=root / "act" / random_init_of(params, model))
        write_outputs(result, root / "metrics" / model / "probes.json", root / "plots" / model)
        stage("geometry").main(["--model", model, *common])
        stage("attention").main(["--model", model, *common])
        write_interventions(root, params, model, MODELS[model], seed=len(model))
        write_steering(root, params, model, MODELS[model], seed=len(model) + 1)
    stage("cka").main(common)
    return root


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.getbasetemp() / "fixture-run")


def copy_run(run_root: Path, dest: Path) -> Path:
    """A private copy of the fixture run's outputs (and params) that a test may damage."""
    import shutil
    for name in ("metrics", "plots"):
        shutil.copytree(run_root / name, dest / name)
    shutil.copy(run_root / "params.yaml", dest / "params.yaml")
    return dest


def summarize(root: Path, out: Path | None = None) -> tuple[dict, str]:
    out = out or root / "metrics"
    stage("summary").main(["--params", str(root / "params.yaml"), "--metrics", str(root / "metrics"),
                           "--plots", str(root / "plots"), "--out", str(out)])
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text()


def tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells (the separator line dropped)."""
    found, current = [], None
    for line in markdown.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split(" | ")])
        else:
            current = None
    return found


def test_summary_numbers_are_the_stage_outputs(run_root, tmp_path):
    flat, md = summarize(run_root, tmp_path)
    metrics = run_root / "metrics"
    for model in MODELS:
        probes = json.loads((metrics / model / "probes.json").read_text())
        geometry = json.loads((metrics / model / "geometry.json").read_text())
        attention = json.loads((metrics / model / "attention.json").read_text())
        expected = {
            "h.set_a.auroc": probes["set_a"]["h"]["auroc"], "h.set_b.auroc_low": probes["set_b"]["h"]["low"],
            "h.transfer.auroc_high": probes["transfer"]["h"]["high"],
            "h.peak_depth.depth": probes["set_b"]["h"]["peak_depth"],
            "h.peak_depth.layer": probes["set_b"]["h"]["peak_layer"],
            "h.saturation.layer": probes["b_vs_n"]["h"]["saturation_layer"],
            "m.set_b.auroc": probes["set_b"]["m"]["auroc"],
            "h.set_b.random_init.auroc": probes["random_init"]["set_b"]["h"]["auroc"],
            "h.set_a.p_max_layers.p": probes["set_a"]["h"]["p_max_layers"],
            "h.set_b.nested.auroc": probes["set_b"]["h"]["nested_auroc"],
            "h.b_vs_n.mdl_trained.compression": probes["mdl"]["b_vs_n"]["compression"],
            "probe.set_b.null_p95": probes["set_b"]["h"]["null_p95"],
            "h.saturation.set_c.fraction": probes["set_c"]["h"]["fraction_emotional"],
            "geometry.B.silhouette.p": geometry["B"]["silhouette_p"],
            "geometry.A.wheel.spearman": geometry["A"]["wheel_spearman"],
            "attention.text_share_diff.diff_low": attention["compare"]["text_share_diff"]["low"],
            "attention.A.text_ratio.peak": attention["sets"]["A"]["text_ratio_peak"]["mean"],
            "attention.B.text_ratio.ratio_high": attention["sets"]["B"]["text_ratio"]["high"],
            "attention.text_ratio_diff.p": attention["compare"]["text_ratio_diff"]["p"],
            "attention.text_ratio_diff.layers_a_higher": attention["compare"]["layers_a_higher_bh"],
        }
        patching = json.loads((metrics / model / "patching.json").read_text())
        knockout = json.loads((metrics / model / "knockout.json").read_text())
        heads = json.loads((metrics / model / "heads.json").read_text())
        answers = pd.read_csv(run_root / "plots" / model / "answers.csv")
        for name, b in patching["behaviour"].items():     # answers.csv holds the answers behind the histogram
            counts = answers[answers["set"] == name]["answer"].value_counts()
            assert {e: int(counts.get(e, 0)) for e in EMOTIONS} == b["answered_calibrated"]
        answers = answers[answers["set"] == "B"].set_index("id")
        probe = pd.read_csv(run_root / "plots" / model / "probes" / "confusion" / "set_b_h.csv").set_index("id")
        assert len(answers) == len(probe) == 8 * PER_CLASS
        agreement = stats.agreement(answers["answer"], probe.loc[answers.index, "predicted"], 1000, 0)
        assert agreement["agreement"] == np.mean(answers["answer"].values == probe.loc[answers.index, "predicted"].values)
        expected |= {
            "h.patching_recovery.first_layer": patching["h"]["first_layer"],
            "h.patching_recovery.recovery_low": patching["h"]["recovery_low"],
            "h.patching_recovery.control_recovery": patching["h"]["control_recovery"],
            "patching.best.p_max": patching["best"]["p_max"],
            "patching.best.recovery_minus_control": patching["best"]["recovery_minus_control"],
            "patching.best.transfer.control_transfer": patching["best"]["control_transfer"],
            "patching.denominator.denominator_low": patching["denominator"]["denominator_low"],
            "patching.pairs.n": patching["n_pairs"],
            "behaviour.A.accuracy": patching["behaviour"]["A"]["accuracy"],
            "behaviour.B.accuracy_high": patching["behaviour"]["B"]["accuracy_high"],
            "knockout.a.zero.critical.n": knockout["a"]["zero"]["n_critical_kl"],
            "knockout.m.mean.critical.n": knockout["m"]["mean"]["n_critical_kl"],
            "knockout.m.zero.peak.control_kl": knockout["m"]["zero"]["control_kl"],
            "heads.top1.drop": heads["top"]["01"]["drop"], "heads.top1.layer": heads["top"]["01"]["layer"],
            "heads.top1.control_drop": heads["top"]["01"]["control_drop"], "heads.survivors.n": heads["n_survivors"],
        }
        for key, value in expected.items():
            assert flat[f"{model}/{key}"] == value, key
        where = json.loads((metrics / model / "positions.json").read_text())
        assert (where["peak"]["layer"], where["peak"]["bin"]) == (1, where["bins"] // 2)     # the planted cell
        assert where["peak"]["recovery_low"] > 0.8 and not where["denominator_covers_0"]
        for key, value in (("recovery", where["peak"]["recovery"]), ("recovery_low", where["peak"]["recovery_low"]),
                           ("layer", 1), ("denominator_high", where["denominator_high"])):
            assert flat[f"{model}/positions.peak.{key}"] == value, key
        mdl = probes["mdl"]["b_vs_n"]
        assert (flat[f"{model}/h.b_vs_n.mdl_trained.compression_min"], flat[f"{model}/h.b_vs_n.mdl_trained.compression_max"]) == (
            mdl["compression_min"], mdl["compression_max"])
        for key in ("agreement", "kappa", "kappa_low", "chance", "p"):       # recomputed here from the two CSVs
            assert flat[f"{model}/behaviour.B.probe_agreement.{key}"] == pytest.approx(agreement[key], abs=1e-6), key
        assert heads["top"]["01"]["name"] == f"L{MODELS[model] - 2}H1"          # the head the fixture made matter
        assert heads["survivors"].split(",")[0] == f"L{MODELS[model] - 2}H1"
        causal = {r[0]: r[list(MODELS).index(model) + 1] for r in tables(md)[3]}
        label = next(k for k in causal if k.startswith("heads: first-ranked head"))
        assert causal[label].startswith(f"L{MODELS[model] - 2}H1: {heads['top']['01']['drop']:.3f} [")
        assert "(control " in causal[label]
        critical = knockout["a"]["zero"]["critical_kl"]
        assert critical and set(critical.split(",")) <= {str(l) for l in range(MODELS[model] // 2 + 1)}  # early
        label = next(k for k in causal if k.startswith("knockout a (zero): layers"))
        assert causal[label] == critical.replace(",", ", ")
        h = patching["h"]
        patch = next(r for r in tables(md)[0] if r[0].startswith("patching h: first layer"))
        cell = patch[list(MODELS).index(model) + 1]
        assert cell.startswith(f"layer {h['first_layer']:g} [") and "(control " in cell and "baseline 0" in cell
        if model in ZERO_SHOT:
            assert flat[f"{model}/h.transfer.zero_shot.auroc"] == probes["zero_shot"]["transfer"]["h"]["auroc"]
        else:
            assert "zero_shot" not in probes and not any(k.startswith(f"{model}/h.transfer.zero_shot") for k in flat)
        b = probes["set_b"]["h"]
        row = next(r for r in tables(md)[0] if r[0].startswith("Set B"))
        column = list(MODELS).index(model) + 1
        assert row[column].split(";")[0] == f"{b['auroc']:.3f} [{b['low']:.3f}, {b['high']:.3f}]"
    assert flat["text_only/b_vs_n.length.auroc"] == STIMULI["baselines"]["b_vs_n"]["length"]["auroc"]
    pair = json.loads((metrics / "cka.json").read_text())["pairs"]["tiny-llama__tiny-gemma"]
    assert flat["cka/tiny-llama__tiny-gemma.mean_matched_debiased"] == pair["mean_matched_cka_debiased"]
    assert flat["cka/tiny-llama__tiny-gemma.mean_matched_debiased_low"] == pair["mean_matched_cka_debiased_low"]
    assert flat["cka/tiny-llama__tiny-gemma.debiased_minus_random_init_high"] == (
        pair["mean_matched_debiased_minus_reference_high"])
    assert all(isinstance(v, (int, float)) or v is None for v in flat.values())


def test_markdown_has_one_column_per_model_and_a_labelled_published_column(run_root, tmp_path):
    _, md = summarize(run_root, tmp_path)
    found = tables(md)
    assert len(found) == 6 + len(MODELS)   # headline, controls, every site, behaviour + interventions, geometry,
    #                                        CKA, then one probe table per model
    for table in found[:5]:
        header = table[0]
        assert header[1:1 + len(MODELS)] == list(MODELS) and header.count("tiny-llama") == 1
        assert all(len(row) == len(header) for row in table)
    headline = found[0]
    assert headline[0][-1].startswith("published") and "not computed" in headline[0][-1]
    published = {row[0]: row[-1] for row in headline[1:]}
    assert published["transfer: fit on Set A, scored on Set B, peak AUROC"] == report.PUBLISHED["transfer"]
    assert [row[0] for row in headline[1:]][:6] == [
        "Set A (expressive), 8-class peak AUROC", "Set B (clinical vignettes), 8-class peak AUROC",
        "transfer: fit on Set A, scored on Set B, peak AUROC", "B vs N (grouped by pair), peak AUROC",
        "depth of the Set B peak layer, (l+1)/L",
        "first layer with B-vs-N AUROC >= 0.999"]
    assert "length 0.71 [0.65, 0.75]" in next(r for r in headline if r[0].startswith("first layer"))[-2]
    zero_shot = next(r for r in found[1] if r[0] == "transfer A->B: zero-shot prompt, peak AUROC")
    assert zero_shot[1] != "—" and zero_shot[2] == "—"          # only tiny-llama has zero-shot activations


def test_summary_is_byte_identical_when_rerun(run_root, tmp_path):
    summarize(run_root, tmp_path / "one")
    summarize(run_root, tmp_path / "two")
    for name in ("summary.json", "summary.md"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_unreached_saturation_is_null_and_said_in_words(run_root, tmp_path):
    root = copy_run(run_root, tmp_path)
    path = root / "metrics" / "tiny-gemma" / "probes.json"
    probes = json.loads(path.read_text())
    probes["b_vs_n"]["h"].update(saturation_layer=None, saturation_depth=None)
    path.write_text(json.dumps(probes))
    flat, md = summarize(root)
    assert flat["tiny-gemma/h.saturation.layer"] is None and flat["tiny-llama/h.saturation.layer"] is not None
    row = next(r for r in tables(md)[0] if r[0].startswith("first layer"))
    assert row[2] == "not reached" and row[1].startswith("layer ")


def test_missing_optional_inputs_are_skipped_with_a_warning(run_root, tmp_path, caplog):
    root = copy_run(run_root, tmp_path)
    for rel in ("stimuli.json", "cka.json", "tiny-gemma/geometry.json", "tiny-gemma/attention.json"):
        (root / "metrics" / rel).unlink()
    with caplog.at_level(logging.WARNING):
        flat, md = summarize(root)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for rel in ("stimuli.json", "cka.json", "tiny-gemma/geometry.json", "tiny-gemma/attention.json"):
        assert f"{root / 'metrics' / rel}: not found" in warned
    assert not any(k.startswith(("text_only/", "cka/", "tiny-gemma/geometry", "tiny-gemma/attention")) for k in flat)
    assert "tiny-llama/geometry.A.silhouette.silhouette" in flat
    found = tables(md)
    assert len(found) == 5 + len(MODELS)                      # no CKA table
    geometry = found[4]
    assert all(row[2] == "—" for row in geometry[1:]) and all(row[1] != "—" for row in geometry[1:])


def test_intervention_rows_are_present_only_for_models_with_intervention_outputs(run_root, tmp_path, caplog):
    root = copy_run(run_root, tmp_path)
    for name in ("patching", "knockout", "heads", "positions", "steering"):
        (root / "metrics" / "tiny-gemma" / f"{name}.json").unlink()
    with caplog.at_level(logging.WARNING):
        flat, md = summarize(root)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert f"{root / 'metrics' / 'tiny-gemma' / 'knockout.json'}: not found" in warned
    causal_keys = ("patching", "behaviour", "knockout", "heads", "positions", "steering")
    assert not any(k.startswith(tuple(f"tiny-gemma/{c}" for c in causal_keys)) or ".patching" in k
                   for k in flat if k.startswith("tiny-gemma/"))
    assert "tiny-llama/h.patching_recovery.first_layer" in flat and "tiny-llama/heads.top1.drop" in flat
    causal = tables(md)[3]
    assert causal[0][1:3] == list(MODELS) and all(r[2] == "—" and r[1] != "—" for r in causal[1:])
    knockout = root / "metrics" / "tiny-llama" / "knockout.json"      # optional, but wrong when present
    damaged = json.loads(knockout.read_text())
    del damaged["m"]["mean"]["critical_kl"]
    knockout.write_text(json.dumps(damaged))
    with pytest.raises(DataError, match=r"llama/knockout\.json: missing or malformed entry \(KeyError: 'critical_kl'\)$"):
        summarize(root)
    for name in ("patching", "knockout", "heads", "positions", "steering"):   # no model with interventions: no rows
        (root / "metrics" / "tiny-llama" / f"{name}.json").unlink()
    flat, md = summarize(root)
    assert not any(c in k for k in flat for c in ("patching", "behaviour", "knockout", "heads", "positions",
                                                  "steering"))
    assert "patching" not in md and "knockout" not in md and "heads:" not in md
    assert len(tables(md)) == 5 + len(MODELS) and flat["tiny-llama/h.set_b.auroc"] > 0.9


def test_patching_without_a_layer_above_half_and_a_denominator_covering_zero(run_root, tmp_path):
    root = copy_run(run_root, tmp_path)
    path = root / "metrics" / "tiny-llama" / "patching.json"
    patching = json.loads(path.read_text())
    patching["h"].update(first_layer=None, first_layer_low=None, first_layer_high=None)
    patching["denominator"]["covers_zero"] = True
    path.write_text(json.dumps(patching))
    flat, md = summarize(root)
    row = next(r for r in tables(md)[0] if r[0].startswith("patching h: first layer"))
    assert row[1].startswith("layer none [none, none]; at layer ")
    assert flat["tiny-llama/h.patching_recovery.first_layer"] is None
    assert any("interval covers 0: recovery undefined" in r[0] for r in tables(md)[1])


def test_missing_or_damaged_required_input_is_a_one_line_error(run_root, tmp_path):
    import subprocess
    import sys
    root = copy_run(run_root, tmp_path)
    path = root / "metrics" / "tiny-gemma" / "probes.json"
    cmd = [sys.executable, str(ROOT / "stages" / "summary.py"), "--params", str(root / "params.yaml"),
           "--metrics", str(root / "metrics"), "--plots", str(root / "plots")]
    probes = json.loads(path.read_text())
    del probes["transfer"]["h"]
    path.write_text(json.dumps(probes))
    with pytest.raises(DataError, match=r"tiny-gemma/probes\.json: missing or malformed entry \(KeyError: 'h'\)$"):
        summarize(root)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"tiny-gemma/probes\.json: not readable \(Expecting property name"):
        summarize(root)
    path.unlink()
    geometry = root / "metrics" / "tiny-llama" / "geometry.json"      # optional, but wrong when present
    intact = geometry.read_text()
    damaged = json.loads(intact)
    del damaged["A"]["wheel_p"]
    geometry.write_text(json.dumps(damaged))
    with pytest.raises(DataError, match=r"llama/geometry\.json: missing or malformed entry \(KeyError: 'wheel_p'\)"):
        summarize(root)
    geometry.write_text(intact)
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [f"error: {path}: not found (run its stage: `dvc repro`, or `dvc pull`)"]
    assert not (root / "metrics" / "summary.json").exists()


def test_markdown_table_escapes_pipes():
    text = report.markdown_table(["a", "b|c"], [["1", "x | y"]])
    assert text.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | x \\| y |"]
