"""The cross-model summary: the published study's table (DESIGN §1) rebuilt from stage outputs only, each number with
its 95% interval and beside its controls, as flat metrics JSON and Markdown. Also the checked reader of stage outputs
shared by the summary and figures stages: a missing required file is a one-line error naming it, a missing optional
one is skipped with a logged warning, and a malformed one is a one-line error naming it.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import stats
from .io import DataError

log = logging.getLogger(__name__)

SITES = ("h", "a", "m")
HEADLINE_SITE = "h"
PUBLISHED_LABEL = "published (Keeman 2026; reference text, not computed)"
# DESIGN.md §1, copied as text: shown beside our numbers for reference, never used in a computation.
PUBLISHED = {"set_a": "~1.00 in every model", "set_b": "0.934 - 0.989", "transfer": "0.79 - 0.92",
             "peak_depth": "52 - 100 %", "saturation": "by layer 3 - 6", "patching": "46 - 67 %"}
PROBE_TASK = {"set_a": "set_a", "set_b": "set_b", "b_vs_n": "b_vs_n", "saturation": "b_vs_n"}   # row -> probe task
BASELINE_TASKS = {"set_a": "set_a_8class", "set_b": "set_b_8class", "b_vs_n": "b_vs_n", "saturation": "b_vs_n"}   # row -> metrics/stimuli.json baselines key


@dataclass
class Outputs:
    """Stage outputs under `metrics` (JSON) and `plots` (CSV); each file is read once, an absent optional one warns
    once and reads as None, an absent required one or an unreadable one is a DataError naming it."""
    metrics: Path
    plots: Path
    _cache: dict = field(default_factory=dict, repr=False)

    def json(self, rel: str, required: bool = False, why: str = "its rows") -> dict | None:
        return self._read(self.metrics / rel, required, why, lambda path: json.loads(path.read_text()))

    def csv(self, rel: str, columns=(), required: bool = False, why: str = "its figure") -> pd.DataFrame | None:
        frame = self._read(self.plots / rel, required, why, pd.read_csv)
        missing = [c for c in columns if frame is not None and c not in frame.columns]
        if missing:
            has = ", ".join(map(str, frame.columns))
            raise DataError(f"{self.plots / rel}: missing column {missing[0]} (has {has})")
        return frame

    def _read(self, path: Path, required: bool, why: str, reader):
        if path not in self._cache:
            if path.exists():
                try:
                    self._cache[path] = reader(path)
                except (ValueError, UnicodeDecodeError) as err:       # JSON, CSV parser and decoding errors
                    raise DataError(f"{path}: not readable ({str(err).splitlines()[0]})") from None
            elif required:
                raise DataError(f"{path}: not found (run its stage: `dvc repro`, or `dvc pull`)")
            else:
                log.warning("%s: not found, %s skipped", path, why)
                self._cache[path] = None
        return self._cache[path]


@contextlib.contextmanager
def reading(where):
    """Turn a missing key or a wrongly typed value met while reading the file `where` into a one-line DataError."""
    try:
        yield
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{where}: missing or malformed entry ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class Cell:
    """One table entry: `text` is shown; `stats` (name -> number) are written to summary.json under the row's key."""
    text: str
    stats: dict = field(default_factory=dict)


EMPTY = Cell("—")


def ci(m: dict, key: str, name: str | None = None, pct: bool = False, **more) -> Cell:
    """`m[key]` with its interval (`key_low`/`key_high`, or `low`/`high`), 3 decimals or whole percent, "—" when
    null (NaN in the stage); `more` are extra numbers shown after it (e.g. layer=12)."""
    name = name or key
    stem = key.rsplit("_", 1)[0]   # nested_auroc -> nested_low / nested_high (never the peak's low / high)
    lo, hi = next(((f"{k}_low", f"{k}_high") for k in (key, stem) if f"{k}_low" in m), ("low", "high"))
    v, low, high = m[key], m[lo], m[hi]
    if v is None:                       # no items to average (e.g. no pair whose source the model answers right)
        text = "—"
    else:
        text = f"{100 * v:.0f} % [{100 * low:.0f}, {100 * high:.0f}]" if pct else f"{v:.3f} [{low:.3f}, {high:.3f}]"
    return Cell(text + "".join(f", {k} {x}" for k, x in more.items()),
                {name: v, f"{name}_low": low, f"{name}_high": high, **more})


def number(value, name: str, fmt: str = "{:.3f}", p: float | None = None, **more) -> Cell:
    """A number (None shown as "—"), with its permutation p and extra numbers when given."""
    text = "—" if value is None else fmt.format(value)
    text += "" if p is None else f" (p {p:.3g})"
    return Cell(text + "".join(f", {k} {x}" for k, x in more.items()),
                {name: value, **({} if p is None else {"p": p}), **more})


def depth(m: dict) -> Cell:
    return Cell(f"{100 * m['peak_depth']:.0f} % (layer {m['peak_layer']})",
                {"depth": m["peak_depth"], "layer": m["peak_layer"]})


