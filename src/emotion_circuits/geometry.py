"""Geometry of the emotion representation at site h: PCA, silhouette against a label-permutation null, centroid
cosines, agreement with Plutchik's wheel, and linear CKA between models.

Silhouette, PCA and centroids use features z-scored over the set's stimuli (`standardize: true`), so the few
very large residual dimensions (Gemma's residual norm reaches ~4e4) do not decide every distance alone.
The silhouette distance is euclidean on those standardized features by default (`metric: cosine` is the option).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances
from tqdm import tqdm

from .config import EMOTIONS, ConfigError
from .io import DataError, load_npz
from .seeds import derive
from .stats import permutation_p

# Plutchik's wheel going round; opposite emotions are 4 steps apart.
WHEEL: tuple[str, ...] = ("ecstasy", "admiration", "terror", "amazement", "grief", "loathing", "rage", "vigilance")
METRICS = ("euclidean", "cosine")


@dataclass(frozen=True)
class GeometrySettings:
    """params.yaml `geometry:`; the silhouette null draws `n_perm` label permutations (seed from the top level)."""
    prompt: str = "two-shot"
    sets: tuple[str, ...] = ("A", "B")
    metric: str = "euclidean"
    standardize: bool = True
    n_components: int = 10
    n_perm: int = 1000

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ConfigError(f"params.yaml: geometry.metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.n_perm < 19:
            raise ConfigError(f"params.yaml: geometry.n_perm: {self.n_perm} is too few (at least 19 for p < 0.05)")
        if self.n_components < 2:
            raise ConfigError(f"params.yaml: geometry.n_components: {self.n_components} < 2")
        if not self.sets:
            raise ConfigError("params.yaml: geometry.sets: empty")


@dataclass(frozen=True)
class CkaSettings:
    """params.yaml `cka:`; models are compared at `n_depths` relative depths spread from the first to the last layer,
    per set (not concatenated: CKA over A+B measures the set difference), on standardized features, with `n_perm`
    row permutations (the null of unrelated stimulus alignment) and `n_boot` stimulus resamples at matched depths."""
    prompt: str = "two-shot"
    sets: tuple[str, ...] = ("A", "B")
    n_depths: int = 10
    standardize: bool = True
    n_perm: int = 200
    n_boot: int = 200

    def __post_init__(self):
        if self.n_depths < 2:
            raise ConfigError(f"params.yaml: cka.n_depths: {self.n_depths} < 2")
        if self.n_perm < 19:
            raise ConfigError(f"params.yaml: cka.n_perm: {self.n_perm} is too few (at least 19 for p < 0.05)")
        if self.n_boot < 100:
            raise ConfigError(f"params.yaml: cka.n_boot: {self.n_boot} is too few (at least 100)")
        if not self.sets:
            raise ConfigError("params.yaml: cka.sets: empty")


# ---------------------------------------------------------------- reading


def read_h(path, emotions_required: bool = True) -> dict[str, np.ndarray]:
    """`h (n, L, d)` float64, `ids (n,)`, `emotions (n,)` of one activation file, checked; DataError names the file."""
    arrays = load_npz(path, required=("h", "ids", "emotions"))
    h, ids, emotions = arrays["h"], arrays["ids"].astype(str), arrays["emotions"].astype(str)
    if h.ndim != 3 or len(ids) != len(h) or len(emotions) != len(h):
        raise DataError(f"{path}: h {h.shape}, ids {ids.shape}, emotions {emotions.shape} do not agree "
                        "(expected h (n_stimuli, n_layers, d_model) and n ids and emotions)")
    if not np.isfinite(h).all():
        raise DataError(f"{path}: h has non-finite values")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate ids")
    if emotions_required:
        unknown = sorted(set(emotions) - set(EMOTIONS))
        if unknown:
            raise DataError(f"{path}: emotions {', '.join(unknown)} are not among {', '.join(EMOTIONS)}")
    return {"h": h.astype(np.float64), "ids": ids, "emotions": emotions, "path": Path(path)}


# ---------------------------------------------------------------- the wheel


def wheel_distances(order: tuple[str, ...] = EMOTIONS) -> np.ndarray:
    """`(k, k)` steps round the wheel between the emotions of `order` (adjacent 1, opposite 4)."""
    pos = np.array([WHEEL.index(e) for e in order])
    gap = np.abs(pos[:, None] - pos[None, :])
    return np.minimum(gap, len(WHEEL) - gap)


def codes(emotions: np.ndarray, order: tuple[str, ...] = EMOTIONS) -> np.ndarray:
    """Integer labels `(n,)` in the order of `order`."""
    lookup = {e: i for i, e in enumerate(order)}
    return np.array([lookup[e] for e in emotions])


# ---------------------------------------------------------------- silhouette


def features(X: np.ndarray, standardize: bool) -> np.ndarray:
    """`(n, d)` features, z-scored per dimension over the stimuli when `standardize` (constant dimensions stay 0)."""
    X = X - X.mean(axis=0)
    if standardize:
        sd = X.std(axis=0)
        X = X / np.where(sd > 0, sd, 1.0)
    return X


def silhouettes(D: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Mean silhouette for each row of `labels (P, n)` over distances `D (n, n)`: `(P,)`. Matches sklearn's
    silhouette_score(metric="precomputed") (a sample alone in its cluster scores 0), vectorized over P labellings."""
    labels = np.atleast_2d(labels)
    onehot = (labels[..., None] == np.arange(k)).astype(np.float64)           # (P, n, k)
    sums = np.matmul(D, onehot)                                                 # (P, n, k) distance sums to clusters
    counts = onehot.sum(axis=1, keepdims=True)                                  # (P, 1, k)
    own = np.take_along_axis(sums, labels[..., None], axis=2)[..., 0]           # (P, n)
    own_count = np.take_along_axis(np.broadcast_to(counts, sums.shape), labels[..., None], axis=2)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        a = own / (own_count - 1)
        other = np.where(onehot.astype(bool) | (counts == 0), np.inf, sums / counts)
        b = other.min(axis=2)
        s = (b - a) / np.maximum(a, b)
    s = np.where(own_count > 1, np.nan_to_num(s), 0.0)
    return s.mean(axis=1)


