"""Linear probes per activation site and layer, each reported beside its controls.

For one model: Set A and Set B 8-class probes, transfer A->B, binary B-vs-N (with the first layer reaching
`saturation`), the Set C check, control tasks (selectivity), label-permutation nulls at the peak layer, and the same
curves for the model's random-init control and for the zero-shot prompt when their activations exist.
All statistics come from `stats`: one protocol, one AUROC, one bootstrap. AUROC chance is 0.5; accuracy chance 1/k.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from . import stats
from .config import EMOTIONS, ConfigError, Params
from .io import DataError, load_npz, write_csv, write_json

log = logging.getLogger(__name__)

SITES = ("h", "a", "m")
NEUTRAL = "neutral"
BINARY_NAMES = np.array([NEUTRAL, "emotional"])           # b_vs_n label 0 / 1
HEADLINE = ("set_a", "set_b", "transfer", "b_vs_n")         # computed for every variant; permutation null at the peak
CONTROLLED = ("set_a", "set_b", "b_vs_n")                   # have a control task (labels shuffled once per stimulus)
SEED_OFFSET = {"control": 1, "bootstrap": 2, "permutation": 3}
PERM_CHUNK = 25                                             # permutations per joblib job
CSV_COLUMNS = ["task", "site", "layer", "depth", "auroc", "low", "high", "accuracy", "chance_auroc",
               "chance_accuracy"]


@dataclass(frozen=True)
class ProbeSettings:
    """params.yaml `probes:`. `seed: null` means the top-level `seed`, so the splits match the stimuli stage's
    text-only baselines. `n_perm` permutations run at the peak layer only; `n_jobs` workers over (site, layer)."""
    seed: int | None = None
    folds: int = 5
    C: float = 1.0
    n_boot: int = 1000
    n_perm: int = 200
    n_jobs: int = 2
    saturation: float = 0.999
    prompt: str = "two-shot"
    zero_shot_prompt: str | None = "zero-shot"

    def __post_init__(self):
        checks = {"folds": self.folds >= 2, "C": self.C > 0, "n_boot": self.n_boot >= 100,
                  "n_perm": self.n_perm >= 0, "n_jobs": self.n_jobs >= 1 or self.n_jobs == -1,
                  "saturation": 0.5 < self.saturation <= 1}
        rules = {"folds": "at least 2", "C": "positive", "n_boot": "at least 100", "n_perm": "0 or more",
                 "n_jobs": "a positive integer or -1", "saturation": "in (0.5, 1]"}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"params.yaml: probes.{key}: must be {rules[key]}, got {getattr(self, key)!r}")


def settings_from(params: Params) -> ProbeSettings:
    """The `probes` section with `seed: null` resolved to the top-level seed and the prompt names checked."""
    settings = params.section("probes", ProbeSettings)
    params.prompt(settings.prompt)
    if settings.zero_shot_prompt is not None:
        params.prompt(settings.zero_shot_prompt)
    return dataclasses.replace(settings, seed=params.seed if settings.seed is None else settings.seed)


def random_init_of(params: Params, model: str) -> str | None:
    """The registry's random-init control of `model` (the entry with `source: random-init, base: model`), if any."""
    params.model(model)
    found = [s.name for s in params.models.values() if s.source == "random-init" and s.base == model]
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SetData:
    """One activation file: `sites[kind]` is `(n_stimuli, n_layers, d_model)`; `ids`, `emotions` are `(n_stimuli,)`."""
    path: Path
    sites: dict
    ids: np.ndarray
    emotions: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.sites["h"].shape


def load_set(path) -> SetData:
    """Read one .npz of the activation contract; a missing array, a bad shape or a non-finite value is a DataError."""
    path = Path(path)
    arrays = load_npz(path, required=(*SITES, "ids", "emotions"))
    shape = arrays["h"].shape
    for kind in SITES:
        x = arrays[kind]
        if x.ndim != 3 or x.dtype.kind != "f":
            raise DataError(f"{path}: {kind} must be a float array (n_stimuli, n_layers, d_model), got "
                            f"{x.dtype} {x.shape}")
        if x.shape != shape:
            raise DataError(f"{path}: {kind} has shape {x.shape} but h has {shape}")
        if not np.isfinite(x).all():
            raise DataError(f"{path}: non-finite values in {kind}")
    for key in ("ids", "emotions"):
        if arrays[key].shape != (shape[0],):
            raise DataError(f"{path}: {key} has shape {arrays[key].shape}, expected ({shape[0]},) like h")
    return SetData(path, {k: arrays[k] for k in SITES}, arrays["ids"].astype(str), arrays["emotions"].astype(str))