def saturation(m: dict) -> Cell:
    layer, d = m["saturation_layer"], m["saturation_depth"]
    text = "not reached" if layer is None else f"layer {layer} (depth {100 * d:.0f} %)"
    return Cell(text, {"layer": layer, "depth": d})


def baseline_text(baselines: dict | None, task: str) -> Cell:
    """Every text-only baseline of one stimuli-stage task (length, polarity, bag of words, style): AUROC, interval.
    Its stats keys are complete (`text_only/<task>.<method>.auroc`): the same for every row that shows it."""
    found = (baselines or {}).get(task) or {}
    parts, stats = [], {}
    for method in sorted(k for k, m in found.items() if isinstance(m, dict) and {"auroc", "low", "high"} <= set(m)):
        m = found[method]
        parts.append(f"{method} {m['auroc']:.2f} [{m['low']:.2f}, {m['high']:.2f}]")
        stats.update({f"text_only/{task}.{method}.auroc{s}": m[k] for s, k in (("", "auroc"), ("_low", "low"),
                                                                              ("_high", "high"))})
    return Cell("; ".join(parts) or "—", stats)


def same_splits(stimuli: dict | None, probes: dict[str, dict]) -> dict[str, bool]:
    """Per probe task, whether every model's probes scored the folds the text-only baselines did (the fold digests
    of metrics/stimuli.json and each probes.json, `stats.folds_digest`); a task either side lacks is left out."""
    theirs = (stimuli or {}).get("folds") or {}
    out = {}
    for task, digest in theirs.items():
        ours = [p.get("folds", {}).get(task) for p in probes.values()]
        if ours and all(d is not None for d in ours):
            out[task] = all(d == digest for d in ours)
            if not out[task]:
                log.warning("%s: the probes' folds differ from the text-only baselines' (screen.seed vs probes.seed, "
                            "or folds): the baseline column is marked 'other splits'", task)
    return out


# ------------------------------------------------------------------ rows: (key, label, Cell) for one model


def headline_probe(t: dict, site: str) -> Cell:
    """A headline probe cell: the peak AUROC with its interval, the nested estimate with ITS OWN interval, and, when
    the probes stage ran its text baselines, the best one and the nested margin over it with its paired interval
    (transfer: the layer chosen on Set A stands in for the nested probe)."""
    m = t[site]
    cell = ci(m, "auroc")
    text, found = cell.text, dict(cell.stats)
    if "nested_auroc" in m:
        nested = ci(m, "nested_auroc", "nested")
        text += f"; nested {nested.text}"
        found.update(nested.stats)
    if "best_baseline" in t:
        text += (f"; best text baseline {t['best_baseline']} {t['best_baseline_auroc']:.3f}, "
                 f"{'nested' if 'nested_auroc' in m else 'probe'} - baseline {m['margin']:+.3f} "
                 f"[{m['margin_low']:+.3f}, {m['margin_high']:+.3f}]")
        found.update(baseline_auroc=t["best_baseline_auroc"], margin=m["margin"], margin_low=m["margin_low"],
                     margin_high=m["margin_high"])
    return Cell(text, found)


def probe_rows(probes: dict, site: str, thr: str, suffix: str = "") -> list[tuple]:
    """The published study's probe rows for one model at one site."""
    rows = [("set_a", "Set A (expressive), 8-class peak AUROC", headline_probe(probes["set_a"], site)),
            ("set_b", "Set B (clinical vignettes), 8-class peak AUROC", headline_probe(probes["set_b"], site)),
            ("transfer", "transfer: fit on Set A, scored on Set B, peak AUROC", headline_probe(probes["transfer"],
                                                                                              site)),
            ("b_vs_n", "B vs N (grouped by pair), peak AUROC", headline_probe(probes["b_vs_n"], site)),
            ("peak_depth", "depth of the Set B peak layer, (l+1)/L", depth(probes["set_b"][site])),
            ("saturation", f"first layer with B-vs-N AUROC >= {thr}", saturation(probes["b_vs_n"][site]))]
    return [(f"{site}.{key}", label + suffix, cell) for key, label, cell in rows]


def mdl_cell(m: dict) -> Cell:
    """MDL compression, mean over the transmission orders with their range (the code depends on the order)."""
    if "compression_min" not in m:
        return number(m["compression"], "compression", "{:.2f}")
    return Cell(f"{m['compression']:.2f} ({m['compression_min']:.2f} - {m['compression_max']:.2f}, "
                f"{m.get('n_orders', '?')} orders)",
                {"compression": m["compression"], "compression_min": m["compression_min"],
                 "compression_max": m["compression_max"]})