# ---------------------------------------------------------------- centroids and the wheel


def centroid_cosine(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """`(k, k)` cosine similarity of class centroids of `X (n, d)`, centred on the mean of the centroids
    (equal to the grand mean for a balanced set, and not tilted by an unbalanced one)."""
    C = np.stack([X[y == c].mean(axis=0) for c in range(k)])
    C = C - C.mean(axis=0)
    C = C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-300)
    return C @ C.T


@dataclass(frozen=True)
class WheelNull:
    """Every relabelling of the k centroids, precomputed once: wheel steps of each pair under each permutation."""
    steps: np.ndarray       # (P, n_pairs) wheel steps of pair (i, j) when centroid i is labelled perm[i]
    rank_c: np.ndarray      # (P, n_pairs) centred ranks of those steps
    iu: tuple[np.ndarray, np.ndarray]

    @classmethod
    def exact(cls, order: tuple[str, ...] = EMOTIONS) -> "WheelNull":
        W = wheel_distances(order)
        k = len(order)
        iu = np.triu_indices(k, 1)
        perms = np.array(list(itertools.permutations(range(k))))                # (k!, k); the identity is row 0
        steps = W[perms[:, iu[0]], perms[:, iu[1]]]
        ranks = rankdata(W[iu])                                                   # ties averaged
        rank_of = np.zeros(W.max() + 1)
        rank_of[W[iu]] = ranks                                                    # tied steps share a rank
        rank_c = rank_of[steps] - ranks.mean()
        return cls(steps=steps, rank_c=rank_c, iu=iu)

    def test(self, cosine: np.ndarray) -> dict[str, object]:
        """Spearman of centroid distance (1 - cosine) with wheel steps over the pairs, and adjacent minus opposite
        mean cosine; each with its exact one-sided permutation null over centroid labellings (identity included)."""
        cvec = cosine[self.iu]
        r = rankdata(np.round(1.0 - cvec, 10))                                   # equal up to rounding = tied
        r = r - r.mean()
        denom = np.linalg.norm(r) * np.linalg.norm(self.rank_c[0])
        rho = self.rank_c @ r / denom if denom > 0 else np.zeros(len(self.rank_c))
        opp = (cvec * (self.steps == 4)).sum(axis=1) / (self.steps[0] == 4).sum()
        adj = (cvec * (self.steps == 1)).sum(axis=1) / (self.steps[0] == 1).sum()
        gap = adj - opp
        return {"rho": float(rho[0]), "rho_null": rho, "rho_p": float(np.mean(rho >= rho[0] - 1e-12)),
                "opposite": float(opp[0]), "adjacent": float(adj[0]), "gap": float(gap[0]), "gap_null": gap,
                "gap_p": float(np.mean(gap >= gap[0] - 1e-12))}


