"""Steering with emotion directions (issue 25 items 1-3): is the direction that separates the emotions one the model
uses for its answer?

Directions, per layer at site h: d_e = mean of emotion e's items minus the mean of the other emotions' item means,
on the fitting set's extraction-position activations (`data/activations/<model>/<prompt>/<fit_set>.npz`), unit
norm; optionally denoised by projecting out the top k principal components of a neutral set's activations (then
renormalised). The fitting set is never the steered one, so no folds are needed.

Steering adds alpha * s_l * d_e to h[l] at the extraction position (the `add` op on the fast path), s_l the median
||h[l]|| at that position over the fitting set; the control adds alpha * s_l * u, u a random unit direction (the
same norm), `n_random` draws per item and layer. Every run reads the eight calibrated scores, so one grid gives
the dose-response, the 8 x 8 specificity matrix and the controls. `steering_summary` computes the statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import stats
from .causal import Clean, scores, unit_directions
from .config import ConfigError
from .extract import tokenize_prompt
from .io import DataError
from .seeds import derive
from .sites import Intervention, Site


DIRECTIONS = ("mean_difference", "probe")   # d_e: difference of means, or the 8-class probe's weights
WHERE = ("last", "text")   # add at the extraction position, or at every token of the stimulus text (not the cue)


@dataclass(frozen=True)
class SteeringSettings:
    """params.yaml `steering:`. set: the steered (neutral) set, its first n_items items; grain_set: items steered
    against their own emotion, n_grain of them (emotions in turn); fit_set: the directions' set (never a steered
    one); denoise_set / denoise_k: project the top k principal components of that set's activations out of every
    direction (0: off); layers / layer_step: as for patching; doses: alpha values (multiples of the layer's median
    norm); n_random: same-norm random directions per item and layer; where: `last` adds at the extraction position,
    `text` at every token of the stimulus text instead (the answer then hears it only through attention);
    directions: `mean_difference` or `probe` (the 8-class probe's weights, `probe_directions`, with probe_C); ablation: the
    `steering.ablation:` sub-section (`ablation.AblationSettings`)."""
    set: str = "N"
    n_items: int = 24
    grain_set: str = "B"
    n_grain: int = 24
    fit_set: str = "A"
    denoise_set: str = "N"
    denoise_k: int = 0
    layers: tuple[int, ...] | None = None
    layer_step: int = 4
    doses: tuple[float, ...] = (0.25, 0.5, 1.0)
    n_random: int = 2
    where: str = "last"
    directions: str = "mean_difference"
    probe_C: float = 1.0
    ablation: dict[str, object] | None = None


    def __post_init__(self):
        if not self.doses:
            raise ConfigError("params.yaml: steering.doses: empty (give at least one dose, e.g. [1.0])")
        for i, dose in enumerate(self.doses):
            if not dose > 0:
                raise ConfigError(f"params.yaml: steering.doses[{i}]: {dose!r} must be positive (0 is the clean run)")
        for key in ("n_items", "n_grain"):
            if getattr(self, key) < 2:
                raise ConfigError(f"params.yaml: steering.{key}: must be at least 2")
        if self.where not in WHERE:
            raise ConfigError(f"params.yaml: steering.where: {self.where!r}, expected one of {', '.join(WHERE)}")
        if self.directions not in DIRECTIONS:
            raise ConfigError(f"params.yaml: steering.directions: {self.directions!r}, expected one of "
                              f"{', '.join(DIRECTIONS)}")
        if not self.probe_C > 0:
            raise ConfigError(f"params.yaml: steering.probe_C: {self.probe_C!r} must be positive")
        if self.n_random < 1:
            raise ConfigError("params.yaml: steering.n_random: must be at least 1")
        if self.denoise_k < 0:
            raise ConfigError("params.yaml: steering.denoise_k: must be 0 (off) or positive")
        if self.layer_step < 1:
            raise ConfigError("params.yaml: steering.layer_step: must be at least 1")
        for key in ("set", "grain_set"):
            if self.fit_set == getattr(self, key):
                raise ConfigError(f"params.yaml: steering.fit_set: {self.fit_set!r} is also steering.{key}; fit the "
                                  "directions on another set (no folds are made)")


# ------------------------------------------------------------------------------------------------ directions


def read_activations(path: Path, n_layers: int, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """(h `(n, n_layers, d_model)` float32, emotions `(n,)`) of one extraction file, checked against the model."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (run the extract stage: `dvc repro extract`)")
    with np.load(path, allow_pickle=False) as data:
        if "h" not in data.files or "emotions" not in data.files:
            raise DataError(f"{path}: missing arrays h / emotions")
        h, emotions = data["h"].astype(np.float32), data["emotions"].astype(str)
    if h.ndim != 3 or h.shape[1:] != (n_layers, d_model) or len(emotions) != len(h):
        raise DataError(f"{path}: h {h.shape}, expected (n, {n_layers}, {d_model}) for this model, with n emotions")
    if not np.isfinite(h).all():
        raise DataError(f"{path}: h has non-finite values")
    return h, emotions


