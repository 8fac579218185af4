"""Linear probes per activation site and layer, each reported beside its null, its baselines and its controls.

For one model: Set A and Set B 8-class probes, transfer A->B (layer chosen on Set A's own CV), binary B-vs-N (with
the first layer reaching `saturation`) and the Set C check, for the headline prompt, the zero-shot prompt and the
random-init control when their activations exist. Every CV task uses `stats.splits` (grouped by `pair`, so a B item
and its N twin share a fold) repeated `repeats` times; intervals combine a bootstrap over stimuli (over pairs for B vs
N) with the repeat spread. Beside every curve: the label-permutation null per layer (closed-form ridge on the same
splits, its mean and 95th percentile), a max-over-layers (and over sites) permutation p for the peak, BH q-values
over layers x sites, a nested estimate (layer chosen inside training folds), text-only baselines on the same splits
(length, polarity, bag of words, style only, tuned TF-IDF word+char n-grams, bag of the model's input embeddings) with "probe
minus best baseline" and its paired interval, MDL online codelength (Voita & Titov 2020) for the trained and the
random-init model, the domain-held-out Set B curve when the stimuli carry domains, and the situation-held-out Set B
probe (scripts held out, at the peak layer) when they carry scripts. No control task: the
random-init model and MDL are the controls (a once-shuffled label set is one draw of the permutation null). The
random-init and zero-shot curves use one repeat and no null (comparison curves, not tests).
AUROC chance is 0.5 but the reference line is the null; accuracy chance is 1/k.
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
from sklearn.model_selection import LeaveOneGroupOut
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from . import fastprobe, stats
from .config import EMOTIONS, ConfigError, Params
from .io import DataError, load_npz, write_csv, write_json, write_text
from .seeds import derive, resolve, splits_seed
from .tfidf import TfidfCounts, TfidfSearch

log = logging.getLogger(__name__)

SITES = ("h", "a", "m")
NEUTRAL = "neutral"
BINARY_NAMES = np.array([NEUTRAL, "emotional"])           # b_vs_n label 0 / 1
HEADLINE = ("set_a", "set_b", "transfer", "b_vs_n")         # computed for every variant
CV_TASKS = ("set_a", "set_b", "b_vs_n")                     # cross-validated (transfer is fit on A, scored on B)
MDL_TASKS = CV_TASKS
LEVEL = 0.95
CSV_COLUMNS = ["task", "site", "layer", "depth", "auroc", "low", "high", "accuracy", "ridge_auroc", "null_mean",
               "null_p95", "p_layer", "q_bh", "chance_auroc", "chance_accuracy"]
DOMAIN_COLUMNS = ["layer", "auroc", "low", "high", "cv_auroc", "n_domains", "domain_mean", "domain_sd", "domain_min",
                  "domain_max"]


@dataclass(frozen=True)
class ProbeSettings:
    """params.yaml `probes:`. `seed: null` means the top-level `seed`. `repeats` grouped CV repeats (interval with
    refit variance); `n_perm` label permutations of the closed-form ridge null (`ridge_alpha`) at every layer and
    site; `tfidf_C` the grid tuned inside training folds; `mdl_fractions` the online-code block ends, `mdl_orders`
    the random transmission orders it is computed over (mean and range); `n_jobs` workers over (variant, site,
    layer)."""
    seed: int | None = None
    folds: int = 5
    repeats: int = 5
    C: float = 1.0
    n_boot: int = 1000
    n_perm: int = 1000
    ridge_alpha: float = 1.0
    tfidf_C: tuple[float, ...] = (0.1, 1.0, 10.0)
    mdl_fractions: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    mdl_orders: int = 3
    n_jobs: int = 2
    saturation: float = 0.999
    prompt: str = "two-shot"
    zero_shot_prompt: str | None = "zero-shot"

    def __post_init__(self):
        fr = self.mdl_fractions
        checks = {"folds": self.folds >= 2, "repeats": self.repeats >= 1, "C": self.C > 0,
                  "n_boot": self.n_boot >= 100, "n_perm": self.n_perm >= 0, "ridge_alpha": self.ridge_alpha > 0,
                  "tfidf_C": len(self.tfidf_C) >= 1 and min(self.tfidf_C) > 0,
                  "mdl_fractions": len(fr) >= 2 and list(fr) == sorted(set(fr)) and 0 < fr[0] and fr[-1] == 1,
                  "mdl_orders": self.mdl_orders >= 1,
                  "n_jobs": self.n_jobs >= 1 or self.n_jobs == -1, "saturation": 0.5 < self.saturation <= 1}
        rules = {"folds": "at least 2", "repeats": "at least 1", "C": "positive", "n_boot": "at least 100",
                 "n_perm": "0 or more", "ridge_alpha": "positive", "tfidf_C": "a non-empty list of positive numbers",
                 "mdl_fractions": "increasing fractions in (0, 1] ending at 1", "mdl_orders": "at least 1",
                 "n_jobs": "a positive integer or -1",
                 "saturation": "in (0.5, 1]"}
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"params.yaml: probes.{key}: must be {rules[key]}, got {getattr(self, key)!r}")


def settings_from(params: Params) -> ProbeSettings:
    """The `probes` section with `seed: null` resolved to the top-level seed and the prompt names checked."""
    settings = params.section("probes", ProbeSettings)
    params.prompt(settings.prompt)
    if settings.zero_shot_prompt is not None:
        params.prompt(settings.zero_shot_prompt)
    return dataclasses.replace(settings, seed=resolve(settings.seed, params.seed))


def stream(settings: ProbeSettings, purpose: str, *index: int) -> int:
    """The probes' random stream for `purpose` (`seeds.derive` under the resolved seed)."""
    return derive(settings.seed, "probes", purpose, *index)


def random_init_of(params: Params, model: str) -> str | None:
    """The registry's random-init control of `model` (the entry with `source: random-init, base: model`), if any."""
    params.model(model)
    found = [s.name for s in params.models.values() if s.source == "random-init" and s.base == model]
    return found[0] if found else None