def control_rows(probes: dict, site: str) -> list[tuple]:
    """The controls of the probe rows: random-init model, max-over-layers permutation p, nested estimate, MDL
    compression (trained and random-init), zero-shot prompt, Set C."""
    rows, ri, zs = [], probes.get("random_init"), probes.get("zero_shot", {})
    for task, name in (("set_a", "Set A"), ("set_b", "Set B"), ("transfer", "transfer A->B"), ("b_vs_n", "B vs N")):
        m = probes[task][site]
        if ri:
            rows.append((f"{task}.random_init", f"{name}: random-init model, peak AUROC", ci(ri[task][site], "auroc")))
        if m.get("p_max_layers") is not None:
            rows.append((f"{task}.p_max_layers", f"{name}: permutation p, max over layers (ridge null)",
                         number(m["p_max_layers"], "p", "{:.3g}")))
        if "nested_auroc" in m:
            rows.append((f"{task}.nested", f"{name}: nested estimate (layer chosen inside training folds)",
                         ci(m, "nested_auroc", "auroc")))
        for label, mdl in (("trained", probes.get("mdl", {})), ("random-init", (ri or {}).get("mdl", {}))):
            if task in mdl:
                rows.append((f"{task}.mdl_{label.replace('-', '_')}", f"{name}: MDL compression (online code vs "
                             f"uniform), {label}, layer {mdl[task]['layer']}: mean (range) over transmission orders",
                             mdl_cell(mdl[task])))
        if task in zs:
            rows.append((f"{task}.zero_shot", f"{name}: zero-shot prompt, peak AUROC", ci(zs[task][site], "auroc")))
    if ri:
        rows += [("peak_depth.random_init", "Set B peak depth: random-init model", depth(ri["set_b"][site])),
                 ("saturation.random_init", "B-vs-N saturation: random-init model", saturation(ri["b_vs_n"][site]))]
    if site in probes.get("set_c", {}):
        set_c = probes["set_c"][site]
        rows += [("saturation.set_c", "Set C (vivid neutral texts) called emotional by the B-vs-N probe",
                  ci(set_c, "fraction_emotional", "fraction")),
                 ("saturation.set_n", "Set N called emotional (out of fold), same layer",
                  number(set_c["n_fraction_emotional"], "fraction"))]
    return [(f"{site}.{key}", label, cell) for key, label, cell in rows]


PROBE_HEADER = ("task", "AUROC [95% CI] (layer)", "null 95th pct", "best text baseline (probes stage)",
                "nested - baseline [95% CI]", "p (max-over-layers null)", "nested [95% CI]")
PROBE_TASKS = (("set_a", "Set A, 8-class"), ("set_b", "Set B, 8-class"),
               ("transfer", "transfer A->B (layer chosen on Set A)"), ("b_vs_n", "B vs N (grouped by pair)"))


def probe_table(model: str, probes: dict, site: str, flat: dict) -> list[list[str]]:
    """One model's probe headline rows (the issue-12 layout); numbers go to `flat` as `<model>/probe.<task>.<name>`."""
    body = []
    for task, label in PROBE_TASKS:
        t, m = probes[task], probes[task][site]
        cells = [label, f"{m['auroc']:.3f} [{m['low']:.3f}, {m['high']:.3f}] ({m['peak_layer']})"]
        keys = {"auroc": m["auroc"], "low": m["low"], "high": m["high"], "layer": m["peak_layer"],
                "null_p95": m.get("null_p95"), "p_max_layers": m.get("p_max_layers")}
        cells.append("—" if m.get("null_p95") is None else f"{m['null_p95']:.3f}")
        if "best_baseline" in t:
            cells += [f"{t['best_baseline']} {t['best_baseline_auroc']:.3f}",
                      f"{m['margin']:+.3f} [{m['margin_low']:+.3f}, {m['margin_high']:+.3f}]"]
            keys.update(best_baseline_auroc=t["best_baseline_auroc"], margin=m["margin"],
                        margin_low=m["margin_low"], margin_high=m["margin_high"])
        else:
            cells += ["—", "—"]
        cells.append("—" if m.get("p_max_layers") is None else f"{m['p_max_layers']:.3g}")
        if "nested_auroc" in m:
            cells.append(f"{m['nested_auroc']:.3f} [{m['nested_low']:.3f}, {m['nested_high']:.3f}]")
            keys.update(nested=m["nested_auroc"], nested_low=m["nested_low"], nested_high=m["nested_high"])
        else:
            cells.append("—")
        flat.update({f"{model}/probe.{task}.{k}": v for k, v in keys.items()})
        body.append(cells)
    return body


def _vs(m: dict, key: str, control: str, baseline: float | None = None) -> Cell:
    """`m[key]` with its interval, the control's value and interval beside it (and the baseline, when given)."""
    cell, other = ci(m, key), ci(m, control)
    text = f"{cell.text} (control {other.text}" + ("" if baseline is None else f", baseline {baseline:g}") + ")"
    return Cell(text, {**cell.stats, **{f"control_{k}" if not k.startswith("control") else k: v
                                        for k, v in other.stats.items()},
                       **({} if baseline is None else {"baseline": baseline})})


