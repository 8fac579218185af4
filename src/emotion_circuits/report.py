"""The cross-model summary: the published study's table (DESIGN §1) rebuilt from stage outputs only, each number with
its 95% interval and beside its controls, as flat metrics JSON and Markdown. Also the checked readers of stage
outputs that the summary and figures stages share (a required file missing is a one-line error naming it; an
optional one is skipped with a logged warning).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .io import DataError

log = logging.getLogger(__name__)

SITES = ("h", "a", "m")
HEADLINE_SITE = "h"
PUBLISHED_LABEL = "published (Keeman 2026; reference text, not computed)"
# DESIGN.md §1, copied as text: shown beside our numbers for reference, never used in a computation.
PUBLISHED = {"set_a": "~1.00 in every model", "set_b": "0.934 - 0.989", "transfer": "0.79 - 0.92",
             "peak_depth": "52 - 100 %", "saturation": "by layer 3 - 6", "patching": "46 - 67 %"}
BASELINE_TASKS = {"set_b": "set_b_8class", "saturation": "b_vs_n"}   # row -> metrics/stimuli.json baselines key


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class Outputs:
    """Stage outputs under `metrics` and `plots`; each file is read once, and each absent optional file warns once."""
    metrics: Path
    plots: Path
    _cache: dict = field(default_factory=dict, repr=False)

    def _read(self, path: Path, required: bool, why: str, reader):
        if path not in self._cache:
            if not path.exists():
                if required:
                    raise DataError(f"{path}: not found (run its stage: `dvc repro`, or `dvc pull`)")
                log.warning("%s: not found, %s skipped", path, why)
                self._cache[path] = None
            else:
                self._cache[path] = reader(path)
        return self._cache[path]

    def json(self, rel: str, required: bool = False, why: str = "its rows") -> dict | None:
        def read(path):
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: not valid JSON ({err})") from None
        return self._read(self.metrics / rel, required, why, read)

    def csv(self, rel: str, columns=(), required: bool = False, why: str = "its figure") -> pd.DataFrame | None:
        def read(path):
            try:
                frame = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
                raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataError(f"{path}: missing column {missing[0]} (has {', '.join(map(str, frame.columns))})")
            return frame
        return self._read(self.plots / rel, required, why, read)


@contextlib.contextmanager
def reading(where):
    """Turn a missing key or a wrongly typed value met while reading the file `where` into a one-line DataError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{where}: missing or malformed entry ({type(err).__name__}: {err})") from None


def get(tree: dict, path: str, where):
    """`tree["a"]["b"]...` for path "a.b..."; a missing key is a DataError naming the file and the key."""
    node = tree
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise DataError(f"{where}: missing key {path}")
        node = node[key]
    return node


# ---------------------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One table entry: `stats` are the numbers written to summary.json (key suffix -> value), `text` what is shown."""
    text: str
    stats: dict = field(default_factory=dict)


EMPTY = Cell("—")


def interval(m: dict, key: str = "auroc", lo: str = "low", hi: str = "high", name: str = "auroc") -> Cell:
    v, low, high = m[key], m[lo], m[hi]
    return Cell(f"{v:.3f} [{low:.3f}, {high:.3f}]", {name: v, f"{name}_low": low, f"{name}_high": high})


def number(value, name: str, fmt: str = "{:.3f}") -> Cell:
    return Cell("—" if value is None else fmt.format(value), {name: value})


def depth(m: dict) -> Cell:
    d, layer = m["peak_depth"], m["peak_layer"]
    return Cell(f"{100 * d:.0f} % (layer {layer})", {"depth": d, "layer": layer})


def saturation(m: dict) -> Cell:
    layer, d = m["saturation_layer"], m["saturation_depth"]
    text = "not reached" if layer is None else f"layer {layer} (depth {100 * d:.0f} %)"
    return Cell(text, {"layer": layer, "depth": d})