def read_items(path) -> dict[str, dict]:
    """id -> the JSON object of each line of a stimuli JSONL, read tolerantly (extra keys such as `domain` kept,
    blank lines skipped), so optional fields are available whether or not the loader knows them."""
    path = Path(path)
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err})") from None
        if not isinstance(obj, dict) or "id" not in obj:
            raise DataError(f"{path}:{number}: expected an object with an `id`")
        out[str(obj["id"])] = obj
    return out


def input_embeddings(model_name: str, params: Params, texts: dict[str, str]) -> dict[str, np.ndarray]:
    """Bag-of-embeddings baseline features: id -> `(d_model,)` mean of the model's own input token embeddings over
    the stimulus text (no context, no layers): what a probe gets from word identity alone."""
    import torch

    from .models import load_model

    loaded = load_model(model_name, params, device="cpu", dtype="float32")
    table = loaded.model.get_input_embeddings().weight.detach()
    out = {}
    with torch.no_grad():
        for key, text in texts.items():
            tokens = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
            out[key] = table[tokens].mean(dim=0).numpy().astype(np.float64)
    return out


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


# ---------------------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """Labels and splits of one probe task, shared by every site, layer, variant and text baseline.

    `y (n,)` labels of the scored items and `codes (n,)` their 0..k-1 codes; `folds` the repeated CV splits (a list
    per repeat) or None for transfer (fit on Set A with `y_fit`, score every Set B item); `groups (n,)` the pair
    groups (None: items unlinked); `inputs` names the sets whose rows form X (stacked in order); `orders
    (n_perm + 1, n_fit)` the label permutations of the null (row 0 the identity), shared by every layer and site."""
    name: str
    inputs: tuple[str, ...]
    y: np.ndarray
    folds: list | None = None
    y_fit: np.ndarray | None = None
    groups: np.ndarray | None = None
    orders: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(np.unique(self.y))

    @property
    def codes(self) -> np.ndarray:
        return np.unique(self.y, return_inverse=True)[1]

    @property
    def fit_codes(self) -> np.ndarray:
        return np.unique(self.y_fit if self.folds is None else self.y, return_inverse=True)[1]


def make_tasks(data: dict[str, SetData], settings: ProbeSettings, pairs: dict[str, str] | None = None) -> dict:
    """The four headline tasks; folds and permutations are drawn once per task. `pairs` (id -> twin id, from the
    stimuli JSONL) groups B vs N; without it the B-vs-N splits are not grouped (logged)."""
    def split(y, where, groups=None):
        try:
            return stats.splits(y, settings.folds, splits_seed(settings.seed), groups, settings.repeats)
        except ValueError as err:
            raise DataError(f"{where}: {err} (probes.folds={settings.folds})") from None

    def seed(task: str) -> int:
        return stream(settings, "permutation", task)

    ya, yb = data["A"].emotions, data["B"].emotions
    ybn = np.r_[np.ones(len(yb), int), np.zeros(len(data["N"].emotions), int)]
    ids = np.r_[data["B"].ids, data["N"].ids]
    if pairs:
        groups = stats.groups_from_pairs(ids, [pairs.get(i) for i in ids])
    else:
        log.warning("no pair links for Sets B and N: B-vs-N splits are not grouped (twins may be split)")
        groups = None
    fa, fb, fbn = split(ya, data["A"].path), split(yb, data["B"].path), split(ybn, data["N"].path, groups)
    return {
        "set_a": Task("set_a", ("A",), ya, fa, orders=null_orders(fa[0], len(ya), settings.n_perm, seed("set_a"))),
        "set_b": Task("set_b", ("B",), yb, fb, orders=null_orders(fb[0], len(yb), settings.n_perm, seed("set_b"))),
        "transfer": Task("transfer", ("A", "B"), yb, None, ya, orders=stats.permutations(len(ya), settings.n_perm,
                                                                                         seed("transfer"))),
        "b_vs_n": Task("b_vs_n", ("B", "N"), ybn, fbn, groups=groups,
                       orders=null_orders(fbn[0], len(ybn), settings.n_perm, seed("b_vs_n"), groups)),
    }


def null_orders(folds, n: int, n_perm: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """`(n_perm + 1, n)` label orders of a CV task's permutation null on the split `folds` (row 0 the identity):
    labels permuted within each test fold (every fold keeps its label counts); with `groups`, the two members of
    each two-item group (a B item and its N twin) swap labels with probability 1/2 and the rest are permuted
    within their test folds. The transfer task has no folds: its null shuffles Set A's training labels freely
    (`stats.permutations`; class counts are kept, Set B is scored with its true labels)."""
    tests = [np.asarray(test) for _, test in folds]
    if groups is None:
        return stats.block_permutations(tests, n, n_perm, seed)
    sizes = np.bincount(groups)
    twins = sizes[groups] == 2
    pairs = np.stack([np.flatnonzero(groups == g) for g in np.flatnonzero(sizes == 2)]) if twins.any() else \
        np.zeros((0, 2), int)
    return stats.pair_swaps(pairs, [t[~twins[t]] for t in tests], n, n_perm, seed)


@dataclass(frozen=True)
class Score:
    """One task at one site and layer. `auroc` is the mean over repeats, `low`/`high` the interval with refit
    variance; `probas (R, n, k)` the out-of-fold probabilities per repeat; `null (n_perm + 1,)` the ridge AUROC
    under each label order (entry 0: the observed labels); `predicted (n,)` the first repeat's labels."""
    auroc: float
    low: float
    high: float
    accuracy: float
    predicted: np.ndarray
    probas: np.ndarray
    null: np.ndarray

    @property
    def ridge(self) -> float:
        return float(self.null[0])

    @property
    def null_mean(self) -> float:
        return float(self.null[1:].mean()) if len(self.null) > 1 else float("nan")

    @property
    def null_p95(self) -> float:
        return float(np.percentile(self.null[1:], 95)) if len(self.null) > 1 else float("nan")

    @property
    def p_layer(self) -> float:
        return stats.permutation_p(self.ridge, self.null[1:]) if len(self.null) > 1 else float("nan")


def _features(task: Task, x: dict[str, np.ndarray]):
    """X `(n, d_model)` float64 of a task, or (Set A, Set B) for transfer."""
    if task.folds is None:
        return x[task.inputs[0]].astype(np.float64), x[task.inputs[1]].astype(np.float64)
    return np.concatenate([x[s] for s in task.inputs]).astype(np.float64)