def patching_rows(patching: dict) -> tuple[list, list]:
    """(headline, controls) rows of the patching stage, every causal number beside its control and baseline.
    Headline: the h curve's first layer where recovery exceeds 0.5 (patching h late copies the source by
    construction), its two-way bootstrap range, and the recovery there beside the same-emotion control; controls:
    the best a / m cell (recovery minus control, max-statistic p), answer transfer and flip rate at that cell, the
    denominator (whether its interval covers 0) and the pair count."""
    if not patching or "denominator" not in patching:
        return [], []
    rows, controls = [], []
    h = patching.get("h")
    if h:
        first = h.get("first_layer")
        low, high = h.get("first_layer_low"), h.get("first_layer_high")
        shown = lambda x: "none" if x is None else f"{x:g}"
        text = (f"layer {shown(first)} [{shown(low)}, {shown(high)}]; at layer {h['peak_layer']} recovery "
                f"{_vs(h, 'recovery', 'control_recovery', 0.0).text}")
        rows.append(("h.patching_recovery", "patching h: first layer where recovery exceeds 0.5 [bootstrap range]; "
                     "best layer recovery vs same-emotion control and baseline",
                     Cell(text, {"first_layer": first, "first_layer_low": low, "first_layer_high": high,
                                 "layer": h["peak_layer"], **_vs(h, "recovery", "control_recovery", 0.0).stats})))
    best = patching.get("best")
    if best:
        cell = _vs(best, "recovery_minus_control", "control_recovery", 0.0)
        where = f"{best['site']}{best['layer']}"
        controls.append(("patching.best", "patching a / m: best cell, recovery minus control "
                         "(control recovery, baseline; max-statistic p over cells)",
                         Cell(f"{where}: {ci(best, 'recovery_minus_control').text} (recovery "
                              f"{ci(best, 'recovery').text}, control {ci(best, 'control_recovery').text}, baseline 0;"
                              f" p_max {best['p_max']:.3g})",
                              {**cell.stats, "recovery": best["recovery"], "p_max": best["p_max"],
                               "layer": best["layer"]})))
        base = patching["baseline"]
        controls.append(("patching.best.transfer", "patching a / m best cell: answer transfer (patched top-1 = "
                         "source's clean top-1) vs control and unpatched baseline",
                         _vs(best, "transfer", "control_transfer", round(base["baseline_transfer"], 3))))
        controls.append(("patching.best.flip", "patching a / m best cell: flip rate among pairs not already "
                         "answering the source emotion, vs control (baseline 0)",
                         _vs(best, "flip", "control_flip", 0.0)))
    d = patching["denominator"]
    controls.append(("patching.denominator", "patching: denominator mean(LD_source - LD_target)"
                     + (" (interval covers 0: recovery undefined)" if d["covers_zero"] else ""),
                     ci(d, "denominator")))
    controls.append(("patching.pairs", "patching: target-source pairs (every item a target once)",
                     number(patching["n_pairs"], "n", "{:d}")))
    return rows, controls


def behaviour_rows(patching: dict) -> list[tuple]:
    """The model's own top-1 answer among the 8 emotion words (whole-word scores, calibrated; raw beside it), per
    stimulus set (from the patching stage)."""
    rows = []
    for name, b in sorted(patching.get("behaviour", {}).items()):
        rows.append((f"behaviour.{name}", f"Set {name}: the model's own answer is right (calibrated accuracy, "
                     "chance 1/8)", ci(b, "accuracy", pct=True)))
        if "raw_accuracy" in b:
            rows.append((f"behaviour.{name}.raw", f"Set {name}: the same without calibration (raw whole-word scores)",
                         ci(b, "raw_accuracy", "accuracy", pct=True)))
    return rows


AGREEMENT_SET, AGREEMENT_PROBE = "B", "probes/confusion/set_b_h.csv"


def agreement_rows(outputs: Outputs, model: str, n_boot: int = 1000, seed: int = 0) -> list[tuple]:
    """Per item of Set B: does the model's own calibrated answer (patching stage, answers.csv) equal the headline
    probe's out-of-fold prediction (site h, its peak layer, first repeat)? Agreement with Cohen's kappa beside it
    (two predictors that both favour one emotion agree by chance); items present in both files only."""
    answers = outputs.csv(f"{model}/answers.csv", ("set", "id", "answer"), why="the answer-probe agreement row")
    probe = outputs.csv(f"{model}/{AGREEMENT_PROBE}", ("id", "predicted"), why="the answer-probe agreement row")
    if answers is None or probe is None:
        return []
    answers = answers[answers["set"].astype(str) == AGREEMENT_SET]
    both = answers.merge(probe, on="id")
    if both.empty:
        raise DataError(f"{outputs.plots / model / 'answers.csv'}: no Set {AGREEMENT_SET} id in common with "
                        f"{outputs.plots / model / AGREEMENT_PROBE}")
    a = stats.agreement(both["answer"], both["predicted"], n_boot, seed)
    text = (f"{100 * a['agreement']:.1f}% [{100 * a['agreement_low']:.1f}, {100 * a['agreement_high']:.1f}], "
            f"kappa {a['kappa']:.2f} [{a['kappa_low']:.2f}, {a['kappa_high']:.2f}], chance {100 * a['chance']:.1f}%, "
            f"p {a['p']:.3g}")
    return [(f"behaviour.{AGREEMENT_SET}.probe_agreement", f"Set {AGREEMENT_SET}: the model's answer equals the site-h probe's "
             "out-of-fold prediction (agreement, Cohen's kappa, chance agreement, permutation p)", Cell(text, a))]