def difference_of_means(h: np.ndarray, labels: np.ndarray, emotions) -> np.ndarray:
    """`(n_layers, n_emotions, d)` raw directions: mean of e's items minus the mean of the other emotions' means,
    from `h (n, n_layers, d)`; an emotion without items is a DataError."""
    means = []
    for e in emotions:
        rows = labels == e
        if not rows.any():
            raise DataError(f"the fitting set has no {e} items: the {e} direction cannot be fitted")
        means.append(h[rows].mean(0))
    means = np.stack(means, axis=1).astype(np.float64)                  # (n_layers, k, d)
    k = means.shape[1]
    return means - (means.sum(1, keepdims=True) - means) / (k - 1)


def top_components(h: np.ndarray, k: int) -> np.ndarray:
    """`(n_layers, k, d)` orthonormal top-k principal axes of `h (n, n_layers, d)` per layer (centred)."""
    out = []
    for layer in range(h.shape[1]):
        x = h[:, layer].astype(np.float64)
        _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        out.append(vt[:k])
    return np.stack(out)


def project_out(directions: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """`directions (n_layers, m, d)` minus their projection on the orthonormal rows of `basis (n_layers, k, d)`."""
    coef = np.einsum("lmd,lkd->lmk", directions, basis)
    return directions - np.einsum("lmk,lkd->lmd", coef, basis)


def unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if (norm < 1e-12).any():
        raise DataError("an emotion direction has zero norm (identical class means, or denoise_k removed it)")
    return x / norm


@dataclass
class Directions:
    """directions `(n_layers, n_emotions, d)` unit d_e per model layer; scale `(n_layers,)` the median ||h[l]|| at
    the extraction position over the fitting set; removed `(n_layers, n_emotions)` the share of each raw
    direction's norm that denoising removed (0 without)."""
    emotions: tuple[str, ...]
    directions: np.ndarray
    scale: np.ndarray
    removed: np.ndarray


def probe_directions(h: np.ndarray, labels: np.ndarray, emotions, C: float = 1.0) -> np.ndarray:
    """`(n_layers, n_emotions, d)` raw directions from the project's 8-class probe (`stats.probe_pipeline`: z-scoring,
    row space, L2 logistic regression) fitted per layer on `h (n, n_layers, d)`: the gradient of emotion e's logit
    with respect to h (the weights mapped back through the row space and divided by the feature scale), minus the
    mean over emotions (the softmax ignores a shift shared by every logit), so d_e points from the others to e."""
    labels = np.asarray(labels)
    missing = [e for e in emotions if not (labels == e).any()]
    if missing:
        raise DataError(f"the fitting set has no {missing[0]} items: the {missing[0]} direction cannot be fitted")
    out = []
    for layer in range(h.shape[1]):
        pipe = stats.probe_pipeline(C).fit(h[:, layer].astype(np.float64), labels)
        scaler, rows, model = pipe.steps[0][1], pipe.steps[1][1], pipe.steps[-1][1]
        order = [list(model.classes_).index(e) for e in emotions]
        grad = (rows.components_ @ model.coef_[order].T).T / scaler.scale_           # (k, d)
        out.append(grad - grad.mean(0, keepdims=True))
    return np.stack(out)


def fit_directions(h: np.ndarray, labels: np.ndarray, emotions, neutral: np.ndarray | None = None,
                   k: int = 0, method: str = "mean_difference", C: float = 1.0) -> Directions:
    """Unit directions of `h (n, n_layers, d)` by `method` (difference of means, or the probe's weights),
    denoised with the top `k` components of `neutral (m, n_layers, d)` when k > 0 (k must stay below d)."""
    raw = (difference_of_means(h, np.asarray(labels), emotions) if method == "mean_difference"
           else probe_directions(h, labels, emotions, C))
    kept = raw
    if k:
        if neutral is None or k >= min(len(neutral), raw.shape[-1]):
            raise ConfigError(f"params.yaml: steering.denoise_k: {k} components need more than {k} neutral items "
                              "and dimensions")
        kept = project_out(raw, top_components(neutral, k))
    removed = 1 - np.linalg.norm(kept, axis=-1) / np.linalg.norm(raw, axis=-1)
    scale = np.median(np.linalg.norm(h, axis=-1), axis=0)
    return Directions(tuple(emotions), unit(kept).astype(np.float32), scale.astype(np.float32), removed)


# ------------------------------------------------------------------------------------------------ steering


def steer_groups(layers, doses, vectors: torch.Tensor, scale, positions=(-1,)) -> list[list[Intervention]]:
    """One group per (layer, dose, vector), in that order: add dose * scale[layer] * vectors[j, v] to h[layer] at
    each of `positions` (prompt token indices; -1 the extraction position); `vectors (n_layers_steered, n_vectors,
    d)` unit rows, one block per steered layer."""
    return [[Intervention(Site("h", layer), "add", float(dose * scale[layer]) * v, position=p) for p in positions]
            for j, layer in enumerate(layers) for dose in doses for v in vectors[j]]


@dataclass
class SteeringResult:
    """Calibrated scores. clean `(n, k)`; steer `(n, n_layers, n_doses, k, k)` [..., e, f]: score of f when
    steering with d_e; random `(n, n_layers, n_doses, n_random, k)`: scores under the same-norm random directions
    (the same draws at every dose)."""
    layers: list[int]
    doses: list[float]
    clean: np.ndarray
    steer: np.ndarray
    random: np.ndarray


def steer(engine, readout, clean: Clean, directions: Directions, layers, doses, n_random: int,
          seed: int, positions=None) -> SteeringResult:
    """Steer every item of `clean` with each d_e and `n_random` random directions at every layer and dose:
    len(layers) * len(doses) * (k + n_random) groups per item; `positions[i]`: the prompt positions of item i
    that receive the addition (None: the extraction position; earlier ones need clean runs with positions=True)."""
    k, d = len(readout.emotions), directions.directions.shape[-1]
    rng = np.random.default_rng(derive(seed, "random directions"))
    d_e = torch.from_numpy(directions.directions[list(layers)])        # (n_layers_steered, k, d)
    shape = (len(layers), len(doses), k + n_random, k)
    steer_out, random_out = [], []
    for i, prep in enumerate(tqdm(clean.prepared, desc="steering", leave=False)):
        vectors = torch.cat([d_e, unit_directions(rng, (len(layers), n_random), d)], dim=1)
        where = (-1,) if positions is None else positions[i]
        lp = scores(engine, readout, clean, prep, steer_groups(layers, doses, vectors, directions.scale, where))
        lp = lp.reshape(shape).numpy()
        steer_out.append(lp[:, :, :k])
        random_out.append(lp[:, :, k:])
    return SteeringResult(list(layers), list(doses), clean.log_probs.numpy(), np.stack(steer_out),
                          np.stack(random_out))


@dataclass
class GrainResult:
    """Steering Set B items against the grain at one layer and dose. own `(n,)` emotion index of each item; clean
    `(n, k)`; steer `(n, k, k)` [i, e, f]: score of f with d_e added (rows e == own included, not used); random
    `(n, n_random, k)`."""
    layer: int
    dose: float
    own: np.ndarray
    clean: np.ndarray
    steer: np.ndarray
    random: np.ndarray


def against_grain(engine, readout, clean: Clean, directions: Directions, layer: int, dose: float, n_random: int,
                  seed: int, positions=None) -> GrainResult:
    """Add every d_e (and `n_random` same-norm random directions) at one layer and dose to each item of `clean`
    (at `positions` as in `steer`)."""
    res = steer(engine, readout, clean, directions, [layer], [dose], n_random, seed, positions)
    own = np.array([list(readout.emotions).index(e) for e in clean.labels])
    return GrainResult(layer, dose, own, res.clean, res.steer[:, 0, 0], res.random[:, 0, 0])


def balanced(stimuli, emotions, n: int) -> list:
    """Up to `n` items, emotions in turn (the first of each, then the second, ...), for a balanced subset."""
    queues = {e: [s for s in stimuli if s.emotion == e] for e in emotions}
    out = []
    while len(out) < n and any(queues.values()):
        for e in emotions:
            if queues[e] and len(out) < n:
                out.append(queues[e].pop(0))
    return out


def text_positions(tokenizer, template: str, stimuli) -> list[list[int]]:
    """Per stimulus, the prompt positions of its text's tokens (`extract.tokenize_prompt`'s span)."""
    spans = [tokenize_prompt(tokenizer, template, s.text) for s in stimuli]
    return [list(range(p.text_start, p.text_end)) for p in spans]