def baseline_text(baselines: dict | None, task: str) -> Cell:
    """Every text-only baseline of one stimuli-stage task (length, polarity, bag of words): AUROC and interval.
    Its stats keys are complete (`text_only/<task>.<method>.auroc`): the same for every row that shows it."""
    found = (baselines or {}).get(task) or {}
    parts, stats = [], {}
    for method in sorted(found):
        m = found[method]
        if isinstance(m, dict) and {"auroc", "low", "high"} <= set(m):
            parts.append(f"{method} {m['auroc']:.2f} [{m['low']:.2f}, {m['high']:.2f}]")
            stats.update({f"text_only/{task}.{method}.{k}": m[v] for k, v in
                          (("auroc", "auroc"), ("auroc_low", "low"), ("auroc_high", "high"))})
    return Cell("; ".join(parts) or "—", stats)


# ---------------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    """One table row: `key` names it in summary.json, `cells` maps a model to its Cell."""
    key: str
    label: str
    cells: dict
    extra: tuple = ()           # Cells of the columns after the model columns


def _probe_rows(probes: dict, site: str, thr: str) -> list[tuple[str, str, Cell]]:
    """(key, label, cell) of the headline probe results of one model at one site."""
    rows = [("set_a", "Set A (expressive), 8-class peak AUROC", interval(probes["set_a"][site])),
            ("set_b", "Set B (clinical vignettes), 8-class peak AUROC", interval(probes["set_b"][site])),
            ("transfer", "transfer: fit on Set A, scored on Set B, peak AUROC", interval(probes["transfer"][site])),
            ("peak_depth", "depth of the Set B peak layer, (l+1)/L", depth(probes["set_b"][site])),
            ("saturation", f"first layer with B-vs-N AUROC >= {thr}", saturation(probes["b_vs_n"][site]))]
    return [(f"{site}.{key}", label, cell) for key, label, cell in rows]


def _control_rows(probes: dict, site: str) -> list[tuple[str, str, Cell]]:
    """(key, label, cell) of the controls of one model's headline results."""
    rows, ri = [], probes.get("random_init")
    for task, name in (("set_a", "Set A"), ("set_b", "Set B"), ("transfer", "transfer A->B")):
        m = probes[task][site]
        if ri:
            rows.append((f"{task}.random_init", f"{name}: random-init model, peak AUROC", interval(ri[task][site])))
        if "control_auroc" in m:
            rows.append((f"{task}.control_task", f"{name}: control task (shuffled labels) AUROC at the peak layer",
                         number(m["control_auroc"], "auroc")))
            rows.append((f"{task}.selectivity", f"{name}: selectivity (AUROC - control task)",
                         number(m["selectivity"], "selectivity")))
        if "p_perm" in m:
            rows.append((f"{task}.p_perm", f"{name}: label-permutation p at the peak layer",
                         number(m["p_perm"], "p", "{:.3g}")))
        if task in probes.get("zero_shot", {}):
            rows.append((f"{task}.zero_shot", f"{name}: zero-shot prompt, peak AUROC",
                         interval(probes["zero_shot"][task][site])))
    if ri:
        rows.append(("peak_depth.random_init", "Set B peak depth: random-init model", depth(ri["set_b"][site])))
        rows.append(("saturation.random_init", "B-vs-N saturation: random-init model", saturation(ri["b_vs_n"][site])))
    bn = probes["b_vs_n"][site]
    if "selectivity" in bn:
        rows.append(("saturation.selectivity", "B vs N: selectivity at the peak layer (AUROC - control task)",
                     number(bn["selectivity"], "selectivity")))
    set_c = probes.get("set_c", {}).get(site)
    if set_c:
        rows.append(("saturation.set_c", "Set C (vivid neutral texts) called emotional by the B-vs-N probe",
                     interval(set_c, "fraction_emotional", name="fraction")))
        rows.append(("saturation.set_n", "Set N called emotional (out of fold), same layer",
                     number(set_c["n_fraction_emotional"], "fraction")))
    return [(f"{site}.{key}", label, cell) for key, label, cell in rows]


def _pivot(per_model: dict[str, list[tuple[str, str, Cell]]], prefix: str = "") -> list[Row]:
    """Rows in first-seen order with one cell per model (EMPTY where a model lacks the row)."""
    order, labels = [], {}
    for rows in per_model.values():
        for key, label, _ in rows:
            if key not in labels:
                order.append(key)
                labels[key] = label
    lookup = {m: {k: c for k, _, c in rows} for m, rows in per_model.items()}
    return [Row(prefix + k, labels[k], {m: lookup[m].get(k, EMPTY) for m in per_model}) for k in order]