# ---------------------------------------------------------------- one set, every layer


@dataclass
class SetGeometry:
    """Per-layer results for one stimulus set (arrays over layers L) and the peak layer's details."""
    silhouette: np.ndarray          # (L,)
    null_mean: np.ndarray           # (L,) mean silhouette under shuffled labels
    p_layer: np.ndarray             # (L,) permutation p at each layer (uncorrected)
    peak: int                       # layer of highest silhouette, or the one passed in
    p_peak: float                   # p of the maximum over layers against the maximum-over-layers null
    explained: np.ndarray           # (L, n_components) PCA explained variance ratio
    wheel_rho: np.ndarray           # (L,)
    wheel_p: np.ndarray             # (L,)
    wheel_best: int                 # layer of highest wheel rho
    wheel_best_p: float             # its p against the maximum-over-layers null
    opposite: np.ndarray            # (L,) mean centroid cosine of the 4 opposite pairs
    adjacent: np.ndarray            # (L,) ... of the 8 adjacent pairs
    gap_p: np.ndarray               # (L,) p of adjacent minus opposite
    coords: np.ndarray              # (n, 2) PCA coordinates at the peak
    cosine: np.ndarray              # (k, k) centroid cosine at the peak
    peak_given: bool


def analyze_set(h: np.ndarray, emotions: np.ndarray, settings: GeometrySettings, seed: int,
                peak_layer: int | None = None, wheel_null: WheelNull | None = None) -> SetGeometry:
    """Geometry of `h (n, L, d)` labelled `emotions (n,)` at every layer; one set of label permutations for all
    layers, so the peak (chosen by silhouette) is tested against the null of the maximum over layers."""
    n, L, _d = h.shape
    k = len(EMOTIONS)
    y = codes(emotions)
    if np.bincount(y, minlength=k).min() < 2:
        raise ValueError(f"every emotion needs at least 2 stimuli for the geometry (counts {np.bincount(y, minlength=k)})")
    rng = np.random.default_rng(derive(seed, "silhouette null"))
    labels = np.vstack([y, np.stack([rng.permutation(y) for _ in range(settings.n_perm)])])   # row 0 observed
    wheel_null = wheel_null or WheelNull.exact()
    n_comp = min(settings.n_components, n, h.shape[2])
    sil = np.zeros((settings.n_perm + 1, L))
    explained = np.full((L, settings.n_components), np.nan)
    wheel = []
    for layer in tqdm(range(L), desc="geometry layers", leave=False):
        X = features(h[:, layer], settings.standardize)
        sil[:, layer] = silhouettes(pairwise_distances(X, metric=settings.metric), labels, k)
        explained[layer, :n_comp] = PCA(n_components=n_comp, svd_solver="full").fit(X).explained_variance_ratio_
        wheel.append(wheel_null.test(centroid_cosine(X, y, k)))
    observed, null = sil[0], sil[1:]
    peak = int(np.argmax(observed)) if peak_layer is None else int(peak_layer)
    if not 0 <= peak < L:
        raise ValueError(f"peak layer {peak} is outside 0..{L - 1}")
    rho_all = np.stack([w["rho_null"] for w in wheel], axis=1)                  # (P, L); row 0 observed
    wheel_best = int(np.argmax(rho_all[0]))
    max_null = rho_all.max(axis=1)
    X_peak = features(h[:, peak], settings.standardize)
    return SetGeometry(
        silhouette=observed, null_mean=null.mean(axis=0),
        p_layer=np.array([permutation_p(observed[l], null[:, l]) for l in range(L)]),
        peak=peak,
        p_peak=permutation_p(observed.max(), null.max(axis=1)) if peak_layer is None
        else permutation_p(observed[peak], null[:, peak]),
        explained=explained,
        wheel_rho=rho_all[0], wheel_p=np.array([w["rho_p"] for w in wheel]),
        wheel_best=wheel_best, wheel_best_p=float(np.mean(max_null >= rho_all[0, wheel_best] - 1e-12)),
        opposite=np.array([w["opposite"] for w in wheel]), adjacent=np.array([w["adjacent"] for w in wheel]),
        gap_p=np.array([w["gap_p"] for w in wheel]),
        coords=PCA(n_components=2, svd_solver="full").fit_transform(X_peak),
        cosine=centroid_cosine(X_peak, y, k), peak_given=peak_layer is not None)