def load_prompt(folder: Path, sets=("A", "B", "N", "C"), reference: dict | None = None) -> dict[str, SetData]:
    """The sets of one model x prompt folder, checked against each other (and against `reference`'s stimuli)."""
    data = {s: load_set(Path(folder) / f"{s}.npz") for s in sets}
    first = data[sets[0]]
    for s, d in data.items():
        if d.shape[1:] != first.shape[1:]:
            raise DataError(f"{d.path}: (n_layers, d_model) = {d.shape[1:]} but {first.path.name} has "
                            f"{first.shape[1:]}")
        expected = (NEUTRAL,) if s in ("N", "C") else EMOTIONS
        bad = sorted(set(d.emotions.tolist()) - set(expected))
        if bad:
            raise DataError(f"{d.path}: unexpected emotion label {bad[0]!r} for set {s} (expected "
                            f"{', '.join(expected)})")
        if reference is not None and s in reference and not np.array_equal(d.ids, reference[s].ids):
            raise DataError(f"{d.path}: ids differ from {reference[s].path} (same stimuli, same order expected)")
    if "A" in data and "B" in data and set(data["A"].emotions) != set(data["B"].emotions):
        raise DataError(f"{data['B'].path}: emotions differ from {data['A'].path.name}'s (transfer needs the same)")
    return data


def optional_prompt(folder: Path, sets, reference) -> dict[str, SetData] | None:
    """Like `load_prompt`, but None (logged) when none of the files exists; a partial folder is a DataError."""
    paths = [Path(folder) / f"{s}.npz" for s in sets]
    present = [p.exists() for p in paths]
    if not any(present):
        log.warning("no activations in %s: skipped", folder)
        return None
    if not all(present):
        missing = paths[present.index(False)]
        raise DataError(f"{missing}: not found while other sets of {folder} exist (run `dvc repro` or `dvc pull`)")
    return load_prompt(folder, sets, reference)


def load_baselines(path) -> dict:
    """The text-only baselines of the stimuli stage (`baselines.set_b_8class`, `baselines.b_vs_n`), numbers only."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    found = raw.get("baselines", {}) if isinstance(raw, dict) else {}
    out = {}
    for src, dst in (("set_b_8class", "set_b"), ("b_vs_n", "b_vs_n")):
        if not isinstance(found.get(src), dict):
            raise DataError(f"{path}: missing baselines.{src}")
        out[dst] = _numbers(found[src])
    return out


def _numbers(tree):
    if isinstance(tree, dict):
        kept = {k: _numbers(v) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {}}
    return tree if isinstance(tree, (int, float)) and not isinstance(tree, bool) else None


# ---------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """Labels and splits of one probe task, shared by every site, layer and variant.

    `y (n,)` labels of the scored items; `splits` the CV folds, or None for transfer (fit on Set A with `y_fit`,
    score every Set B item); `inputs` names the sets whose rows form X (stacked in order)."""
    name: str
    inputs: tuple[str, ...]
    y: np.ndarray
    splits: list | None = None
    y_fit: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(np.unique(self.y))


def make_tasks(data: dict[str, SetData], settings: ProbeSettings) -> dict[str, Task]:
    """Every task of the headline variant, control tasks included; folds are drawn once per task."""
    def split(y, where):
        try:
            return stats.folds(y, settings.folds, settings.seed)
        except ValueError as err:
            raise DataError(f"{where}: {err} (probes.folds={settings.folds})") from None

    ya, yb = data["A"].emotions, data["B"].emotions
    ybn = np.r_[np.ones(len(yb), int), np.zeros(len(data["N"].emotions), int)]
    tasks = {
        "set_a": Task("set_a", ("A",), ya, split(ya, data["A"].path)),
        "set_b": Task("set_b", ("B",), yb, split(yb, data["B"].path)),
        "transfer": Task("transfer", ("A", "B"), yb, None, ya),
        "b_vs_n": Task("b_vs_n", ("B", "N"), ybn, split(ybn, data["N"].path)),
    }
    for name in CONTROLLED:
        y = stats.control_labels(tasks[name].y, settings.seed + SEED_OFFSET["control"])
        where = data[tasks[name].inputs[-1]].path
        tasks[f"{name}_control"] = Task(f"{name}_control", tasks[name].inputs, y, split(y, where))
    return tasks


@dataclass(frozen=True)
class Score:
    """One task at one site and layer: AUROC with its bootstrap interval, accuracy, and the predicted labels `(n,)`."""
    auroc: float
    low: float
    high: float
    accuracy: float
    predicted: np.ndarray


def _features(task: Task, x: dict[str, np.ndarray]):
    """X `(n, d_model)` float64 of a task, or (Set A, Set B) for transfer."""
    if task.splits is None:
        return x[task.inputs[0]].astype(np.float64), x[task.inputs[1]].astype(np.float64)
    return np.concatenate([x[s] for s in task.inputs]).astype(np.float64)


def _proba(task: Task, X, y, C: float) -> np.ndarray:
    """Out-of-fold class probabilities `(n, k)`, or for transfer the Set A probe's probabilities on Set B."""
    if task.splits is None:
        return stats.probe_pipeline(C).fit(X[0], y).predict_proba(X[1])
    return stats.cv_proba(X, y, task.splits, C=C)