def _geometry_rows(outputs: Outputs, model: str) -> list[tuple[str, str, Cell]]:
    """Silhouette and wheel agreement at each set's highest-silhouette layer (site h), with permutation p."""
    geometry, rows = outputs.json(f"{model}/geometry.json", why="its geometry rows") or {}, []
    for name in sorted(k for k, v in geometry.items() if isinstance(v, dict) and "silhouette" in v):
        g = geometry[name]
        rows += [(f"geometry.{name}.silhouette", f"Set {name}: silhouette of the 8 emotions at its best layer (p)",
                  Cell(f"{g['silhouette']:.3f} (p {g['silhouette_p']:.3g}; layer {g['best_layer']})",
                       {"silhouette": g["silhouette"], "p": g["silhouette_p"], "layer": g["best_layer"]})),
                 (f"geometry.{name}.wheel", f"Set {name}: Spearman of centroid distance with wheel steps (p)",
                  Cell(f"{g['wheel_spearman']:.3f} (p {g['wheel_p']:.3g})",
                       {"spearman": g["wheel_spearman"], "p": g["wheel_p"]})),
                 (f"geometry.{name}.adjacent_minus_opposite",
                  f"Set {name}: centroid cosine, adjacent minus opposite pairs (p)",
                  Cell(f"{g['adjacent_minus_opposite']:.3f} (p {g['adjacent_minus_opposite_p']:.3g})",
                       {"value": g["adjacent_minus_opposite"], "p": g["adjacent_minus_opposite_p"]}))]
    return rows


def _attention_rows(outputs: Outputs, model: str) -> list[tuple[str, str, Cell]]:
    """Share of the extraction position's attention on the stimulus text, per set and the difference."""
    attention = outputs.json(f"{model}/attention.json", why="its attention rows") or {}
    rows = [(f"attention.{name}.text_share", f"Set {name}: attention on the stimulus text (mean over layers, heads)",
             interval(s["text_share"], "mean", name="share")) for name, s in sorted(attention.get("sets", {}).items())]
    c = attention.get("compare")
    if c:
        rows.append(("attention.text_share_diff", f"text share, Set {c['set_a']} minus Set {c['set_b']}",
                     interval(c["text_share_diff"], "diff", name="diff")))
    return rows


@dataclass
class Summary:
    """Markdown tables (title, header, body rows, note) and the flat metrics `{key: number}` behind them."""
    models: tuple[str, ...]
    tables: list = field(default_factory=list)
    flat: dict = field(default_factory=dict)

    def add(self, title: str, rows: list[Row], extra_header: tuple = (), note: str = "") -> None:
        """A table with one column per model (then `extra_header` columns); every cell's numbers go to `flat`."""
        body = []
        for row in rows:
            for model, cell in row.cells.items():
                self.flat.update({f"{model}/{row.key}.{k}": v for k, v in cell.stats.items()})
            for cell in row.extra:
                self.flat.update(cell.stats)
            body.append([row.label, *(row.cells[m].text for m in self.models), *(c.text for c in row.extra)])
        if body:
            self.tables.append((title, ["result", *self.models, *extra_header], body, note))

    def markdown(self) -> str:
        out = ["# Cross-model summary", "",
               "Computed by the `summary` stage from stage outputs only (metrics/, plots/). Brackets are 95% bootstrap "
               "intervals over stimuli; p are label-permutation p-values; layers count from 0 and depth is "
               "(layer+1)/L. The published column is reference text copied from DESIGN.md §1, not a result of this "
               "pipeline.", ""]
        for title, header, body, note in self.tables:
            out += [f"## {title}", "", markdown_table(header, body), ""]
            out += [note, ""] if note else []
        return "\n".join(out).rstrip() + "\n"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, body)])