# ---------------------------------------------------------------- CKA


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of `X (n, d1)` and `Y (n, d2)` over the same n stimuli, columns centred:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F). Invariant to orthogonal maps and isotropic scaling.
    Biased upward when d >> n (independent noise then scores near 1): see `cka_from_grams(debiased=True)`."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
        raise ValueError(f"CKA needs two (n, d) arrays over the same stimuli, got {X.shape} and {Y.shape}")
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    xx = np.linalg.norm(X.T @ X)
    yy = np.linalg.norm(Y.T @ Y)
    if xx == 0 or yy == 0:
        return float("nan")
    return float(np.linalg.norm(Y.T @ X) ** 2 / (xx * yy))


def gram(X: np.ndarray, standardize: bool = False) -> np.ndarray:
    """`(n, n)` linear Gram matrix of the column-centred `X (n, d)`; `standardize` also scales each column to unit
    variance, so a few high-variance (outlier) dimensions do not dominate the similarity."""
    X = np.asarray(X, np.float64)
    X = X - X.mean(axis=0)
    if standardize:
        sd = X.std(axis=0)
        X = X / np.where(sd > 0, sd, 1.0)
    return X @ X.T


def cka_null_and_interval(K: np.ndarray, L: np.ndarray, n_perm: int, n_boot: int, seed: int,
                          level: float = 0.95) -> dict:
    """Matched-stimulus CKA of Gram matrices `K, L (n, n)` beside its row-permutation null (L's stimuli shuffled:
    the CKA of two unrelated representations of these data) and an interval from half-samples (n/2 stimuli without
    replacement, whose estimator variance matches the full sample's), centred on the estimate: a with-replacement
    bootstrap duplicates rows, and duplicates inflate CKA. Returns cka, low, high, null_mean, null_p95, p."""
    rng = np.random.default_rng(derive(seed, "cka null"))
    n, m = len(K), len(K) // 2
    point = cka_from_grams(K, L)
    null = np.array([cka_from_grams(K, L[np.ix_(p, p)]) for p in (rng.permutation(n) for _ in range(n_perm))])
    centre = np.eye(m) - 1.0 / m   # re-centre the sub-sampled Gram matrices
    half = []
    for _ in range(n_boot):
        idx = rng.choice(n, m, replace=False)
        half.append(cka_from_grams(centre @ K[np.ix_(idx, idx)] @ centre, centre @ L[np.ix_(idx, idx)] @ centre))
    half = np.array(half)
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(half, [tail, 100 - tail]) - np.nanmean(half)
    return {"cka": point, "low": float(max(point + lo, -1.0)), "high": float(min(point + hi, 1.0)),
            "null_mean": float(null.mean()), "null_p95": float(np.percentile(null, 95)),
            "p": float((1 + np.sum(null >= point)) / (1 + n_perm))}