def _probas(task: Task, X, C: float) -> np.ndarray:
    """`(R, n, k)` out-of-fold probabilities per repeat, or `(1, n_B, k)` for transfer (Set A probe on Set B)."""
    if task.folds is None:
        return fastprobe.probe_pipeline(C).fit(X[0], task.y_fit).predict_proba(X[1])[None]
    return np.stack([stats.cv_proba(X, task.y, folds, model_factory=lambda: fastprobe.probe_pipeline(C))
                     for folds in task.folds])


def ridge_null(task: Task, X, alpha: float) -> np.ndarray:
    """Ridge AUROC `(n_perm + 1,)` under each of the task's label orders, on the first repeat's splits (observed and
    null use the same statistic). The hat matrices depend on X only, so every permutation costs one product."""
    k = task.k
    if task.folds is None:
        hats = stats.ridge_hats(X[0], None, alpha, X_test=X[1])
        Y = stats.one_hot(task.fit_codes[task.orders], k)
        scores = stats.ridge_scores(hats, Y, n_out=len(task.y))
        return stats.auroc_many(np.broadcast_to(task.codes, (len(Y), len(task.y))), scores)
    labels = task.codes[task.orders]
    return stats.auroc_many(labels, stats.ridge_scores(stats.ridge_hats(X, task.folds[0], alpha),
                                                       stats.one_hot(labels, k)))


def _layer_job(x: dict[str, np.ndarray], tasks: list[Task], settings: ProbeSettings):
    """All `tasks` at one site and layer; `x` maps a set name to its `(n, d_model)` activations.
    Returns ({task: Score}, seconds by part)."""
    seconds = defaultdict(float)
    scores = {}
    for task in tasks:
        X = _features(task, x)
        start = time.perf_counter()
        probas = _probas(task, X, settings.C)
        middle = time.perf_counter()
        point, low, high = stats.repeated_auroc(task.y, probas, settings.n_boot, stream(settings, "bootstrap"),
                                                task.groups)
        after = time.perf_counter()
        null = ridge_null(task, X, settings.ridge_alpha)
        seconds["fit"] += middle - start
        seconds["bootstrap"] += after - middle
        seconds["null"] += time.perf_counter() - after
        classes = np.unique(task.y)
        acc = float(np.mean([np.mean(classes[np.argmax(p, axis=1)] == task.y) for p in probas]))
        scores[task.name] = Score(point, low, high, acc, classes[np.argmax(probas[0], axis=1)], probas, null)
    return scores, dict(seconds)


def _run_jobs(jobs, n_jobs: int, desc: str) -> list:
    results = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    return list(tqdm(results, total=len(jobs), desc=desc, leave=False, disable=None))


# ---------------------------------------------------------------------------------------------------- nested


