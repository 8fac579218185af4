"""Publication figures from stage outputs. Each plot function takes DataFrames or arrays and returns a matplotlib
Figure (built without pyplot, so no global state); `save` writes it as .png and .svg atomically.

Conventions: Okabe-Ito colours (colour-blind safe) with line styles / markers as a second cue, fonts >= 8 pt at the
printed size (3.5 in for one column, 7 in for two), legends outside the axes, AUROC chance drawn at 0.5.
"""
from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .config import EMOTIONS  # noqa: E402
from .io import atomic_path  # noqa: E402

OKABE_ITO = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "purple": "#CC79A7",
             "orange": "#E69F00", "sky": "#56B4E9", "yellow": "#F0E442", "black": "#000000"}
SERIES = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "purple", "orange", "sky", "black", "yellow")]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
COLUMN, WIDE, DPI = 3.5, 7.0, 200           # inches, inches, dots per inch
STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "figure.titlesize": 9, "axes.spines.top": False, "axes.spines.right": False,
         "savefig.dpi": DPI, "svg.hashsalt": "emotion-circuits", "figure.constrained_layout.use": True}
CHANCE_AUROC = 0.5
GREY = "#777777"


def styled(fn):
    """Build the figure under the house style (font sizes are fixed when text is created)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def save(fig: Figure, stem: Path) -> list[Path]:
    """`stem`.png and `stem`.svg, each written to a temporary name in the folder and renamed; no date in the SVG, so
    the same figure gives the same bytes."""
    paths = []
    with plt.rc_context(STYLE):
        for ext, meta in ((".png", {"Software": None}), (".svg", {"Date": None})):
            path = Path(stem).with_suffix(ext)
            with atomic_path(path, suffix=ext) as tmp:
                fig.savefig(tmp, format=ext[1:], metadata=meta)
            paths.append(path)
    return paths


def _panels(n: int, height: float, ncols: int | None = None, width: float | None = None):
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(width or (COLUMN if n == 1 else WIDE), height * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _chance(ax, others: dict[str, float] | None = None) -> None:
    """AUROC chance, 0.5, as a dashed line labelled in the right margin (where no data is drawn), together with the
    labels of `others` (label -> y) so that no two overlap."""
    ax.axhline(CHANCE_AUROC, color=GREY, lw=0.5, ls=(0, (4, 3)), zorder=0)
    _margin_labels(ax, {"chance": CHANCE_AUROC, **(others or {})})


def _margin_labels(ax, values: dict[str, float], color=GREY, gap: float = 0.045) -> None:
    """Write each label just right of the axes at its y value (data units), nudged apart so none overlap."""
    placed = []
    for label, y in sorted(values.items(), key=lambda kv: kv[1]):
        y_text = max(y, placed[-1] + gap) if placed else y
        placed.append(y_text)
        ax.annotate(label, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(1.02, y_text),
                    textcoords=("axes fraction", "data"), va="center", ha="left", color=color, fontsize=8,
                    annotation_clip=False)


def _curve(ax, frame: pd.DataFrame, color, ls="-", band: float = 0.25, marker=None, label=None):
    """AUROC `frame` (rows of one task and site: depth, auroc, low, high) with its interval shaded."""
    frame = frame.sort_values("depth")
    ax.plot(frame["depth"], frame["auroc"], color=color, ls=ls, lw=1.3, marker=marker, ms=3, label=label)
    if band:
        ax.fill_between(frame["depth"], frame["low"], frame["high"], color=color, alpha=band, lw=0)


def _null(ax, frame: pd.DataFrame, color) -> None:
    """The permutation null of `frame` (rows of one task and site): the band from its mean to its 95th percentile,
    the reference line for a pooled out-of-fold AUROC (which sits below 0.5 under the null for small n)."""
    if not len(frame) or "null_p95" not in frame or frame["null_p95"].isna().all():
        return
    frame = frame.sort_values("depth")
    ax.fill_between(frame["depth"], frame["null_mean"], frame["null_p95"], color=color, alpha=0.12, lw=0)
    ax.plot(frame["depth"], frame["null_p95"], color=color, ls=":", lw=0.9)


def _auroc_axes(ax, frames, title: str):
    low = min([0.3] + [f["low"].min() for f in frames if len(f)])
    ax.set_ylim(max(0.0, low - 0.02), 1.02)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("relative depth (layer+1)/L")
    ax.set_ylabel("macro one-vs-rest AUROC")
    ax.set_title(title)


def _select(probes: pd.DataFrame, task: str, site: str = "h") -> pd.DataFrame:
    return probes[(probes["task"] == task) & (probes["site"] == site)]


@styled
def auroc_depth(probes: dict[str, pd.DataFrame], text_only: dict[str, float] | None = None) -> Figure:
    """Set A and Set B 8-class AUROC against relative depth, one panel per model (site h): 95% intervals shaded,
    the random-init model dashed, the label-permutation null (mean to 95th percentile, dotted at the 95th) per
    layer, chance 0.5 thin, and the best text-only baseline of Set B (`text_only`: method -> AUROC) dash-dotted."""
    fig, axes = _panels(len(probes), 2.6)
    colors = {"set_a": OKABE_ITO["blue"], "set_b": OKABE_ITO["vermillion"]}
    for ax, (model, frame) in zip(axes, probes.items()):
        shown = []
        for task, color in colors.items():
            main = _select(frame, task)
            _curve(ax, main, color)
            shown.append(main)
            rand = _select(frame, f"random_init.{task}")
            if len(rand):
                _curve(ax, rand, color, ls="--", band=0.1)
                shown.append(rand)
            _null(ax, main, color)
        if text_only:
            method = max(text_only, key=text_only.get)
            ax.axhline(text_only[method], color=colors["set_b"], lw=0.9, ls="-.", zorder=0)
        _chance(ax)
        _auroc_axes(ax, shown, model)
    handles = [Line2D([], [], color=colors["set_a"], lw=4, alpha=0.6, label="Set A, 95% CI"),
               Line2D([], [], color=colors["set_b"], lw=4, alpha=0.6, label="Set B, 95% CI"),
               Line2D([], [], color="k", ls="-", label="trained model"),
               Line2D([], [], color="k", ls="--", label="random-init model"),
               Line2D([], [], color="k", ls=":", label="permutation null, 95th pct"),
               Line2D([], [], color=GREY, ls=(0, (4, 3)), lw=0.5, label="AUROC 0.5")]
    if text_only:
        method = max(text_only, key=text_only.get)
        handles.append(Line2D([], [], color=colors["set_b"], ls="-.", label=f"Set B, text only ({method})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(probes) > 1 else 2, frameon=False)
    fig.suptitle("8-class emotion probes by depth, site h\n(A: expressive texts, B: vignettes; band: label-permutation "
                 "null)" if len(probes) > 1 else "8-class emotion probes, site h")
    return fig


@styled
def transfer_binary(probes: dict[str, pd.DataFrame], text_only: dict[str, float] | None = None,
                    threshold: float | None = None) -> Figure:
    """Left: transfer (probe fit on Set A, scored on Set B); right: binary Set B vs Set N (grouped by pair), with the
    permutation null band and, when given, the text-only baselines of the binary task (`text_only`: method -> AUROC) and the first layer
    reaching `threshold` (triangle). One colour per model, random-init dashed; site h."""
    fig, (left, right) = _panels(2, 2.6, ncols=2)
    shown = {left: [], right: []}
    for i, (model, frame) in enumerate(probes.items()):
        color, marker = SERIES[i % len(SERIES)], MARKERS[i % len(MARKERS)]
        for ax, task in ((left, "transfer"), (right, "b_vs_n")):
            main = _select(frame, task)
            _curve(ax, main, color, label=model)
            _curve(ax, _select(frame, f"random_init.{task}"), color, ls="--", band=0.1)
            _null(ax, main, color)
            shown[ax] += [main, _select(frame, f"random_init.{task}")]
            if task == "b_vs_n" and threshold is not None:
                hit = main.sort_values("depth")
                hit = hit[hit["auroc"] >= threshold]
                if len(hit):
                    ax.plot(hit["depth"].iloc[0], 1.0, marker="v", color=color, ms=6, clip_on=False)
    for value in (text_only or {}).values():
        right.axhline(value, color=GREY, lw=0.8, ls="-.", zorder=0)
    _chance(left)
    _chance(right, {f"text: {method}": value for method, value in (text_only or {}).items()})
    for ax, title in ((left, "Transfer: fit on Set A, scored on Set B"), (right, "Set B vs Set N (binary)")):
        _auroc_axes(ax, shown[ax], title)
    right.set_ylabel("AUROC")
    handles = [Line2D([], [], color=SERIES[i % len(SERIES)], lw=1.3, label=m) for i, m in enumerate(probes)]
    handles += [Line2D([], [], color="k", ls="--", label="random-init model"),
                Line2D([], [], color="k", ls=":", label="permutation null, 95th pct"),
                Line2D([], [], color=GREY, ls=(0, (4, 3)), lw=0.5, label="AUROC 0.5")]
    if text_only:
        handles.append(Line2D([], [], color=GREY, ls="-.", label="text-only baseline (no model)"))
    if threshold is not None:
        handles.append(Line2D([], [], color="k", marker="v", ls="", label=f"first layer >= {threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
    return fig


@styled
def pca_scatter(coords: dict[str, pd.DataFrame], titles: dict[str, str], axis_labels: dict[str, tuple],
                suptitle: str = "") -> Figure:
    """PCA coordinates (`id, emotion, pc1, pc2` per set) at the peak layer, one panel per set, the 8 emotions in 8
    colours and 8 marker shapes."""
    fig, axes = _panels(len(coords), 3.2, ncols=2)
    for ax, (name, frame) in zip(axes, coords.items()):
        for k, emotion in enumerate(EMOTIONS):
            pts = frame[frame["emotion"] == emotion]
            ax.scatter(pts["pc1"], pts["pc2"], s=16, color=SERIES[k], marker=MARKERS[k], edgecolor="k",
                       linewidth=0.3, label=emotion)
        ax.set_xlabel(axis_labels[name][0])
        ax.set_ylabel(axis_labels[name][1])
        ax.set_title(titles[name])
        ax.set_aspect("equal", adjustable="datalim")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False, markerscale=1.3)
    fig.suptitle(suptitle)
    return fig


def _heatmap(ax, matrix: np.ndarray, rows, cols, vmin, vmax, cmap, fmt="{:.2f}", annotate=True):
    """`matrix (len(rows), len(cols))` as an image with the values written in (white on dark cells)."""
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(rows)), rows)
    ax.spines[:].set_visible(False)
    if annotate:
        for (i, j), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                r, g, b, _ = image.cmap(image.norm(v))
                text = fmt.format(v)
                text = fmt.format(0.0) if float(text) == 0 else text        # no "-0.00"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    return image


@styled
def cosine_heatmaps(cosines: dict[str, pd.DataFrame], titles: dict[str, str], order=EMOTIONS,
                    suptitle: str = "") -> Figure:
    """Centroid cosine similarity (`emotion_a, emotion_b, cosine` per set), one panel per set, emotions in `order`
    (Plutchik's wheel order puts neighbours side by side; opposites are 4 apart). The diagonal (always 1) is left
    blank and the colour scale is symmetric around 0 up to the largest off-diagonal value, so structure shows."""
    fig, axes = _panels(len(cosines), 3.4, ncols=2)
    matrices = {}
    for name, frame in cosines.items():
        matrix = frame.pivot(index="emotion_a", columns="emotion_b", values="cosine").loc[list(order), list(order)]
        matrices[name] = np.where(np.eye(len(order), dtype=bool), np.nan, matrix.to_numpy(dtype=float))
    limit = max([0.1] + [np.nanmax(np.abs(m)) for m in matrices.values()])
    limit = np.ceil(limit * 10) / 10
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items()):
        image = _heatmap(ax, matrix, order, order, -limit, limit, "RdBu_r", fmt="{:.0f}")
        ax.set_title(titles[name])
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="cosine similarity of centroids (diagonal 1: blank)")
    fig.suptitle(suptitle)
    return fig


def _over_sets(cka: pd.DataFrame) -> pd.DataFrame:
    """The cka stage computes CKA per stimulus set; the figures show the mean over sets."""
    if "set" not in cka.columns:
        return cka
    keys = ["model_a", "model_b", "depth_a", "depth_b", "layer_a", "layer_b"]
    return cka.groupby(keys, as_index=False, sort=False)[["cka", "cka_debiased"]].mean()


@styled
def cka_models(cka: pd.DataFrame, models: list[str]) -> Figure:
    """Mean linear CKA over matched relative depths between every pair of `models`: plain (left) and debiased (right).
    `cka` has the stage's rows: model_a, model_b, depth_a, depth_b, cka, cka_debiased."""
    cka = _over_sets(cka)
    matched = cka[np.isclose(cka["depth_a"], cka["depth_b"])]
    matrices = {}
    for column in ("cka", "cka_debiased"):
        matrix = np.eye(len(models))
        for (a, b), rows in matched.groupby(["model_a", "model_b"]):
            if a in models and b in models:
                i, j = models.index(a), models.index(b)
                matrix[i, j] = matrix[j, i] = rows[column].mean()
        matrices[column] = matrix
    vmin = min(0.0, min(np.nanmin(m) for m in matrices.values()))
    fig, axes = _panels(2, 3.6, ncols=2)
    image = None
    for ax, (column, matrix) in zip(axes, matrices.items()):
        image = _heatmap(ax, matrix, models, models, vmin, 1.0, "viridis")
        ax.set_title("debiased linear CKA" if column == "cka_debiased" else "linear CKA")
    fig.colorbar(image, ax=list(axes), shrink=0.7, label="CKA (1 = same geometry)")
    fig.suptitle("Mean CKA over matched relative depths, residual stream h")
    return fig


@styled
def cka_depths(cka: pd.DataFrame, pairs: list[tuple[str, str]]) -> Figure:
    """Linear CKA between every depth of model a (rows) and model b (columns), one panel per pair."""
    fig, axes = _panels(len(pairs), 3.0, ncols=min(len(pairs), 2))
    image = None
    for ax, (a, b) in zip(axes, pairs):
        rows = _over_sets(cka)
        rows = rows[(rows["model_a"] == a) & (rows["model_b"] == b)]
        matrix = rows.pivot(index="depth_a", columns="depth_b", values="cka")
        image = _heatmap(ax, matrix.to_numpy(), [f"{d:.2f}" for d in matrix.index],
                         [f"{d:.2f}" for d in matrix.columns], 0, 1, "viridis", annotate=len(matrix) <= 6)
        ax.set_xlabel(f"{b}: relative depth")
        ax.set_ylabel(f"{a}: relative depth")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="linear CKA")
    fig.suptitle("Linear CKA between depths of two models, residual stream h")
    return fig