def half_samples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """`(n_boot, n // 2)` stimulus indices, each row n/2 stimuli drawn without replacement. Half-sampling without
    replacement gives a mean the same variance as the full sample's (finite-population factor 1/2), and never
    duplicates a stimulus: duplicated rows align perfectly in both models and push CKA up (debiased CKA of two
    independent representations averages ~0.76 over with-replacement resamples)."""
    rng = np.random.default_rng(derive(seed, "half samples"))
    return np.stack([rng.choice(n, n // 2, replace=False) for _ in range(n_boot)])


def debiased_half_draws(K: np.ndarray, L: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """`(n_boot,)` debiased CKA of Gram matrices `K, L (n, n)` on each half-sample of `halves (n_boot, m)` (unbiased
    HSIC ignores centring, so sub-Gram matrices need none)."""
    return np.array([cka_from_grams(K[np.ix_(i, i)], L[np.ix_(i, i)], debiased=True) for i in halves])


def half_interval(point: float, draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of half-sample `draws` around their own mean, placed on the full-sample `point`."""
    draws = np.asarray(draws, np.float64)
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail]) - draws.mean()
    return float(point + lo), float(point + hi)


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) of two Gram matrices."""
    n = len(K)
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    ones_K, ones_L = K.sum(axis=0), L.sum(axis=0)
    value = (np.sum(K * L) + ones_K.sum() * ones_L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * ones_K @ ones_L)
    return value / (n * (n - 3))


def cka_from_grams(K: np.ndarray, L: np.ndarray, debiased: bool = False) -> float:
    """CKA from centred Gram matrices (the same number as `linear_cka` when not debiased); debiased CKA
    (Kornblith et al. 2019, unbiased HSIC) stays near 0 for unrelated representations even when d >> n."""
    if debiased:
        kk, ll = _hsic_unbiased(K, K), _hsic_unbiased(L, L)
        return float(_hsic_unbiased(K, L) / np.sqrt(kk * ll)) if kk > 0 and ll > 0 else float("nan")
    kk, ll = np.linalg.norm(K), np.linalg.norm(L)
    return float(np.sum(K * L) / (kk * ll)) if kk > 0 and ll > 0 else float("nan")


def depth_layers(n_layers: int, n_depths: int) -> tuple[np.ndarray, np.ndarray]:
    """`n_depths` relative depths from 0 to 1 and the layer of each: round(depth * (L - 1)), so depth 0 is the first
    block and depth 1 the last, whatever L is. Returns (depths, layers)."""
    depths = np.linspace(0.0, 1.0, n_depths)
    return depths, np.rint(depths * (n_layers - 1)).astype(int)


def check_same_ids(reference: dict, other: dict) -> None:
    """CKA compares the same stimuli in the same order; a mismatch is a DataError naming both files."""
    a, b = reference["ids"], other["ids"]
    if len(a) != len(b):
        raise DataError(f"{other['path']}: {len(b)} stimuli, but {reference['path']} has {len(a)}; "
                        "CKA needs the same stimuli in every model")
    bad = np.flatnonzero(a != b)
    if len(bad):
        i = bad[0]
        raise DataError(f"{other['path']}: ids differ from {reference['path']} (first at index {i}: "
                        f"{b[i]!r} vs {a[i]!r}); CKA needs the same stimuli in the same order")