def nested_job(task: Task, X: np.ndarray, settings: ProbeSettings, repeat: int = 0
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """Nested estimate on the folds of repeat `repeat`: inside each training fold, the layer with the best inner-CV
    ridge AUROC is chosen (inner grouped splits), then the logistic probe at that layer is fit on the training fold
    and scores the held-out fold. `X (n, n_layers, d)`. Returns (out-of-fold proba `(n, k)`, chosen layer per
    outer fold, seconds)."""
    start = time.perf_counter()
    y, codes, k = task.y, task.codes, task.k
    proba = np.zeros((len(y), k))
    chosen = []
    for o, (train, test) in enumerate(task.folds[repeat]):
        g = None if task.groups is None else task.groups[train]
        inner = stats.splits(y[train], settings.folds - 1 if settings.folds > 2 else 2,
                             stream(settings, "nested", repeat, o), g)[0]
        layer = int(np.argmax(fastprobe.ridge_layer_aurocs(X[train], codes[train], inner, settings.ridge_alpha,
                                                                    k)))
        chosen.append(layer)
        model = fastprobe.probe_pipeline(settings.C).fit(X[train, layer], y[train])
        cols = np.searchsorted(np.unique(y), model.classes_)
        proba[np.ix_(test, cols)] = model.predict_proba(X[test, layer])
    return proba, np.array(chosen), time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- MDL


def mdl_order(y: np.ndarray, groups: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A transmission order of the items and the group-boundary positions: groups shuffled, then interleaved by
    class (round robin) so that every early block holds every class; twins stay adjacent and are never split
    across blocks. Returns (order `(n,)`, the cumulative item count after each group)."""
    rng = np.random.default_rng(derive(seed, "mdl order"))
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = list(members)
    rng.shuffle(keys)
    label = {g: str(y[members[g][0]]) if len({str(y[i]) for i in members[g]}) == 1 else "mixed" for g in keys}
    rank, seen = {}, defaultdict(int)
    for g in keys:
        rank[g] = seen[label[g]]
        seen[label[g]] += 1
    keys.sort(key=lambda g: rank[g])   # stable: the shuffled order within each round
    order = np.concatenate([members[g] for g in keys])
    ends = np.cumsum([len(members[g]) for g in keys])
    return order, ends


def online_codelength(X: np.ndarray, y: np.ndarray, fractions, C: float, seed: int,
                      groups: np.ndarray | None = None) -> dict:
    """MDL online code (Voita & Titov 2020): the first block is sent with the uniform code, each later block with
    a probe fit on all earlier blocks; codelength in bits, compression = uniform codelength / online codelength.
    `X (n, d)`; block ends at `fractions` of the items, moved to group boundaries (twins in one block)."""
    classes = np.unique(y)
    k, n = len(classes), len(y)
    order, ends = mdl_order(y, groups, seed)
    cuts = sorted({int(ends[min(np.searchsorted(ends, f * n), len(ends) - 1)]) for f in fractions})
    Xo, yo = X[order], y[order]
    bits = cuts[0] * np.log2(k)
    eps = 1e-6
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        fit_y = yo[:lo]
        if len(np.unique(fit_y)) < 2:
            bits += (hi - lo) * np.log2(k)
            continue
        model = fastprobe.probe_pipeline(C).fit(Xo[:lo], fit_y)
        p = np.full((hi - lo, k), 0.0)
        p[:, np.searchsorted(classes, model.classes_)] = model.predict_proba(Xo[lo:hi])
        p = (1 - eps) * p + eps / k
        bits += -np.log2(p[np.arange(hi - lo), np.searchsorted(classes, yo[lo:hi])]).sum()
    uniform = n * np.log2(k)
    return {"codelength_bits": float(bits), "uniform_bits": float(uniform), "compression": float(uniform / bits),
            "first_block": int(cuts[0])}


# ---------------------------------------------------------------------------------------------------- baselines


def tfidf_model(grid, folds: int, seed: int):
    """Word (1-2) and character (2-5, within words) TF-IDF n-grams and logistic regression, C tuned by an inner
    grouped CV inside each training fold (fit with `groups=`). The plain path: the stage runs `tfidf.TfidfSearch`,
    the same search on counts taken once per text (tests/test_tfidf.py compares them)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import FeatureUnion, make_pipeline

    union = FeatureUnion([("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                          ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))])
    pipe = make_pipeline(union, LogisticRegression(max_iter=2000))
    return GridSearchCV(pipe, {"logisticregression__C": list(grid)}, scoring="roc_auc_ovr",
                        cv=StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed))


def text_features(texts: list[str], embeddings: np.ndarray | None) -> dict[str, np.ndarray]:
    """The baseline feature sets of one task's items (in X's row order)."""
    from .screen import features as screen_features

    class _Item:  # screen.features reads `.text`
        def __init__(self, text):
            self.text = text
    feats = screen_features([_Item(t) for t in texts])
    feats["tfidf"] = feats["bow"]
    if embeddings is not None:
        feats["embedding"] = embeddings
    return feats


def baseline_probas(task: Task, feats: dict, settings: ProbeSettings, fit_feats: dict | None = None) -> dict:
    """`{name: (R, n, k)}` out-of-fold probabilities of each text baseline on the task's own repeated splits (for
    transfer: fit on Set A's texts, scored on Set B's, `fit_feats` holding Set A's features)."""
    from .screen import bow_model

    groups = task.groups if task.groups is not None else np.arange(len(task.y))
    inner = max(2, settings.folds - 2)
    counts = TfidfCounts([*feats["tfidf"], *(fit_feats["tfidf"] if fit_feats else [])]) if "tfidf" in feats else None

    def factory(name):
        if name == "bow":
            return bow_model
        if name == "tfidf":  # tfidf_model's search on n-gram counts taken once per text (tfidf.py)
            return lambda: TfidfSearch(counts, settings.tfidf_C, inner, stream(settings, "tfidf"))
        return lambda: fastprobe.probe_pipeline(settings.C)

    out = {}
    for name, X in feats.items():
        if task.folds is None:
            Xa = fit_feats[name]
            model = factory(name)()
            model.fit(Xa, task.y_fit, **({"groups": np.arange(len(Xa))} if name == "tfidf" else {}))
            cols = np.searchsorted(np.unique(task.y), model.classes_)
            p = np.zeros((len(task.y), task.k))
            p[:, cols] = model.predict_proba(X)
            out[name] = p[None]
        else:
            out[name] = np.stack([stats.cv_proba(X, task.y, folds, model_factory=factory(name),
                                                 groups=groups if name == "tfidf" else None)
                                  for folds in task.folds])
    return out


# ---------------------------------------------------------------------------------------------------- domains


def domain_held_out(task: Task, X: np.ndarray, domains: np.ndarray, settings: ProbeSettings) -> dict:
    """Train on every domain but one, score the held-out domain, for every domain. The claim is about a new domain,
    so the interval of the pooled AUROC resamples domains (a cluster bootstrap; items within a domain share its
    difficulty, and an item bootstrap over 8 domains is too narrow); beside it the AUROC within each held-out domain
    (`per_domain`, NaN-free classes only) and their spread. `X (n, d)`, `domains (n,)`."""
    folds = list(LeaveOneGroupOut().split(X, task.y, domains))
    proba = stats.cv_proba(X, task.y, folds, model_factory=lambda: fastprobe.probe_pipeline(settings.C))
    point, low, high = stats.bootstrap_auroc(task.y, proba, settings.n_boot, stream(settings, "bootstrap"),
                                             groups=domains)
    names, codes = np.unique(domains, return_inverse=True)
    inside = (codes[None, :] == np.arange(len(names))[:, None]).astype(np.float64)   # (n_domains, n) item weights
    per = stats.auroc(task.y, proba, counts=inside)                  # classes absent from a domain are skipped
    return {"auroc": point, "low": low, "high": high, "n_domains": len(names),
            "per_domain": {str(d): float(v) for d, v in zip(names, per)}, "domain_mean": float(np.nanmean(per)),
            "domain_sd": float(np.nanstd(per, ddof=1)) if len(names) > 1 else None,
            "domain_min": float(np.nanmin(per)), "domain_max": float(np.nanmax(per))}


def script_folds(y: np.ndarray, scripts: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds grouped by situation script, `min(folds, n scripts)` of them (stats.splits): every item of
    a script is in one test fold, so the probe is scored on situations it never saw. `y, scripts (n,)`."""
    names, codes = np.unique(scripts, return_inverse=True)
    return stats.splits(y, min(folds, len(names)), seed, codes)[0]


def script_held_out(task: Task, X: np.ndarray, scripts: np.ndarray, settings: ProbeSettings, seed: int) -> dict:
    """Set B with situation scripts held out (`script_folds`), AUROC with a cluster-bootstrap interval over scripts
    (the claim is about new situations). `X (n, d)`, `scripts (n,)`."""
    folds = script_folds(task.y, scripts, settings.folds, seed)
    proba = stats.cv_proba(X, task.y, folds, model_factory=lambda: fastprobe.probe_pipeline(settings.C))
    point, low, high = stats.bootstrap_auroc(task.y, proba, settings.n_boot, stream(settings, "bootstrap"),
                                             groups=np.unique(scripts, return_inverse=True)[1])
    return {"auroc": point, "low": low, "high": high, "n_scripts": len(np.unique(scripts)), "n_folds": len(folds)}


def _add_scripts(metrics, data, tasks, items, settings) -> None:
    """The situation-held-out Set B probe at the ordinary peak layer (site h), on its own split stream
    (`stream(settings, "scripts")`); skipped (logged) when the Set B items carry no `script`."""
    scripts = [items.get(i, {}).get("script") for i in data["B"].ids]
    if any(s is None for s in scripts):
        log.warning("Set B items carry no `script`: situation-held-out evaluation skipped")
        return
    task = tasks["set_b"]
    peak = metrics["set_b"]["h"]["peak_layer"]
    X = _stack(data, task, "h")[:, peak]
    found = script_held_out(task, X, np.array(scripts, dtype=str), settings,
                            stream(settings, "scripts"))
    metrics["script_held_out"] = {"set_b": {"h": {"layer": peak, "interval": "scripts", **found,
                                                  "cv_auroc": metrics["set_b"]["h"]["auroc"]}}}


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class ProbeResult:
    """What the stage writes: metrics (flat-keyed per task and site), the long CSV rows, per-task layer curves
    (`layer`, AUROC per site, the null's mean and 95th percentile per site, `chance`), the domain-held-out curve,
    confusion rows of the peak probes (`id, actual, predicted`), and timings."""
    metrics: dict
    rows: list[dict]
    curves: dict[str, list[dict]]
    confusions: dict[str, list[dict]]
    seconds: dict[str, float]
    domains: list[dict] = dataclasses.field(default_factory=list)


def _peak(scores: list[Score]) -> int:
    return int(np.argmax([s.auroc for s in scores]))  # the first layer on ties


def _saturation(scores: list[Score], threshold: float) -> dict:
    above = [l for l, s in enumerate(scores) if s.auroc >= threshold]
    layer = above[0] if above else None
    return {"saturation_layer": layer, "saturation_depth": None if layer is None else (layer + 1) / len(scores)}


def _max_p(nulls: np.ndarray) -> float:
    """p of the observed maximum (column 0) against the maximum over the same members (layers, sites) of each
    permutation: `nulls (members, P + 1)`. Tests the peak as chosen."""
    if nulls.shape[1] < 2:
        return float("nan")
    return stats.permutation_p(float(np.max(nulls[:, 0])), nulls[:, 1:].max(axis=0))


def _variant_metrics(curves: dict, tasks: dict[str, Task], settings: ProbeSettings) -> dict:
    """Per task: the peak of every site (transfer: at the layer Set A's CV peaks), the null there, the
    max-over-layers p per site and over layers x sites per task, BH over layers x sites, ridge/logistic agreement.

    The reported peak is the logistic mean over repeats; its `p_max_layers` is the p of the ridge maximum over
    layers (first repeat, `ridge_peak_layer`/`ridge_peak_auroc`, reported beside it) against the maximum of the same
    statistic under each permutation: a test that no layer carries signal, which holds its level whichever layer
    is reported (the per-layer p at the chosen peak would not)."""
    out = {}
    for name in HEADLINE:
        by_site = curves[name]
        n_layers = len(by_site["h"])
        m = {"chance_auroc": 0.5, "chance_accuracy": 1 / tasks[name].k}
        nulls = {site: np.stack([s.null for s in by_site[site]]) for site in SITES}
        q = _bh(by_site)
        for site in SITES:
            scores = by_site[site]
            layer = _peak(curves["set_a"][site]) if name == "transfer" else _peak(scores)
            s = scores[layer]
            m[site] = {"peak_layer": layer, "peak_depth": (layer + 1) / n_layers, "auroc": s.auroc, "low": s.low,
                       "high": s.high, "accuracy": s.accuracy, "null_mean": s.null_mean, "null_p95": s.null_p95,
                       "ridge_auroc": s.ridge, "p_max_layers": _max_p(nulls[site]),
                       "ridge_peak_layer": int(np.argmax(nulls[site][:, 0])),
                       "ridge_peak_auroc": float(np.max(nulls[site][:, 0])),
                       "n_layers_bh": int(np.sum(q[site] < 0.05)) if q is not None else None}
            if name == "b_vs_n":
                m[site].update(_saturation(scores, settings.saturation))
        m["p_max_sites"] = _max_p(np.concatenate(list(nulls.values())))
        lr = np.array([[s.auroc for s in by_site[site]] for site in SITES]).ravel()
        ridge = np.array([[s.ridge for s in by_site[site]] for site in SITES]).ravel()
        m["ridge_agreement"] = {"mean_abs_diff": float(np.mean(np.abs(lr - ridge))),
                                "corr": float(np.corrcoef(lr, ridge)[0, 1]) if lr.std() > 0 and ridge.std() > 0
                                else float("nan")}
        out[name] = m
    return out


def _bh(by_site: dict) -> dict | None:
    """BH q-values of the per-layer permutation p over every layer x site of one task, or None without a null."""
    p = np.array([[s.p_layer for s in by_site[site]] for site in SITES])
    if not np.isfinite(p).all():
        return None
    q = stats.benjamini_hochberg(p)
    return {site: q[i] for i, site in enumerate(SITES)}


def _rows(prefix: str, curves: dict, tasks: dict[str, Task]) -> list[dict]:
    rows = []
    for name, by_site in curves.items():
        q = _bh(by_site)
        for site in SITES:
            scores = by_site[site]
            for layer, s in enumerate(scores):
                rows.append({"task": prefix + name, "site": site, "layer": layer, "depth": (layer + 1) / len(scores),
                             "auroc": s.auroc, "low": s.low, "high": s.high, "accuracy": s.accuracy,
                             "ridge_auroc": s.ridge, "null_mean": s.null_mean, "null_p95": s.null_p95,
                             "p_layer": s.p_layer, "q_bh": None if q is None else float(q[site][layer]),
                             "chance_auroc": 0.5, "chance_accuracy": 1 / tasks[name].k})
    return rows


def curve_columns() -> list[str]:
    return ["layer", *SITES, *[f"{s}_null_mean" for s in SITES], *[f"{s}_null_p95" for s in SITES], "chance"]


def _curve_tables(prefix: str, curves: dict) -> dict[str, list[dict]]:
    return {prefix + name: [{"layer": l, **{site: by_site[site][l].auroc for site in SITES},
                             **{f"{site}_null_mean": by_site[site][l].null_mean for site in SITES},
                             **{f"{site}_null_p95": by_site[site][l].null_p95 for site in SITES}, "chance": 0.5}
                            for l in range(len(by_site["h"]))]
            for name, by_site in curves.items()}


def _set_c(data: dict[str, SetData], tasks: dict[str, Task], curves: dict, settings: ProbeSettings) -> dict:
    """At each site's peak B-vs-N layer, a probe fit on all of B+N labels Set C: the fraction called emotional,
    beside the out-of-fold (grouped, first repeat) fraction of Set N called emotional at the same layer."""
    task, n_b = tasks["b_vs_n"], len(data["B"].ids)
    out = {}
    for site in SITES:
        layer = _peak(curves["b_vs_n"][site])
        X = np.concatenate([data["B"].sites[site][:, layer], data["N"].sites[site][:, layer]]).astype(np.float64)
        model = fastprobe.probe_pipeline(settings.C).fit(X, task.y)
        called = model.predict(data["C"].sites[site][:, layer].astype(np.float64)) == 1
        fraction, low, high = stats.bootstrap_mean(called.astype(float), settings.n_boot,
                                                   stream(settings, "bootstrap"))
        oof = curves["b_vs_n"][site][layer].predicted
        out[site] = {"layer": layer, "fraction_emotional": fraction, "low": low, "high": high,
                     "n_fraction_emotional": float(np.mean(oof[n_b:] == 1)),
                     "b_fraction_emotional": float(np.mean(oof[:n_b] == 1))}
    return out


def run_probes(folder, settings: ProbeSettings, control_folder=None, items: dict[str, dict] | None = None,
               embeddings: dict[str, np.ndarray] | None = None) -> ProbeResult:
    """See `_run_probes`; BLAS is held to one thread (the fits are small: a multi-threaded BLAS on 2 shared cores
    made each logistic fit 10x slower)."""
    with threadpool_limits(limits=1):
        return _run_probes(folder, settings, control_folder, items, embeddings)


def _run_probes(folder, settings: ProbeSettings, control_folder=None, items: dict[str, dict] | None = None,
                embeddings: dict[str, np.ndarray] | None = None) -> ProbeResult:
    """All probes of one model. `folder` is `data/activations/<model>` (its `settings.prompt` subfolder must hold
    A, B, N, C); `control_folder` the random-init model's folder. The random-init and zero-shot variants run when
    their files exist. `items` (id -> stimulus JSON object, every set) supplies pair links, texts for the
    baselines and optional `domain`s; `embeddings` (id -> `(d,)` mean input embedding) the bag-of-embeddings
    baseline."""
    wall = time.perf_counter()
    folder = Path(folder)
    data = load_prompt(folder / settings.prompt)
    pairs = {i: o.get("pair") for i, o in items.items()} if items else None
    tasks = make_tasks(data, settings, pairs)
    variants = {"": data}
    for prefix, where in (("random_init.", control_folder and Path(control_folder) / settings.prompt),
                          ("zero_shot.", settings.zero_shot_prompt and folder / settings.zero_shot_prompt)):
        found = optional_prompt(where, ("A", "B", "N"), data) if where else None
        if found:
            variants[prefix] = found
    seconds = defaultdict(float)
    curves = _curves(variants, tasks, settings, seconds, desc=f"probes {folder.name}")
    main = curves[""]
    metrics = {"n_layers": data["A"].shape[1], "d_model": data["A"].shape[2], "n_boot": settings.n_boot,
               "n_perm": settings.n_perm, "repeats": settings.repeats,
               **_variant_metrics(main, tasks, settings)}
    metrics["folds"] = {name: stats.folds_digest(tasks[name].folds[0], np.concatenate([data[s].ids for s in
                                                                                      tasks[name].inputs]))
                        for name in CV_TASKS}   # repeat 0: the `stimuli` stage's text baselines use the same folds
    nested = _add_nested(metrics, data, tasks, settings, seconds)
    metrics["set_c"] = _set_c(data, tasks, main, settings)
    start = time.perf_counter()
    metrics["mdl"] = _mdl(data, tasks, main, settings)
    if "random_init." in variants:
        metrics["random_init"] = {"model": Path(control_folder).name,
                                  **_variant_metrics(curves["random_init."], tasks, settings),
                                  "mdl": _mdl(variants["random_init."], tasks, curves["random_init."], settings)}
    seconds["mdl"] += time.perf_counter() - start
    if "zero_shot." in variants:
        metrics["zero_shot"] = _variant_metrics(curves["zero_shot."], tasks, settings)
    if items:
        start = time.perf_counter()
        _add_baselines(metrics, data, tasks, main, nested, items, embeddings, settings)
        seconds["baselines"] += time.perf_counter() - start
    domain_rows = []
    if items:
        start = time.perf_counter()
        domain_rows = _add_domains(metrics, data, tasks, main, items, settings)
        _add_scripts(metrics, data, tasks, items, settings)
        seconds["domains"] += time.perf_counter() - start

    rows, tables = [], {}
    for prefix in variants:
        rows += _rows(prefix, curves[prefix], tasks)
        tables.update(_curve_tables(prefix, curves[prefix]))
    seconds["wall"] = time.perf_counter() - wall
    _log_headline(folder.name, metrics)
    log.info("%s: %.0f s wall; worker seconds %s", folder.name, seconds["wall"],
             ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if k != "wall"))
    return ProbeResult(metrics, rows, tables, _confusions(data, tasks, main), dict(seconds), domain_rows)


def control_task(task: Task) -> Task:
    """The task as the random-init and zero-shot variants run it: the first repeat's splits and no permutation null
    (they are curves to compare with, not tests), which keeps the stage within its time budget."""
    return dataclasses.replace(task, folds=None if task.folds is None else task.folds[:1], orders=task.orders[:1])


def _curves(variants: dict, tasks: dict[str, Task], settings: ProbeSettings, seconds, desc: str) -> dict:
    """`{variant: {task: {site: [Score per layer]}}}`, one joblib job per (variant, site, layer)."""
    keys, jobs = [], []
    for prefix, vdata in variants.items():
        chosen = [tasks[n] if not prefix else control_task(tasks[n]) for n in HEADLINE]
        for site in SITES:
            for layer in range(vdata["A"].shape[1]):
                x = {s: np.ascontiguousarray(vdata[s].sites[site][:, layer]) for s in ("A", "B", "N")}
                keys.append((prefix, site))
                jobs.append(delayed(_layer_job)(x, chosen, settings))
    curves = {prefix: defaultdict(lambda: defaultdict(list)) for prefix in variants}
    for (prefix, site), (scores, secs) in zip(keys, _run_jobs(jobs, settings.n_jobs, desc)):
        for name, score in scores.items():
            curves[prefix][name][site].append(score)  # results arrive in submission order, i.e. layer order
        for k, v in secs.items():
            seconds[k] += v
    return curves


def _stack(data, task: Task, site: str) -> np.ndarray:
    """`(n, n_layers, d)` float64 rows of a CV task at one site."""
    return np.concatenate([data[s].sites[site] for s in task.inputs]).astype(np.float64)


def evaluation_repeats(settings: ProbeSettings) -> list[int]:
    """The CV repeats that text baselines, the nested estimate and their margins are reported on: 1..R-1. Repeat 0
    is the split the `stimuli` stage scores its text baselines on (the same `seeds.splits_seed`), the one the
    stimulus sets were checked (and edited) against with the grouped bag of
    words, so a baseline scored there is tuned on its own evaluation split; with `repeats: 1` it is all there is
    (logged)."""
    if settings.repeats < 2:
        log.warning("probes.repeats = 1: text baselines and margins use repeat 0, the seed the sets were checked on")
        return [0]
    return list(range(1, settings.repeats))


def _add_nested(metrics, data, tasks, settings, seconds) -> dict:
    """The nested estimate (layer chosen inside training folds) beside each CV task's peak, per site, on the
    `evaluation_repeats`, with its own interval (stimulus bootstrap and refit variance). Returns
    `{(task, site): (R', n, k)}` out-of-fold probabilities for the margins over the baselines."""
    keys, jobs = [], []
    for name in CV_TASKS:
        for site in SITES:
            X = _stack(data, tasks[name], site)
            for r in evaluation_repeats(settings):
                keys.append((name, site))
                jobs.append(delayed(nested_job)(tasks[name], X, settings, r))
    found = defaultdict(list)
    for (name, site), (proba, chosen, secs) in zip(keys, _run_jobs(jobs, settings.n_jobs, "nested")):
        found[name, site].append((proba, chosen))
        seconds["nested"] += secs
    out = {}
    for (name, site), runs in found.items():
        task = tasks[name]
        out[name, site] = np.stack([p for p, _ in runs])
        point, low, high = stats.repeated_auroc(task.y, out[name, site], settings.n_boot,
                                                stream(settings, "bootstrap"), task.groups)
        metrics[name][site].update(nested_auroc=point, nested_low=low, nested_high=high,
                                   nested_layers=" ".join(map(str, runs[0][1])))
    return out


def _mdl(data, tasks, curves, settings) -> dict:
    """MDL online code of each CV task at site h, at that variant's own peak layer, over `mdl_orders` random
    transmission orders: the codelength depends on the order, so the mean is reported with its range."""
    out = {}
    for name in MDL_TASKS:
        task = tasks[name]
        layer = _peak(curves[name]["h"])
        X = _stack(data, task, "h")[:, layer]
        runs = [online_codelength(X, task.y, settings.mdl_fractions, settings.C,
                                  stream(settings, "mdl", r), task.groups)
                for r in range(settings.mdl_orders)]
        bits = np.array([r["codelength_bits"] for r in runs])
        compression = np.array([r["compression"] for r in runs])
        out[name] = {"site": "h", "layer": layer, "n_orders": len(runs), "uniform_bits": runs[0]["uniform_bits"],
                     "first_block": runs[0]["first_block"], "codelength_bits": float(bits.mean()),
                     "codelength_bits_min": float(bits.min()), "codelength_bits_max": float(bits.max()),
                     "compression": float(compression.mean()), "compression_min": float(compression.min()),
                     "compression_max": float(compression.max())}
    return out


def _texts(data, task: Task, items: dict, sets) -> list[str]:
    try:
        return [items[i]["text"] for s in sets for i in data[s].ids]
    except KeyError as err:
        raise DataError(f"stimulus {err} of the activations not found in the stimuli JSONL") from None


def _embedded(data, embeddings: dict | None, sets) -> np.ndarray | None:
    """`(n, d)` input-embedding features of the rows of `sets`, in X's order; None without embeddings."""
    if embeddings is None:
        return None
    try:
        return np.stack([embeddings[i] for s in sets for i in data[s].ids]).astype(np.float64)
    except KeyError as err:
        raise DataError(f"stimulus {err} of the activations has no input embedding") from None


def _add_baselines(metrics, data, tasks, curves, nested, items, embeddings, settings) -> None:
    """Text-only baselines of every headline task on its own splits, on the `evaluation_repeats` (not the seed the
    sets were checked on), and per site the margins over them with paired intervals (same stimulus resamples and
    repeats): `margin` = the nested probe (CV tasks; transfer: the layer chosen on Set A) minus the best baseline
    (highest AUROC; conservative when baselines tie), `margins[method]` the same against each baseline, and
    `peak_margin_optimistic` the peak layer's margin (biased upward: the peak is chosen on the scored items)."""
    seed = stream(settings, "bootstrap")
    repeats = evaluation_repeats(settings)
    keys, jobs = [], []
    for name in HEADLINE:   # one job per (task, method): the baselines' fits are independent
        task = tasks[name]
        if task.folds is not None:
            task = dataclasses.replace(task, folds=[task.folds[r] for r in repeats])
        scored = task.inputs if task.folds is not None else task.inputs[1:]
        feats = text_features(_texts(data, task, items, scored), _embedded(data, embeddings, scored))
        fit = None
        if task.folds is None:
            fit = text_features(_texts(data, task, items, task.inputs[:1]),
                                _embedded(data, embeddings, task.inputs[:1]))
        for method, X in feats.items():
            keys.append((name, method))
            jobs.append(delayed(baseline_probas)(task, {method: X}, settings,
                                                 None if fit is None else {method: fit[method]}))
    by_task = defaultdict(dict)
    for (name, method), found in zip(keys, _run_jobs(jobs, settings.n_jobs, "baselines")):
        by_task[name][method] = found[method]
    for name in HEADLINE:
        task, probas = tasks[name], by_task[name]
        found = {}
        for method, p in probas.items():
            point, low, high = stats.repeated_auroc(task.y, p, settings.n_boot, seed, task.groups)
            found[method] = {"auroc": point, "low": low, "high": high}
        best = max(found, key=lambda k: found[k]["auroc"])
        metrics[name]["baselines"] = found
        metrics[name]["best_baseline"] = best
        metrics[name]["best_baseline_auroc"] = found[best]["auroc"]
        metrics[name]["baseline_repeats"] = "none (fit on Set A)" if task.folds is None else \
            " ".join(map(str, repeats))
        for site in SITES:
            m = metrics[name][site]
            peak = curves[name][site][m["peak_layer"]].probas
            probe = peak if task.folds is None else nested[name, site]
            margins = {}
            for method, base in probas.items():
                if len(base) != len(probe):  # transfer: one fit each
                    base = np.repeat(base[:1], len(probe), axis=0)
                margins[method] = dict(zip(("margin", "low", "high"), stats.repeated_auroc(
                    task.y, probe, settings.n_boot, seed, task.groups, minus=base)))
            m["margins"] = margins
            m.update(margin=margins[best]["margin"], margin_low=margins[best]["low"],
                     margin_high=margins[best]["high"])
            if task.folds is not None:
                d, lo, hi = stats.repeated_auroc(task.y, peak[repeats], settings.n_boot, seed, task.groups,
                                                 minus=probas[best])
                m.update(peak_margin_optimistic=d, peak_margin_optimistic_low=lo, peak_margin_optimistic_high=hi)


def _add_domains(metrics, data, tasks, curves, items, settings) -> list[dict]:
    """Set B at every layer (site h) with each domain held out in turn, beside ordinary CV (interval over domains,
    per-domain AUROC and spread); skipped (logged) when the stimuli carry no `domain`."""
    task = tasks["set_b"]
    domains = [items.get(i, {}).get("domain") for i in data["B"].ids]
    if any(d is None for d in domains):
        log.warning("Set B items carry no `domain`: domain-held-out evaluation skipped")
        return []
    domains = np.array(domains, dtype=str)
    X = _stack(data, task, "h")
    jobs = [delayed(domain_held_out)(task, X[:, layer], domains, settings) for layer in range(X.shape[1])]
    found = _run_jobs(jobs, settings.n_jobs, "domains")
    rows = [{"layer": layer, **{k: v for k, v in f.items() if k != "per_domain"},
             "cv_auroc": curves["set_b"]["h"][layer].auroc} for layer, f in enumerate(found)]
    peak = metrics["set_b"]["h"]["peak_layer"]
    metrics["domain_held_out"] = {"set_b": {"h": {"layer": peak, "interval": "domains", **found[peak],
                                                  "cv_auroc": metrics["set_b"]["h"]["auroc"]}}}
    return rows


def _confusions(data, tasks, main) -> dict[str, list[dict]]:
    """Out-of-fold predictions (first repeat) of each headline probe at its peak layer (transfer: every Set B item,
    at the layer chosen on Set A)."""
    out = {}
    for name in HEADLINE:
        task = tasks[name]
        ids = np.concatenate([data[s].ids for s in (task.inputs if task.folds is not None else task.inputs[1:])])
        for site in SITES:
            layer = _peak(main["set_a"][site]) if name == "transfer" else _peak(main[name][site])
            predicted = main[name][site][layer].predicted
            actual, predicted = (BINARY_NAMES[task.y], BINARY_NAMES[predicted]) if name == "b_vs_n" else (task.y,
                                                                                                         predicted)
            out[f"{name}_{site}"] = [{"id": i, "actual": a, "predicted": p} for i, a, p in zip(ids, actual, predicted)]
    return out


def _log_headline(model: str, metrics: dict) -> None:
    for name in HEADLINE:
        for site in SITES:
            m = metrics[name][site]
            log.info("%s %s %s: layer %d, AUROC %.3f [%.3f, %.3f], null p95 %.3f, p(max over layers) %.3g%s", model,
                     name, site, m["peak_layer"], m["auroc"], m["low"], m["high"], m["null_p95"], m["p_max_layers"],
                     f", nested {m['nested_auroc']:.3f}" if "nested_auroc" in m else "")
    for site in SITES:
        log.info("%s b_vs_n %s: saturation layer %s", model, site, metrics["b_vs_n"][site]["saturation_layer"])


def write_outputs(result: ProbeResult, metrics_path, plots_dir) -> None:
    """metrics JSON, `probes.csv` (one row per task, site, layer), `probes/layers/<task>.csv` (AUROC and null band
    per site, for `dvc plots`), `probes/confusion/<task>_<site>.csv`, `probes/domain_held_out.csv` (when domains
    exist); stale CSVs of an earlier run are removed."""
    plots_dir = Path(plots_dir)
    write_json(metrics_path, result.metrics)
    write_csv(plots_dir / "probes.csv", result.rows, CSV_COLUMNS)
    for sub, tables, columns in (("layers", result.curves, curve_columns()),
                                 ("confusion", result.confusions, ["id", "actual", "predicted"])):
        folder = plots_dir / "probes" / sub
        for name, rows in tables.items():
            write_csv(folder / f"{name}.csv", rows, columns)
        for stale in set(folder.glob("*.csv")) - {folder / f"{name}.csv" for name in tables}:
            stale.unlink()
    domain_csv = plots_dir / "probes" / "domain_held_out.csv"
    if result.domains:
        write_csv(domain_csv, result.domains, DOMAIN_COLUMNS)
    else:  # a declared output either way
        write_text(domain_csv, ",".join(DOMAIN_COLUMNS) + "\n")