@styled
def cka_matched(cka: pd.DataFrame) -> Figure:
    """Debiased CKA at matched relative depths with its half-sample 95% interval, beside the random-init pair at
    the same depths (dashed): the reference that can fail, since two models reading the same texts always beat a
    shuffled-rows null. One panel per model pair and stimulus set (the cka stage's rows with a reference)."""
    rows = cka[cka["reference_debiased"].notna()] if "reference_debiased" in cka.columns else cka.iloc[:0]
    groups = list(rows.groupby(["model_a", "model_b", "set"] if "set" in rows.columns else ["model_a", "model_b"],
                               sort=False))
    fig, axes = _panels(max(len(groups), 1), 2.6, ncols=min(max(len(groups), 1), 2))
    for ax, (key, frame) in zip(axes, groups):
        frame = frame.sort_values("depth_a")
        x = frame["depth_a"].to_numpy()
        ax.fill_between(x, frame["cka_debiased_low"], frame["cka_debiased_high"], color=SERIES[0], alpha=0.25, lw=0)
        ax.plot(x, frame["cka_debiased"], color=SERIES[0], marker="o", ms=3)
        ax.plot(x, frame["reference_debiased"], color=GREY, ls="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel("relative depth (layer / (L - 1), matched in both models)")
        ax.set_ylabel("debiased linear CKA")
        ax.set_title(f"{key[0]} vs {key[1]}" + (f", Set {key[2]}" if len(key) > 2 else ""))
    fig.legend(handles=[Line2D([], [], color=SERIES[0], marker="o", ms=3, label="model pair, 95% CI"),
                        Line2D([], [], color=GREY, ls="--", label="random-init pair, same depths")],
               loc="outside lower center", frameon=False, ncols=2)
    fig.suptitle("CKA between models at matched relative depths, residual stream h")
    return fig


@styled
def attention_sets(layers: dict[str, pd.DataFrame]) -> Figure:
    """Attention of the extraction position on the stimulus text over its uniform expectation (1 = no preference) by
    depth (mean over heads and stimuli), two sets per model (top), and their difference with its 95% bootstrap
    interval, layers with BH q < 0.05 marked (bottom)."""
    n = len(layers)
    fig = Figure(figsize=(COLUMN if n == 1 else WIDE, 4.2))
    axes = fig.subplots(2, n, squeeze=False, sharex=True)
    for col, (model, frame) in enumerate(layers.items()):
        frame = frame.sort_values("depth")
        top, bottom = axes[0, col], axes[1, col]
        sa, sb = frame["set_a"].iloc[0], frame["set_b"].iloc[0]
        top.plot(frame["depth"], frame["text_ratio_a"], color=OKABE_ITO["blue"], marker="o", ms=3, label=f"Set {sa}")
        top.plot(frame["depth"], frame["text_ratio_b"], color=OKABE_ITO["vermillion"], marker="s", ms=3,
                 label=f"Set {sb}")
        top.axhline(1, color=GREY, lw=0.8, ls=(0, (4, 3)))
        top.set_ylim(bottom=0)
        top.set_title(model)
        top.set_ylabel("text share / uniform share")
        bottom.plot(frame["depth"], frame["ratio_diff"], color="k", lw=1.2)
        bottom.fill_between(frame["depth"], frame["ratio_low"], frame["ratio_high"], color=GREY, alpha=0.35, lw=0)
        hit = frame[frame["q_bh"] < 0.05]
        bottom.plot(hit["depth"], hit["ratio_diff"], ls="none", marker="*", ms=6, color=OKABE_ITO["orange"])
        bottom.axhline(0, color=GREY, lw=0.8, ls=(0, (4, 3)))
        bottom.set_ylabel(f"Set {sa} minus Set {sb}")
        bottom.set_xlabel("relative depth (layer+1)/L")
        bottom.set_xlim(0, 1)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], color=GREY, lw=4, alpha=0.5, label="difference, 95% CI"))
    handles.append(Line2D([], [], ls="none", marker="*", ms=6, color=OKABE_ITO["orange"], label="BH q < 0.05"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle("Attention of the last token on the stimulus text, relative to uniform")
    return fig


SITE_COLORS = {"h": OKABE_ITO["blue"], "a": OKABE_ITO["vermillion"], "m": OKABE_ITO["green"]}
SITE_NAMES = {"h": "h (residual)", "a": "a (attention out)", "m": "m (MLP out)"}
KNOCKOUT_STYLES = {"zero": ("-", 0.2, "zeroed"), "mean": ("--", 0.0, "set mean"),
                   "resample": ("-.", 0.0, "resampled (another stimulus)")}        # ablation -> line, band, label


def _band(ax, frame: pd.DataFrame, key: str, color, ls="-", alpha=0.25, marker=None):
    """`frame[key]` against depth with `key_low`..`key_high` shaded (no shading when alpha is 0)."""
    frame = frame.sort_values("depth")
    ax.plot(frame["depth"], frame[key], color=color, ls=ls, lw=1.3, marker=marker, ms=3)
    if alpha:
        ax.fill_between(frame["depth"], frame[f"{key}_low"], frame[f"{key}_high"], color=color, alpha=alpha, lw=0)


def _site_handles(sites, suffix: str = ", 95% CI") -> list[Line2D]:
    return [Line2D([], [], color=SITE_COLORS.get(s, "k"), lw=4, alpha=0.6, label=SITE_NAMES.get(s, s) + suffix)
            for s in sites]


def _depth_axes(ax, title: str, ylabel: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_xlabel("relative depth (layer+1)/L")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


@styled
def patching_layers(detail: dict[str, pd.DataFrame]) -> Figure:
    """Normalised logit-difference recovery against relative depth, one panel per model (`detail`: the stage's
    patching_detail.csv rows), one colour per site with its two-way bootstrap 95% interval; the same-emotion
    control patch dotted with a faint interval; the unpatched baseline is 0 by definition (grey line), 1 is the
    source's own logit difference, and the dashed line marks 0.5 (the h headline's threshold)."""
    fig, axes = _panels(len(detail), 2.6 if len(detail) > 1 else 3.6)      # one column: legend in one column below
    sites = []
    for ax, (model, frame) in zip(axes, detail.items()):
        ax.axhline(0, color=GREY, lw=0.8, zorder=0)
        ax.axhline(0.5, color=GREY, lw=0.8, ls=(0, (4, 3)), zorder=0)
        for site, rows in frame.groupby("site", sort=False):
            color = SITE_COLORS.get(site, "k")
            _band(ax, rows, "recovery", color)
            _band(ax, rows, "control_recovery", color, ls=":", alpha=0.08)
            sites += [site] if site not in sites else []
        _depth_axes(ax, model, "recovery of LD (source = 1)")
    handles = _site_handles(sites) + [
        Line2D([], [], color="k", ls=":", label="control patch (same emotion)"),
        Line2D([], [], color=GREY, lw=0.8, label="unpatched baseline (0)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(detail) > 1 else 1, frameon=False)
    fig.suptitle("Activation patching at the last token" if len(detail) == 1 else
                 "Activation patching at the last token: logit-difference recovery")
    return fig


@styled
def knockout_layers(detail: dict[str, pd.DataFrame]) -> Figure:
    """Effect of ablating one layer's site output at the extraction position (`detail`: the stage's
    knockout_detail.csv rows): KL(clean || ablated) over the eight answers against relative depth, one panel per
    model, one colour per site, one line style per ablation with its 95% interval; the mean of the matched random
    controls (same displacement norm) of zeroing dotted; a dot marks a critical layer (the stage's kl_critical: BH
    over layers x sites x ablations of the sign-flip test against the matched controls)."""
    fig, axes = _panels(len(detail), 2.6 if len(detail) > 1 else 3.8)      # one column: legend in one column below
    sites = []
    for ax, (model, frame) in zip(axes, detail.items()):
        for (site, op), rows in frame.groupby(["site", "ablation"], sort=False):
            ls, alpha, _ = KNOCKOUT_STYLES.get(op, ("-", 0.2, op))
            color = SITE_COLORS.get(site, "k")
            _band(ax, rows, "kl", color, ls=ls, alpha=alpha)
            if op == "zero":
                _band(ax, rows, "control_kl", color, ls=":", alpha=0.08)
            sites += [site] if site not in sites else []
            critical = rows[rows["kl_critical"].astype(bool)]
            ax.plot(critical["depth"], critical["kl"], "o", color=color, ms=4, mec="white", mew=0.6, ls="")
        ax.set_ylim(bottom=0)
        _depth_axes(ax, model, "KL(clean || ablated), nats")
    handles = _site_handles(sites) + [Line2D([], [], color="k", ls=ls, label=label)
                                      for ls, _, label in KNOCKOUT_STYLES.values()]
    handles.append(Line2D([], [], color="k", ls=":", label="matched random control of zeroing (same norm)"))
    handles.append(Line2D([], [], marker="o", color="k", mec="white", ls="", label="critical: above controls, BH"))
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(detail) > 1 else 1, frameon=False)
    fig.suptitle("Knockout of one layer's output at the last token")
    return fig


def _ticks(n: int, most: int = 10) -> range:
    """At most about `most` evenly stepped tick positions out of `n`."""
    return range(0, n, max(1, -(-n // most)))


@styled
def heads_heatmap(heads: dict[str, pd.DataFrame]) -> Figure:
    """Drop in the stimulus's own-emotion score when one attention head is zeroed at the extraction position, on the
    ranking half of the stimuli (`heads`: the stage's heads.csv rows), layer (rows, first at the bottom) by head
    (columns), one panel per model; a dot marks the tested heads that survive BH against matched controls on the
    other half. Diverging colours centred on 0, one scale for all."""
    fig, axes = _panels(len(heads), 3.2, ncols=min(len(heads), 2))
    matrices = {m: f.pivot(index="layer", columns="head", values="rank_drop").sort_index().sort_index(axis=1)
                for m, f in heads.items()}
    limit = max([1e-3] + [float(np.nanmax(np.abs(m.to_numpy()))) for m in matrices.values()])
    image = None
    for ax, (model, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower", aspect="auto",
                          interpolation="nearest")
        sure = heads[model][heads[model]["survives"].fillna(False).astype(bool)]
        rows, cols = list(matrix.index), list(matrix.columns)
        ax.plot([cols.index(h) for h in sure["head"]], [rows.index(l) for l in sure["layer"]], "o", color="k",
                ms=3, mec="white", mew=0.6, ls="")
        ax.set_xticks(list(_ticks(len(cols), 12)), [cols[i] for i in _ticks(len(cols), 12)])
        ax.set_yticks(list(_ticks(len(rows))), [rows[i] for i in _ticks(len(rows))])
        ax.spines[:].set_visible(False)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(model)
    fig.colorbar(image, ax=list(axes), shrink=0.8,
                 label="drop in own-emotion score, ranking half\n(clean minus ablated)")
    fig.legend(handles=[Line2D([], [], marker="o", color="k", mec="white", ls="", ms=4,
                               label="held-out half: survives BH vs control")],
               loc="outside lower center", frameon=False)
    fig.suptitle("Single-head ablation at the last token")
    return fig


@styled
def positions_heatmap(positions: dict[str, pd.DataFrame]) -> Figure:
    """Recovery of the Set B item's emotion when its h[l] is patched into its neutral twin at one token of the
    stimulus text (`positions`: the stage's positions.csv rows), layer (rows) by relative position in the text
    (columns, bins), one panel per model; a dot marks cells whose 95% interval lies above 0. One scale centred on 0."""
    fig, axes = _panels(len(positions), 3.2, ncols=min(len(positions), 2))
    matrices = {m: f.pivot(index="layer", columns="bin", values="recovery").sort_index().sort_index(axis=1)
                for m, f in positions.items()}
    limit = max([1e-3] + [float(np.nanmax(np.abs(m.to_numpy()))) for m in matrices.values()])
    image = None
    for ax, (model, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower", aspect="auto",
                          interpolation="nearest")
        frame = positions[model]
        sure = frame[frame["recovery_low"] > 0]
        rows, cols = list(matrix.index), list(matrix.columns)
        ax.plot([cols.index(b) for b in sure["bin"]], [rows.index(l) for l in sure["layer"]], "o", color="k",
                ms=3, mec="white", mew=0.6, ls="")
        n_bins = len(cols)
        ax.set_xticks([-0.5, (n_bins - 1) / 2, n_bins - 0.5], ["start", "middle", "end"])
        ax.set_yticks(range(len(rows)), rows)
        ax.spines[:].set_visible(False)
        ax.set_xlabel("relative position in the stimulus text")
        ax.set_ylabel("layer (h)")
        ax.set_title(model)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="recovery of the B item's emotion\n(ratio of mean LDs)")
    fig.legend(handles=[Line2D([], [], marker="o", color="k", mec="white", ls="", ms=4, label="95% CI above 0")],
               loc="outside lower center", frameon=False)
    fig.suptitle("Patching B into its neutral twin, one text position at a time")
    return fig


@styled
def steering_dose(steering: dict[str, pd.DataFrame]) -> Figure:
    """Dose-response of steering the neutral set with d_e (`steering`: the stage's steering.csv rows): the share of
    items whose answer becomes e (over the emotions each item did not already answer) against alpha (multiples of
    the layer's median norm), one line per steered layer (colour and marker per layer), its 95% interval shaded; the same-norm
    random directions' share dotted grey (the mean over layers, its range over layers shaded); chance 1/8 dashed."""
    fig, axes = _panels(len(steering), 2.8 if len(steering) > 1 else 3.6)
    for ax, (model, frame) in zip(axes, steering.items()):
        for i, (layer, rows) in enumerate(frame.groupby("layer")):
            rows = rows.sort_values("dose")
            color = SERIES[i % len(SERIES)]
            ax.plot(rows["dose"], rows["share"], color=color, lw=1.3, marker=MARKERS[i % len(MARKERS)], ms=3,
                    label=f"h{layer}")
            ax.fill_between(rows["dose"], rows["share_low"], rows["share_high"], color=color, alpha=0.15, lw=0)
        rand = frame.groupby("dose")["random_share"].agg(["mean", "min", "max"]).sort_index()
        ax.plot(rand.index, rand["mean"], color=GREY, ls=":", lw=1.3, label="random, same norm")
        ax.fill_between(rand.index, rand["min"], rand["max"], color=GREY, alpha=0.12, lw=0)
        ax.axhline(1 / 8, color=GREY, lw=0.8, ls=(0, (4, 3)), zorder=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(frame["dose"].unique()), [f"{d:g}" for d in sorted(frame["dose"].unique())])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("dose alpha (x median ||h||)")
        ax.set_ylabel("share of answers steered to e")
        ax.set_title(model)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle("Steering the neutral set with the emotion directions d_e (chance 1/8 dashed)")
    return fig


@styled
def steering_specificity(matrices: dict[str, pd.DataFrame]) -> Figure:
    """The 8 x 8 specificity matrix at the best steering cell (`matrices`: the stage's steering_specificity.csv:
    row = the direction added, column = the emotion whose calibrated score is read, value = mean change from the
    clean run; the last row is the same-norm random directions), one panel per model, diverging colours centred on
    0 on one scale per panel."""
    fig, axes = _panels(len(matrices), 3.6, ncols=min(len(matrices), 2))
    for ax, (model, frame) in zip(axes, matrices.items()):
        cols = [c for c in frame.columns if c != "direction"]
        values = frame[cols].to_numpy(float)
        limit = max(1e-3, float(np.nanmax(np.abs(values))))
        image = _heatmap(ax, values, [f"d_{d}" if d != "random" else "random" for d in frame["direction"]], cols,
                         -limit, limit, "RdBu_r", fmt="{:.0f}")
        ax.axhline(len(frame) - 1.5, color="k", lw=0.8)
        ax.set_xlabel("calibrated score read")
        ax.set_title(model)
        fig.colorbar(image, ax=ax, shrink=0.7, label="mean change from the clean run")
    fig.suptitle("Steering specificity at the best layer and dose (diagonal: the steered emotion's own score)")
    return fig


@styled
def affect_plane(planes: dict[str, pd.DataFrame]) -> Figure:
    """The eight emotion directions at the best steering layer on their first two principal components (`planes`:
    the stage's steering_affect.csv: emotion, pc1, pc2, valence), one panel per model, each point labelled and
    coloured by the word's published valence rating (diverging, centred on 0); PC signs are arbitrary."""
    fig, axes = _panels(len(planes), 3.0, ncols=min(len(planes), 2))
    limit = max(1e-3, max(float(np.abs(f["valence"]).max()) for f in planes.values()))
    image = None
    for ax, (model, frame) in zip(axes, planes.items()):
        image = ax.scatter(frame["pc1"], frame["pc2"], c=frame["valence"], cmap="RdBu", vmin=-limit, vmax=limit,
                           s=22, edgecolors="k", linewidths=0.4)
        for row in frame.itertuples(index=False):
            ax.annotate(row.emotion, (row.pc1, row.pc2), xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color=GREY, lw=0.6, zorder=0)
        ax.axvline(0, color=GREY, lw=0.6, zorder=0)
        ax.set_xlabel("PC1 of the eight d_e")
        ax.set_ylabel("PC2")
        ax.set_title(model)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="valence rating of the word (VADER)")
    fig.suptitle("Emotion directions at the best steering layer: the valence-arousal plane?")
    return fig


@styled
def ablation_drop(rows: dict[str, pd.DataFrame]) -> Figure:
    """Directional ablation (`rows`: the steering stage's steering_ablation.csv): the drop of the refit 8-class
    probe's AUROC (clean - ablated) when the emotion subspace is projected out of h[l] at every position, against
    the relative depth of the read layer, one panel per model, one colour per ablation layer l (a vertical tick at
    l) with its 95% bootstrap interval; dotted: the drop under the random subspaces of the same rank and matched
    removed norm. 0 (grey): nothing removed."""
    fig, axes = _panels(len(rows), 2.6 if len(rows) > 1 else 3.6)
    handles = []
    for ax, (model, frame) in zip(axes, rows.items()):
        ax.axhline(0, color=GREY, lw=0.8, zorder=0)
        for i, (layer, part) in enumerate(frame.groupby("ablation_layer", sort=True)):
            color = SERIES[i % len(SERIES)]
            _band(ax, part, "drop", color, marker="o")
            _band(ax, part, "random_drop", color, ls=":", alpha=0.08)
            ax.axvline(part["depth"].min(), color=color, lw=0.8, ls=(0, (2, 3)), zorder=0)
            if len(handles) <= i:
                handles.append(Line2D([], [], color=color, lw=4, alpha=0.6, label=f"ablated at h[l], l #{i + 1}"))
        _depth_axes(ax, model, "AUROC drop (clean - ablated)")
    handles += [Line2D([], [], color="k", ls=":", label="random subspace, same rank, matched removed norm")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3 if len(rows) > 1 else 1, frameon=False)
    fig.suptitle("Projecting the emotion subspace out: refit-probe AUROC drop at later layers")
    return fig