def positions_rows(positions: dict) -> list[tuple]:
    """B -> N patching of h at one text position at a time: the peak cell with its interval, and the denominator
    (clean B minus N logit difference), flagged when its interval covers 0 (then no recovery is interpretable)."""
    if not positions:
        return []
    peak = positions["peak"]
    flag = "; denominator interval covers 0: not interpretable" if positions["denominator_covers_0"] else ""
    return [("positions.peak", f"positions: largest recovery of the B item's emotion, h patched into its N twin at "
             f"one text position ({positions['n_pairs']} pairs, {positions['bins']} bins)",
             Cell(f"{ci(peak, 'recovery').text} at layer {peak['layer']}, position {peak['position']:.2f} "
                  f"(LD denominator {ci(positions, 'denominator').text}{flag})",
                  {**ci(peak, "recovery").stats, "layer": peak["layer"], "position": peak["position"],
                   **ci(positions, "denominator").stats}))]


def knockout_rows(knockout: dict) -> list[tuple]:
    """Per ablated site and ablation: the layers whose ablation moves the answer distribution (KL) more than
    matched random controls of the same displacement norm (sign-flip test over stimuli, BH over layers x sites x
    ablations), and the largest KL beside its control."""
    rows = []
    for site in (s for s in SITES if s in knockout):
        for op, o in knockout[site].items():
            rows.append((f"knockout.{site}.{op}.critical",
                         f"knockout {site} ({op}): layers where KL exceeds matched same-norm controls "
                         f"(BH q < {knockout.get('fdr', 0.05):g})",
                         Cell(o["critical_kl"].replace(",", ", ") or "none", {"n": o["n_critical_kl"]})))
            rows.append((f"knockout.{site}.{op}.peak", f"knockout {site} ({op}): largest KL minus control of one layer "
                         "(KL vs matched control), nats",
                         Cell(f"{ci(o, 'kl_minus_control').text}, layer {o['peak_layer']} (KL {ci(o, 'kl').text}, "
                              f"control {ci(o, 'control_kl').text})",
                              {**ci(o, "kl_minus_control").stats, "kl": o["kl"], "control_kl": o["control_kl"],
                               "layer": o["peak_layer"]})))
    return rows


def head_rows(heads: dict) -> list[tuple]:
    """Heads ranked on one half of the stimuli and tested on the other against same-norm random shifts (BH over the
    tested heads): the survivors, and the first-ranked head's drop beside its control; flagged when the model's
    own-emotion accuracy interval covers chance (head effects then carry no information)."""
    if "n_tested" not in heads:
        return []
    chance = " (own-emotion accuracy at chance: no information)" if heads.get("at_chance") else ""
    rows = [("heads.survivors", f"heads: tested on the held-out half, survive BH vs matched controls{chance}",
             Cell(f"{heads['survivors'].replace(',', ', ') or 'none'} ({heads['n_survivors']} of "
                  f"{heads['n_tested']} tested)", {"n": heads["n_survivors"], "of": heads["n_tested"],
                                                   "at_chance": heads.get("at_chance")}))]
    top = heads.get("top", {}).get("01")
    if top:
        cell = _vs(top, "drop", "control_drop")
        rows.append(("heads.top1", f"heads: first-ranked head, held-out drop in own-emotion score vs control{chance}",
                     Cell(f"{top['name']}: {cell.text}, q {top['q']:.3g}",
                          {**cell.stats, "layer": top["layer"], "head": top["head"], "q": top["q"]})))
    return rows


def geometry_rows(geometry: dict) -> list[tuple]:
    """Silhouette and wheel agreement at each set's highest-silhouette layer (site h), with permutation p."""
    rows = []
    for name in sorted(k for k, v in geometry.items() if isinstance(v, dict) and "silhouette" in v):
        g = geometry[name]
        rows += [(f"geometry.{name}.silhouette", f"Set {name}: silhouette of the 8 emotions at its best layer",
                  number(g["silhouette"], "silhouette", p=g["silhouette_p"], layer=g["best_layer"])),
                 (f"geometry.{name}.wheel", f"Set {name}: Spearman of centroid distance with wheel steps",
                  number(g["wheel_spearman"], "spearman", p=g["wheel_p"])),
                 (f"geometry.{name}.adjacent_minus_opposite", f"Set {name}: centroid cosine, adjacent minus opposite",
                  number(g["adjacent_minus_opposite"], "value", p=g["adjacent_minus_opposite_p"]))]
    return rows