def _layer_job(x: dict[str, np.ndarray], tasks: list[Task], settings: ProbeSettings):
    """All `tasks` at one site and layer; `x` maps a set name to its `(n, d_model)` activations.

    Returns ({task: Score}, {"fit": s, "bootstrap": s}); the bootstrap resamples the out-of-fold probabilities."""
    seconds = {"fit": 0.0, "bootstrap": 0.0}
    scores = {}
    for task in tasks:
        start = time.perf_counter()
        proba = _proba(task, _features(task, x), task.y if task.splits is not None else task.y_fit, settings.C)
        middle = time.perf_counter()
        point, low, high = stats.bootstrap_auroc(task.y, proba, settings.n_boot,
                                                 settings.seed + SEED_OFFSET["bootstrap"])
        seconds["fit"] += middle - start
        seconds["bootstrap"] += time.perf_counter() - middle
        predicted = np.unique(task.y)[np.argmax(proba, axis=1)]
        scores[task.name] = Score(point, low, high, float(np.mean(predicted == task.y)), predicted)
    return scores, seconds


def _perm_job(task: Task, X, orders: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """AUROC under each row of `orders (n_perm, n)`: labels (for transfer, Set A's) permuted, same splits."""
    start = time.perf_counter()
    null = np.empty(len(orders))
    for i, order in enumerate(orders):
        if task.splits is None:
            null[i] = stats.auroc(task.y, _proba(task, X, task.y_fit[order], C))
        else:
            y = task.y[order]
            null[i] = stats.auroc(y, _proba(task, X, y, C))
    return null, time.perf_counter() - start


def _run_jobs(jobs, n_jobs: int, desc: str) -> list:
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, leave=False, disable=None))


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class ProbeResult:
    """What the stage writes: metrics (nested, flattened by DVC), the long CSV rows, per-task layer curves
    (`layer, h, a, m, chance`), confusion rows of the peak probes (`id, actual, predicted`), and timings."""
    metrics: dict
    rows: list[dict]
    curves: dict[str, list[dict]]
    confusions: dict[str, list[dict]]
    seconds: dict[str, float]


def _peak(scores: list[Score]) -> int:
    return int(np.argmax([s.auroc for s in scores]))  # the first layer on ties


def _summary(scores: list[Score], layer: int) -> dict:
    n_layers = len(scores)
    s = scores[layer]
    return {"peak_layer": layer, "peak_depth": (layer + 1) / n_layers, "auroc": s.auroc, "low": s.low,
            "high": s.high, "accuracy": s.accuracy}


def _saturation(scores: list[Score], threshold: float) -> dict:
    above = [l for l, s in enumerate(scores) if s.auroc >= threshold]
    layer = above[0] if above else None
    return {"saturation_layer": layer, "saturation_depth": None if layer is None else (layer + 1) / len(scores)}


def _variant_metrics(curves: dict, tasks: dict[str, Task], settings: ProbeSettings) -> dict:
    """Peak summaries of the headline tasks of one variant: `{task: {site: {...}}}`."""
    out = {}
    for name in HEADLINE:
        out[name] = {"chance_auroc": 0.5, "chance_accuracy": 1 / tasks[name].k}
        for site in SITES:
            scores = curves[name][site]
            out[name][site] = _summary(scores, _peak(scores))
            if name == "b_vs_n":
                out[name][site].update(_saturation(scores, settings.saturation))
    return out


def _rows(prefix: str, curves: dict, tasks: dict[str, Task]) -> list[dict]:
    rows = []
    for name, by_site in curves.items():
        for site in SITES:
            scores = by_site[site]
            for layer, s in enumerate(scores):
                rows.append({"task": prefix + name, "site": site, "layer": layer, "depth": (layer + 1) / len(scores),
                             "auroc": s.auroc, "low": s.low, "high": s.high, "accuracy": s.accuracy,
                             "chance_auroc": 0.5, "chance_accuracy": 1 / tasks[name].k})
    return rows