def build_summary(outputs: Outputs, models, threshold: float) -> Summary:
    """The summary of `models` (params `run.analyze`) from their stage outputs. probes.json is required; the text-only
    baselines, geometry, attention, CKA and intervention outputs are added when present (a warning when not).
    `threshold` is params `probes.saturation`, used only in a label."""
    models = tuple(models)
    probes, rows = {}, {}
    for m in models:
        probes[m] = outputs.json(f"{m}/probes.json", required=True)
        where = outputs.metrics / m / "probes.json"
        for key in ("set_a", "set_b", "transfer", "b_vs_n"):
            get(probes[m], f"{key}.{HEADLINE_SITE}.auroc", where)
        with reading(where):
            rows[m] = {"headline": _probe_rows(probes[m], HEADLINE_SITE, f"{threshold:g}"),
                       "controls": _control_rows(probes[m], HEADLINE_SITE),
                       "sites": [r for s in SITES if s in probes[m]["set_b"]
                                 for r in _site_rows(probes[m], s, threshold)]}
        rows[m]["patching"] = _patching_rows(outputs, m)
        with reading(outputs.metrics / m / "geometry.json"):
            rows[m]["extra"] = _geometry_rows(outputs, m)
        with reading(outputs.metrics / m / "attention.json"):
            rows[m]["extra"] += _attention_rows(outputs, m)
    stimuli = outputs.json("stimuli.json", why="the text-only baseline column")
    baselines = stimuli.get("baselines") if isinstance(stimuli, dict) else None
    summary = Summary(models)

    headline = _pivot({m: rows[m]["headline"] for m in models})
    headline += _pivot({m: rows[m]["patching"] for m in models if rows[m]["patching"]})
    for i, row in enumerate(headline):
        base = row.key.split(".")[-1]
        task = BASELINE_TASKS.get(base)
        extra = (baseline_text(baselines, task) if task else EMPTY, Cell(PUBLISHED.get(base, "—")))
        headline[i] = Row(row.key, row.label, row.cells, extra)
    summary.add(f"Headline (site {HEADLINE_SITE}: residual stream)", headline,
                ("text-only baseline AUROC, same task and splits", PUBLISHED_LABEL),
                "Controls for these rows are in the next table. Text-only baselines come from the stimuli stage "
                "(metrics/stimuli.json); Set A and transfer have none.")
    summary.add(f"Controls (site {HEADLINE_SITE})", _pivot({m: rows[m]["controls"] for m in models}))
    summary.add("Every site (h: residual stream, a: attention output, m: MLP output)",
                _pivot({m: rows[m]["sites"] for m in models}))
    summary.add("Geometry (site h) and attention of the extraction position",
                _pivot({m: rows[m]["extra"] for m in models}))
    cka = outputs.json("cka.json", why="the CKA table")
    if cka:
        with reading(outputs.metrics / "cka.json"):
            summary.tables.append(("Linear CKA between models (site h, matched relative depths)",
                                   ["model pair", "mean CKA at matched depths", "debiased", "best-aligned layers"],
                                   _cka_body(cka, summary.flat), ""))
    return summary


def _site_rows(probes: dict, site: str, threshold: float) -> list[tuple[str, str, Cell]]:
    return [(key, f"{label} (site {site})", cell) for key, label, cell in _probe_rows(probes, site, f"{threshold:g}")]


def _cka_body(cka: dict, flat: dict) -> list[list[str]]:
    body = []
    for name, p in sorted(cka.get("pairs", {}).items()):
        flat.update({f"cka/{name}.mean_matched": p["mean_matched_cka"],
                     f"cka/{name}.mean_matched_debiased": p["mean_matched_cka_debiased"]})
        body.append([f"{p['model_a']} vs {p['model_b']}", f"{p['mean_matched_cka']:.3f}",
                     f"{p['mean_matched_cka_debiased']:.3f}",
                     f"{p['best_layer_a']} and {p['best_layer_b']} (CKA {p['best_cka']:.3f})"])
    return body


def _patching_rows(outputs: Outputs, model: str) -> list[tuple[str, str, Cell]]:
    """Patching success at its best layer, beside the unpatched baseline and the control patch (when present)."""
    patching = outputs.json(f"{model}/patching.json", why="its patching row")
    if not patching:
        return []
    return []