def attention_rows(attention: dict) -> list[tuple]:
    """Attention of the extraction position on the stimulus text per set, as a share and as a ratio to its uniform
    expectation (1 = no preference; raw shares grow with text length), its peak layer, and the set differences with
    the number of layers that differ after BH."""
    sets = sorted(attention.get("sets", {}).items())
    rows = [(f"attention.{name}.text_share", f"Set {name}: attention on the stimulus text (mean over layers, heads)",
             ci(s["text_share"], "mean", "share")) for name, s in sets]
    rows += [(f"attention.{name}.text_ratio", f"Set {name}: text share over its uniform expectation (1 = none), "
              "mean over layers; and at its peak layer", Cell(
                  f"{ci(s['text_ratio'], 'mean').text}; peak {ci(s['text_ratio_peak'], 'mean').text}, "
                  f"layer {s['text_ratio_peak']['layer']}",
                  {**ci(s["text_ratio"], "mean", "ratio").stats, **ci(s["text_ratio_peak"], "mean", "peak").stats,
                   "layer": s["text_ratio_peak"]["layer"]})) for name, s in sets if "text_ratio" in s]
    if "compare" in attention:
        c = attention["compare"]
        rows.append(("attention.text_share_diff", f"text share, Set {c['set_a']} minus Set {c['set_b']}",
                     ci(c["text_share_diff"], "diff")))
        if "text_ratio_diff" in c:
            r = c["text_ratio_diff"]
            cell = ci(r, "diff")
            rows.append(("attention.text_ratio_diff", f"text ratio to uniform, Set {c['set_a']} minus Set "
                         f"{c['set_b']} (permutation p); layers where {c['set_a']} / {c['set_b']} is higher (BH q < 0.05)",
                         Cell(f"{cell.text} (p {r['p']:.3g}); layers {c['layers_a_higher_bh']} / "
                              f"{c['layers_b_higher_bh']}",
                              {**cell.stats, "p": r["p"], "layers_a_higher": c["layers_a_higher_bh"],
                               "layers_b_higher": c["layers_b_higher_bh"]})))
    return rows


# ------------------------------------------------------------------ tables


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    cells: dict                 # model -> Cell
    extra: tuple = ()           # Cells of the columns after the model columns


def pivot(per_model: dict[str, list[tuple]]) -> list[Row]:
    """Rows in first-seen order with one cell per model (EMPTY where a model lacks the row)."""
    labels = {}
    for rows in per_model.values():
        for key, label, _ in rows:
            labels.setdefault(key, label)
    lookup = {m: {k: c for k, _, c in rows} for m, rows in per_model.items()}
    return [Row(k, label, {m: lookup[m].get(k, EMPTY) for m in per_model}) for k, label in labels.items()]


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, body)])


@dataclass
class Summary:
    """Markdown tables (title, header, body rows, note) and the flat metrics `{key: number}` behind them."""
    models: tuple[str, ...]
    tables: list = field(default_factory=list)
    flat: dict = field(default_factory=dict)

    def add(self, title: str, rows: list[Row], extra_header: tuple = (), note: str = "") -> None:
        """A table with one column per model (then `extra_header` columns); every cell's numbers go to `flat`
        as `<model>/<row key>.<name>` (extra columns carry complete keys)."""
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
               "intervals over stimuli (or pairs); p are permutation p-values; layers count from 0 and depth is "
               "(layer+1)/L. The published column is reference text copied from DESIGN.md §1, not a result of this "
               "pipeline.", ""]
        for title, header, body, note in self.tables:
            out += [f"## {title}", "", markdown_table(header, body), ""] + ([note, ""] if note else [])
        return "\n".join(out).rstrip() + "\n"


def earliest_cell(cell: dict | None, n_layers: int | None) -> Cell:
    """`steering_summary.earliest` as 'h21 (depth 0.73), dose 1: 73% vs random 11%', or 'none' when no cell clears."""
    if not cell:
        return Cell("none in the grid", {})
    depth = f" (depth {(cell['layer'] + 1) / n_layers:.2f})" if n_layers else ""
    return Cell(f"h{cell['layer']}{depth}, dose {cell['dose']:g}: {ci(cell, 'share', pct=True).text} vs random "
                f"{ci(cell, 'random_share', pct=True).text}",
                {"layer": cell["layer"], "dose": cell["dose"], **ci(cell, "share").stats})