def _curve_tables(prefix: str, curves: dict) -> dict[str, list[dict]]:
    return {prefix + name: [{"layer": l, **{site: by_site[site][l].auroc for site in SITES}, "chance": 0.5}
                            for l in range(len(by_site["h"]))]
            for name, by_site in curves.items()}


def _set_c(data: dict[str, SetData], tasks: dict[str, Task], curves: dict, settings: ProbeSettings) -> dict:
    """At each site's peak B-vs-N layer, a probe fit on all of B+N labels Set C: the fraction called emotional,
    beside the out-of-fold fraction of Set N called emotional at the same layer."""
    task, n_b = tasks["b_vs_n"], len(data["B"].ids)
    out = {}
    for site in SITES:
        layer = _peak(curves["b_vs_n"][site])
        X = np.concatenate([data["B"].sites[site][:, layer], data["N"].sites[site][:, layer]]).astype(np.float64)
        model = stats.probe_pipeline(settings.C).fit(X, task.y)
        called = model.predict(data["C"].sites[site][:, layer].astype(np.float64)) == 1
        fraction, low, high = stats.bootstrap_mean(called.astype(float), settings.n_boot,
                                                   settings.seed + SEED_OFFSET["bootstrap"])
        oof = curves["b_vs_n"][site][layer].predicted
        out[site] = {"layer": layer, "fraction_emotional": fraction, "low": low, "high": high,
                     "n_fraction_emotional": float(np.mean(oof[n_b:] == 1)),
                     "b_fraction_emotional": float(np.mean(oof[:n_b] == 1))}
    return out


def run_probes(folder, settings: ProbeSettings, control_folder=None, baselines_path=None) -> ProbeResult:
    """All probes of one model. `folder` is `data/activations/<model>` (its `settings.prompt` subfolder must hold
    A, B, N, C); `control_folder` the random-init model's folder. The random-init and zero-shot variants run when
    their files exist; the baselines are copied when `baselines_path` exists. Everything is read before any fit."""
    wall = time.perf_counter()
    folder = Path(folder)
    data = load_prompt(folder / settings.prompt)
    tasks = make_tasks(data, settings)
    baselines = load_baselines(baselines_path) if baselines_path and Path(baselines_path).exists() else None
    variants = {"": (data, list(tasks))}
    for prefix, where in (("random_init.", control_folder and Path(control_folder) / settings.prompt),
                          ("zero_shot.", settings.zero_shot_prompt and folder / settings.zero_shot_prompt)):
        found = optional_prompt(where, ("A", "B", "N"), data) if where else None
        if found:
            variants[prefix] = (found, list(HEADLINE))
    seconds = defaultdict(float)
    curves = _curves(variants, tasks, settings, seconds, desc=f"probes {folder.name}")

    main = curves[""]
    metrics = {"n_layers": data["A"].shape[1], "d_model": data["A"].shape[2], "n_boot": settings.n_boot,
               "n_perm": settings.n_perm, **_variant_metrics(main, tasks, settings)}
    for name in CONTROLLED:
        for site in SITES:
            m, control = metrics[name][site], main[f"{name}_control"][site]
            at_peak = control[m["peak_layer"]].auroc
            m.update(control_auroc=at_peak, selectivity=m["auroc"] - at_peak,
                     control_peak_auroc=max(s.auroc for s in control))
    if settings.n_perm:
        _add_permutation_p(metrics, data, tasks, settings, seconds)
    metrics["set_c"] = _set_c(data, tasks, main, settings)
    if "random_init." in variants:
        metrics["random_init"] = {"model": Path(control_folder).name,
                                  **_variant_metrics(curves["random_init."], tasks, settings)}
    if "zero_shot." in variants:
        metrics["zero_shot"] = _variant_metrics(curves["zero_shot."], tasks, settings)
    if baselines is not None:
        metrics["baselines"] = baselines

    rows, tables = [], {}
    for prefix in variants:
        rows += _rows(prefix, curves[prefix], tasks)
        tables.update(_curve_tables(prefix, curves[prefix]))
    seconds["wall"] = time.perf_counter() - wall
    _log_headline(folder.name, metrics)
    return ProbeResult(metrics, rows, tables, _confusions(data, tasks, main), dict(seconds))