def steering_rows(steering: dict) -> list[tuple]:
    """Steering the neutral set with d_e: the best layer and dose with its max-statistic p, the share steered to e
    beside the same-norm random directions, the specificity diagonal against the off-diagonal, and against the
    grain (Set B items moved to another emotion e) beside its random control."""
    if not steering:
        return []
    best, spec, grain = steering["best"], steering["specificity"], steering["grain"]
    return [("steering.best", f"steering: best layer and dose (alpha x median norm) of d_e on {steering['n']} Set "
             f"{steering['set']} items, by the mean change of e's score minus random (max-statistic p over the "
             "layer x dose grid)",
             number(best["delta_minus_random"], "delta_minus_random", p=best["p_max"], layer=best["layer"],
                    dose=best["dose"], cells=best["n_cells"])),
            ("steering.earliest", "steering: shallowest layer (smallest dose) whose share steered to e beats random by "
             "more than 0.5 with its whole interval",
             earliest_cell(steering.get("earliest"), steering.get("n_layers"))),
            ("steering.share", "steering: share of items whose answer becomes e (best cell), d_e vs same-norm random",
             Cell(f"{ci(best, 'share', pct=True).text} vs random {ci(best, 'random_share', pct=True).text}",
                  {**ci(best, "share").stats, **ci(best, "random_share").stats})),
            ("steering.specificity", "steering: specificity, mean change of e's own score (diagonal) minus the other "
             "seven (off-diagonal), best cell",
             Cell(f"{ci(spec, 'diagonal_minus_off').text} (diagonal {spec['diagonal']:.3f})",
                  {**ci(spec, "diagonal_minus_off").stats, "diagonal": spec["diagonal"]})),
            ("steering.grain", f"steering against the grain: Set {steering['grain_set']} items moved to another "
             "emotion e, d_e vs same-norm random (sign-flip p on the LD change)",
             Cell(f"{ci(grain, 'moved', pct=True).text} vs random {ci(grain, 'random_moved', pct=True).text} "
                  f"(p {grain['p']:.3g})", {**ci(grain, "moved").stats, **ci(grain, "random_moved").stats,
                                            "p": grain["p"]}))] + steering_extra_rows(steering)


def steering_extra_rows(steering: dict) -> list[tuple]:
    """Directional ablation (first ablation layer), steered generation and the valence plane, each when present."""
    rows = []
    ablation = (steering.get("ablation") or {}).get("per_layer") or {}
    if ablation:
        layer, a = next(iter(ablation.items()))
        nxt, last = a["next_layer"], a["last_layer"]
        rows.append(("steering.ablation", f"directional ablation: the {a['rank']}-dim emotion subspace projected out "
                     "of h[l] at every position; refit 8-class AUROC drop at the next / last layer minus the drop "
                     "under a random subspace of matched removed norm",
                     Cell(f"h{layer}: {ci(nxt, 'drop_minus_random').text} / {ci(last, 'drop_minus_random').text} "
                          f"(removed norm {a['removed_norm']:.2f} vs {a['random_removed_norm']:.2f})",
                          {"layer": int(layer), **{f"next_{k}": v for k, v in ci(nxt, "drop_minus_random").stats.items()},
                           **{f"last_{k}": v for k, v in ci(last, "drop_minus_random").stats.items()},
                           "removed_norm": a["removed_norm"], "random_removed_norm": a["random_removed_norm"]})))
    gen = steering.get("generation")
    if gen:
        rows.append(("steering.generation", "steered generation: share of the continuation's words in e's NRC "
                     "category, d_e vs same-norm random vs unsteered (sign-flip p)",
                     Cell(f"{ci(gen, 'steered').text} vs {gen['random']:.2f} vs {gen['unsteered']:.2f} "
                          f"(p {gen['p_steered_vs_random']:.2g}; h{gen['layer']}, dose {gen['dose']:g})",
                          {**ci(gen, "steered").stats, "random": gen["random"], "unsteered": gen["unsteered"],
                           "p": gen["p_steered_vs_random"]})))
    valence = (steering.get("affect") or {}).get("valence")
    if valence:
        rows.append(("steering.valence", "valence: |r| of the published ratings with the best of PC1/PC2 of the eight "
                     "d_e at the best layer (exact p over 8! orders)",
                     Cell(f"PC{valence['pc']}, r {valence['signed_r']:+.2f} (p {valence['p']:.2g})",
                          {"pc": valence["pc"], "r": valence["r"], "p": valence["p"]})))
    return rows


def build_summary(outputs: Outputs, models, threshold: float) -> Summary:
    """The summary of `models` (params `run.analyze`) from their stage outputs. probes.json is required; the text-only
    baselines, interventions, geometry, attention and CKA are added when present (a warning when not).
    `threshold` is params `probes.saturation`, used only in a label."""
    models, thr = tuple(models), f"{threshold:g}"
    rows = {}
    for m in models:
        probes = outputs.json(f"{m}/probes.json", required=True)
        found = {name: outputs.json(f"{m}/{name}.json", why=f"its {name} rows") or {}
                 for name in ("patching", "knockout", "heads", "positions", "steering", "geometry", "attention")}
        with reading(outputs.metrics / m / "probes.json"):
            r = {"headline": probe_rows(probes, HEADLINE_SITE, thr), "controls": control_rows(probes, HEADLINE_SITE),
                 "sites": [x for s in SITES if s in probes["set_b"] for x in probe_rows(probes, s, thr, f" ({s})")]}
        r["causal"], r["extra"] = [], []
        for name, build, into in (("patching", behaviour_rows, "causal"), ("knockout", knockout_rows, "causal"),
                                  ("heads", head_rows, "causal"), ("positions", positions_rows, "causal"),
                                  ("steering", steering_rows, "causal"),
                                  ("geometry", geometry_rows, "extra"), ("attention", attention_rows, "extra")):
            with reading(outputs.metrics / m / f"{name}.json"):
                r[into] += build(found[name])
        if found["patching"]:     # answers.csv is the patching stage's too
            r["causal"] += agreement_rows(outputs, m)
        with reading(outputs.metrics / m / "patching.json"):
            patch, patch_controls = patching_rows(found["patching"])
        r["headline"] += patch
        r["controls"] += patch_controls
        rows[m] = r
    stimuli = outputs.json("stimuli.json", why="the text-only baseline column")
    baselines = stimuli.get("baselines") if isinstance(stimuli, dict) else None

    summary = Summary(models)
    matched = same_splits(stimuli if isinstance(stimuli, dict) else None,
                          {m: outputs.json(f"{m}/probes.json", required=True) for m in models})
    summary.flat.update({f"same_splits/{task}": float(ok) for task, ok in matched.items()})
    headline = []
    for row in pivot({m: rows[m]["headline"] for m in models}):
        base = row.key.split(".")[1]
        text = baseline_text(baselines, BASELINE_TASKS[base]) if base in BASELINE_TASKS else EMPTY
        if matched.get(PROBE_TASK.get(base)) is False:
            text = Cell(f"{text.text} (other splits)", text.stats)
        extra = (text, Cell(PUBLISHED.get(base, "—")))
        headline.append(Row(row.key, row.label, row.cells, extra))
    summary.add(f"Headline (site {HEADLINE_SITE}: residual stream)", headline,
                ("text-only baseline AUROC, same task and splits", PUBLISHED_LABEL),
                "Controls for these rows are in the next table. Text-only baselines come from the stimuli stage "
                "(metrics/stimuli.json); transfer has none.")
    for key, title in (("controls", f"Controls (site {HEADLINE_SITE})"),
                       ("sites", "Every site (h: residual stream, a: attention output, m: MLP output)"),
                       ("causal", "Behaviour, knockout and single heads (interventions at the extraction position)"),
                       ("extra", "Geometry (site h) and attention of the extraction position")):
        summary.add(title, pivot({m: rows[m][key] for m in models}))
    cka = outputs.json("cka.json", why="the CKA table")
    if cka:
        with reading(outputs.metrics / "cka.json"):
            summary.tables.append(("Linear CKA between models (site h, matched relative depths)",
                                   ["model pair", "mean CKA at matched depths", "debiased [half-sample 95% CI]",
                                    "debiased minus the random-init pair [CI]", "best-aligned layers"],
                                   cka_body(cka, summary.flat), ""))
    for m in models:
        probes = outputs.json(f"{m}/probes.json", required=True)
        with reading(outputs.metrics / m / "probes.json"):
            summary.tables.append((f"Probes, {m} (site {HEADLINE_SITE})", list(PROBE_HEADER),
                                   probe_table(m, probes, HEADLINE_SITE, summary.flat),
                                   "Repeated grouped CV; interval: stimulus (pair) bootstrap with one repeat per "
                                   "resample; null: label permutations of a closed-form ridge probe on the same "
                                   "splits; baselines, nested estimate and margin on repeats 1..R-1 (repeat "
                                   "0 is the split the sets were checked on); margin: nested probe (transfer: "
                                   "layer chosen on Set A) minus the best baseline, paired bootstrap, same "
                                   "resamples and repeats."))
    return summary


def cka_body(cka: dict, flat: dict) -> list[list[str]]:
    """One row per model pair of the cka stage; its numbers go to `flat` as `cka/<a>__<b>.<name>`. Debiased CKA with
    its half-sample interval, and minus the pair of the two models' random-init controls (the reference that can
    fail) where the run has both."""
    body = []
    for name, p in sorted(cka.get("pairs", {}).items()):
        flat.update({f"cka/{name}.mean_matched": p["mean_matched_cka"],
                     f"cka/{name}.mean_matched_debiased": p["mean_matched_cka_debiased"]})
        deb = "mean_matched_cka_debiased"
        text = f"{p[deb]:.3f}"
        if f"{deb}_low" in p:
            text += f" [{p[f'{deb}_low']:.3f}, {p[f'{deb}_high']:.3f}]"
            flat.update({f"cka/{name}.mean_matched_debiased_low": p[f"{deb}_low"],
                         f"cka/{name}.mean_matched_debiased_high": p[f"{deb}_high"]})
        ref = "mean_matched_debiased_minus_reference"
        versus = "—"
        if ref in p:
            versus = f"{p[ref]:.3f} [{p[f'{ref}_low']:.3f}, {p[f'{ref}_high']:.3f}] (pair {p['mean_matched_reference_debiased']:.3f})"
            flat.update({f"cka/{name}.debiased_minus_random_init": p[ref],
                         f"cka/{name}.debiased_minus_random_init_low": p[f"{ref}_low"],
                         f"cka/{name}.debiased_minus_random_init_high": p[f"{ref}_high"],
                         f"cka/{name}.random_init_pair_debiased": p["mean_matched_reference_debiased"]})
        body.append([f"{p['model_a']} vs {p['model_b']}", f"{p['mean_matched_cka']:.3f}", text, versus,
                     f"{p['best_layer_a']} and {p['best_layer_b']} (CKA {p['best_cka']:.3f})"])
    return body