def _curves(variants: dict, tasks: dict[str, Task], settings: ProbeSettings, seconds, desc: str) -> dict:
    """`{variant: {task: {site: [Score per layer]}}}`, one joblib job per (variant, site, layer)."""
    keys, jobs = [], []
    for prefix, (vdata, names) in variants.items():
        for site in SITES:
            for layer in range(vdata["A"].shape[1]):
                x = {s: np.ascontiguousarray(vdata[s].sites[site][:, layer]) for s in ("A", "B", "N")}
                keys.append((prefix, site))
                jobs.append(delayed(_layer_job)(x, [tasks[n] for n in names], settings))
    curves = {prefix: defaultdict(lambda: defaultdict(list)) for prefix in variants}
    for (prefix, site), (scores, secs) in zip(keys, _run_jobs(jobs, settings.n_jobs, desc)):
        for name, score in scores.items():
            curves[prefix][name][site].append(score)  # results arrive in submission order, i.e. layer order
        for k, v in secs.items():
            seconds[k] += v
    return curves


def _add_permutation_p(metrics, data, tasks, settings, seconds) -> None:
    """Label-permutation p at each (task, site)'s peak layer; one permutation matrix per task, chunked over jobs.
    The p is conditional on the layer (the selection of the peak among layers is not part of the null)."""
    keys, jobs = [], []
    for name in HEADLINE:
        task = tasks[name]
        n = len(task.y if task.splits is not None else task.y_fit)
        rng = np.random.default_rng(settings.seed + SEED_OFFSET["permutation"])
        orders = np.argsort(rng.random((settings.n_perm, n)), axis=1)
        for site in SITES:
            layer = metrics[name][site]["peak_layer"]
            X = _features(task, {s: data[s].sites[site][:, layer] for s in task.inputs})
            for start in range(0, settings.n_perm, PERM_CHUNK):
                keys.append((name, site))
                jobs.append(delayed(_perm_job)(task, X, orders[start:start + PERM_CHUNK], settings.C))
    nulls = defaultdict(list)
    for key, (null, secs) in zip(keys, _run_jobs(jobs, settings.n_jobs, "permutations")):
        nulls[key].append(null)
        seconds["permutation"] += secs
    for (name, site), parts in nulls.items():
        m = metrics[name][site]
        m["p_perm"] = stats.permutation_p(m["auroc"], np.concatenate(parts))


def _confusions(data, tasks, main) -> dict[str, list[dict]]:
    """Out-of-fold predictions of each headline probe at its peak layer (transfer: every Set B item)."""
    out = {}
    for name in HEADLINE:
        task = tasks[name]
        ids = np.concatenate([data[s].ids for s in (task.inputs if task.splits is not None else task.inputs[1:])])
        for site in SITES:
            scores = main[name][site]
            predicted = scores[_peak(scores)].predicted
            actual, predicted = (BINARY_NAMES[task.y], BINARY_NAMES[predicted]) if name == "b_vs_n" else (task.y,
                                                                                                         predicted)
            out[f"{name}_{site}"] = [{"id": i, "actual": a, "predicted": p} for i, a, p in zip(ids, actual, predicted)]
    return out


def _log_headline(model: str, metrics: dict) -> None:
    for name in ("set_a", "set_b", "transfer"):
        for site in SITES:
            m = metrics[name][site]
            log.info("%s %s %s: peak layer %d, AUROC %.3f [%.3f, %.3f]", model, name, site, m["peak_layer"],
                     m["auroc"], m["low"], m["high"])
    for site in SITES:
        log.info("%s b_vs_n %s: saturation layer %s", model, site, metrics["b_vs_n"][site]["saturation_layer"])


def write_outputs(result: ProbeResult, metrics_path, plots_dir) -> None:
    """metrics JSON, `probes.csv` (one row per task, site, layer), `probes/layers/<task>.csv` (AUROC per site, for
    `dvc plots`), `probes/confusion/<task>_<site>.csv`; stale CSVs of an earlier run are removed."""
    plots_dir = Path(plots_dir)
    write_json(metrics_path, result.metrics)
    write_csv(plots_dir / "probes.csv", result.rows, CSV_COLUMNS)
    for sub, tables, columns in (("layers", result.curves, ["layer", *SITES, "chance"]),
                                 ("confusion", result.confusions, ["id", "actual", "predicted"])):
        folder = plots_dir / "probes" / sub
        for name, rows in tables.items():
            write_csv(folder / f"{name}.csv", rows, columns)
        for stale in set(folder.glob("*.csv")) - {folder / f"{name}.csv" for name in tables}:
            stale.unlink()
