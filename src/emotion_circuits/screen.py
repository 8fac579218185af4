"""The `stimuli` screen: explicit emotion words, NRC density, VADER polarity, balance, lengths, B/N pair lengths and
text-only shortcut baselines. Sets B, N and C must contain no word of the project's explicit lexicon, and every B/N
pair must match in length; otherwise `ScreenError` (one line naming the items and words).

Issue 23 adds: display cues (lexicon section `display_cues`, behaviour that displays an emotion) and the style
checks (style.py: colons, opening word, present tense, quote style per emotion), each recorded or failing by its
policy (`screen.display_cues`, `screen.style_checks`: warn | fail); a per-emotion word-skew report (words in several
items of one emotion and in no other: the non-emotion giveaways); counts per emotion x writer and x script and
scripts told under two labels; the blind-ratings check (ratings.py; fails whenever the ratings file exists and an
item falls short); and the style-only baseline beside the others.

Every breach is a *violation* of a set (explicit words, pair lengths, display cues, style breaches, blind readings).
`screen.on_violation` (fail | warn, one for all sets or per set with a `default`) decides what a set's violations
do: under `fail` a violation of a failing check stops the stage in one line naming file:line and item; under `warn`
it is recorded in `metrics/stimuli.json` (`violations`) and the pipeline goes on, so a user's own set can enter the
pipeline before it is clean. A check's own policy still applies: display cues and style breaches fail only where
`screen.display_cues` / `screen.style_checks` say fail; explicit words, pair lengths and blind readings always do. A
violation of several sets (a B/N pair, a script told in A and B) fails if any of them is `fail`. The authored sets
keep `fail`.

The baselines use the probes' protocol (stats.splits, grouped by `pair` for B vs N so twins share a fold;
stats.cv_proba; stats.bootstrap_auroc over groups), so their AUROCs are directly comparable with a probe's: how much
of a task a classifier gets from text length, polarity or word choice. The probes stage repeats these baselines (and
TF-IDF and input-embedding ones) on its own repeated splits, beside each probe.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from . import stats
from . import ratings as ratings_mod
from .config import EMOTIONS, ConfigError
from .io import DataError
from .seeds import derive, resolve, splits_seed
from .nrc import NRC_EMOTIONS, _WORD, load_nrc, nrc_hits, words  # noqa: F401  (re-exported)
from .stimuli import Stimulus, line_numbers
from .style import style_checks, style_features

log = logging.getLogger(__name__)

CLEAN_SETS = ("B", "N", "C")            # sets that must contain no explicit emotion word
PROBE_TASK = {"set_a_8class": "set_a", "set_b_8class": "set_b", "b_vs_n": "b_vs_n"}   # baseline -> probe task
MAX_LISTED = 25                         # violations named in the one-line error before "... and k more"
DISPLAY_CUES = "display_cues"           # the lexicon section of display cues (not emotion words)
POLICIES = ("warn", "fail")
SKEW_MIN_ITEMS = 3                      # word skew: a word in at least this many items of one emotion, none of another


class ScreenError(ValueError):
    """The stimuli break a screening rule; the one-line message names each item and the word or length at fault."""


@dataclass(frozen=True)
class ScreenSettings:
    """params.yaml `screen:` (all optional). `seed` None = the top-level seed."""
    seed: int | None = None
    folds: int = 5
    n_boot: int = 1000
    pair_length_tolerance: float = 0.10
    lexicon: str = "stimuli/lexicon.yaml"
    display_cues: str = "warn"
    style_checks: str = "warn"
    dev_seed: int = 9173
    ratings: str = "stimuli/ratings.jsonl"
    on_violation: object = "fail"   # "fail" | "warn", or {set: policy, default: policy} (checked below)

    def __post_init__(self):
        policies = self.on_violation if isinstance(self.on_violation, dict) else {"default": self.on_violation}
        for name, policy in policies.items():
            if policy not in POLICIES:
                where = "screen.on_violation" + (f".{name}" if isinstance(self.on_violation, dict) else "")
                raise ConfigError(f"params.yaml: {where}: {policy!r} must be warn or fail")
        for key in ("display_cues", "style_checks"):
            if getattr(self, key) not in POLICIES:
                raise ConfigError(f"params.yaml: screen.{key}: {getattr(self, key)!r} must be warn or fail")
        if not isinstance(self.dev_seed, int) or isinstance(self.dev_seed, bool) or self.dev_seed < 0:
            raise ConfigError(f"params.yaml: screen.dev_seed: {self.dev_seed!r} must be a non-negative integer")
        if self.seed is not None and self.dev_seed == self.seed:
            raise ConfigError(f"params.yaml: screen.dev_seed: {self.dev_seed} equals screen.seed (the development "
                              "seed must be one no reported number uses)")
        if self.folds < 2:
            raise ConfigError(f"params.yaml: screen.folds: {self.folds} < 2")
        if self.n_boot < 100:
            raise ConfigError(f"params.yaml: screen.n_boot: {self.n_boot} is too few (at least 100)")
        if not 0 <= self.pair_length_tolerance < 1:
            raise ConfigError(f"params.yaml: screen.pair_length_tolerance: {self.pair_length_tolerance} "
                              "must be in [0, 1)")

    def policy_of(self, sets) -> dict[str, str]:
        """set name -> its on_violation policy, for each of `sets`; a per-set mapping naming a set that is not
        among them is a ConfigError."""
        if not isinstance(self.on_violation, dict):
            return dict.fromkeys(sets, self.on_violation)
        unknown = sorted(set(self.on_violation) - set(sets) - {"default"})
        if unknown:
            raise ConfigError(f"params.yaml: screen.on_violation: {unknown[0]!r} is not a stimulus set "
                              f"(sets: {', '.join(sets)}; or default)")
        return {name: self.on_violation.get(name, self.on_violation.get("default", "fail")) for name in sets}


# ---------------------------------------------------------------------------------------------- lexicons


def load_lexicon(path, section: str | None = None) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Category (emotion, `general`, `expressive`) -> entries, each a tuple of lowercase words; a trailing `*` on
    the last word marks a prefix. The same file and word split as attention.load_lexicon, kept per category.
    The `display_cues` section is left out; `section="display_cues"` reads only it ({} when the file has none)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: lexicon not found (params.yaml screen.lexicon)") from None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a mapping from category (emotion, general, expressive) to a list of words")
    lexicon = {}
    for category, words in raw.items():
        if (category == DISPLAY_CUES) != (section == DISPLAY_CUES):
            continue
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"{path}: {category}: expected a list of words")
        entries = []
        for text in words:
            parts = _WORD.findall(text.lower())
            if not parts:
                raise DataError(f"{path}: {category}: entry {text!r} has no letters")
            if text.strip().endswith("*"):
                parts[-1] += "*"
            entries.append(tuple(parts))
        lexicon[str(category)] = tuple(entries)
    return lexicon


def _match(word: str, entry: str) -> bool:
    return word.startswith(entry[:-1]) if entry.endswith("*") else word == entry


def explicit_hits(text: str, lexicon: dict) -> list[tuple[str, str]]:
    """(category, matched words) for each lexicon match in `text`: whole words, prefixes, word sequences.
    Candidates are looked up by first word (a dict for whole words, a short scan for prefixes): a plain scan of
    every entry at every position took seconds over the shipped sets."""
    ws = words(text)
    found = []
    for category, entries in lexicon.items():
        exact, prefix = {}, []
        for entry in entries:
            if entry[0].endswith("*"):
                prefix.append(entry)
            else:
                exact.setdefault(entry[0], []).append(entry)
        for j, first in enumerate(ws):
            for entry in exact.get(first, []) + [e for e in prefix if first.startswith(e[0][:-1])]:
                k = len(entry)
                if j + k <= len(ws) and all(_match(w, e) for w, e in zip(ws[j:j + k], entry)):
                    found.append((category, " ".join(ws[j:j + k])))
    return found


def cue_hits(sets: dict[str, list[Stimulus]], cues: dict) -> list[dict]:
    """Every display-cue match in Sets B, N, C: `{set, id, emotion, cue}`, `emotion` the item's label (an N twin:
    its B vignette's label, so that a cue kept in the twin is counted with its emotion)."""
    label = _labels(sets)
    return [{"set": name, "id": item.id, "emotion": label[item.id], "cue": cue}
            for name in CLEAN_SETS for item in sets.get(name, [])
            for cue in sorted({w for _, w in explicit_hits(item.text, cues)})]


def _labels(sets: dict[str, list[Stimulus]]) -> dict[str, str]:
    """id -> the emotion an item is counted under: its own label, or for a neutral twin its partner's."""
    own = {s.id: s.emotion for items in sets.values() for s in items}
    return {s.id: own.get(s.pair, s.emotion) if s.emotion == "neutral" and s.pair else s.emotion
            for items in sets.values() for s in items}


def word_skew(items: list[Stimulus], min_items: int = SKEW_MIN_ITEMS) -> dict[str, dict[str, int]]:
    """emotion -> {word: items} for words in at least `min_items` items of that emotion and in no item of another
    (within this set): words that are not emotion words but still give the class away ("chair" in grief)."""
    per = {}
    for s in items:
        per.setdefault(s.emotion, Counter()).update(set(words(s.text)))
    out = {}
    for emotion, counts in per.items():
        elsewhere = set().union(*(set(c) for e, c in per.items() if e != emotion))
        out[emotion] = {w: k for w, k in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
                        if k >= min_items and w not in elsewhere}
    return out


def design_counts(sets: dict[str, list[Stimulus]]) -> tuple[dict, list[str]]:
    """Counts per emotion x writer and emotion x script of the sets whose items carry them (N twins under their
    vignette's emotion), and the scripts of Sets A and B told under two labels (a situation must carry one class)."""
    label, out = _labels(sets), {}
    for key in ("writer", "script"):
        for name, items in sets.items():
            if any(getattr(s, key) for s in items):
                table = {}
                for s in items:
                    table.setdefault(label[s.id], Counter())[getattr(s, key) or "(none)"] += 1
                out.setdefault(f"per_{key}", {})[name] = {e: dict(sorted(c.items())) for e, c in table.items()}
    emotions_of = {}
    for name in ("A", "B"):
        for s in sets.get(name, []):
            if s.script:
                emotions_of.setdefault(s.script, set()).add(s.emotion)
    shared = {k: sorted(v) for k, v in sorted(emotions_of.items()) if len(v) > 1}
    if shared:
        out["scripts_under_two_labels"] = shared
    return out, [f"script {k!r} under {', '.join(v)}" for k, v in shared.items()]


def vader_scores(texts) -> np.ndarray:
    """`(n, 4)` VADER compound, pos, neg, neu per text."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    rows = [analyzer.polarity_scores(t) for t in texts]
    return np.array([[r["compound"], r["pos"], r["neg"], r["neu"]] for r in rows], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- summaries


def _describe(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def n_words(text: str) -> int:
    """Length in whitespace-separated words (the unit of the B/N pair tolerance)."""
    return len(text.split())


def pair_ratios(sets: dict[str, list[Stimulus]]) -> list[tuple[str, str, int, int]]:
    """(B id, N id, B words, N words) for every Set B item paired with a Set N item."""
    n_by_id = {s.id: s for s in sets.get("N", [])}
    return [(b.id, b.pair, n_words(b.text), n_words(n_by_id[b.pair].text))
            for b in sets.get("B", []) if b.pair in n_by_id]


def rule_violations(sets: dict[str, list[Stimulus]], lexicon: dict, tolerance: float) -> list[dict]:
    """Explicit words in Sets B, N, C and B/N pairs out of length, one record each: `{check, sets, id, what}`."""
    out = []
    for name in CLEAN_SETS:
        for item in sets.get(name, []):
            hits = sorted({w for _, w in explicit_hits(item.text, lexicon)})
            if hits:
                out.append({"check": "explicit_words", "sets": [name], "id": item.id,
                            "what": ", ".join(f"'{w}'" for w in hits)})
    for b, n, wb, wn in pair_ratios(sets):
        if abs(wn / wb - 1) > tolerance:
            out.append({"check": "pair_length", "sets": ["B", "N"], "id": f"{b}/{n}",
                        "what": f"{wb}/{wn} words (ratio {wn / wb:.2f}, tolerance {tolerance:g})"})
    return out


def violations(sets: dict[str, list[Stimulus]], lexicon: dict, tolerance: float) -> list[str]:
    """Every breach of the rules, one short phrase each: explicit words in Sets B, N, C; B/N pairs out of length."""
    return [f"{v['id']} {v['what']}" for v in rule_violations(sets, lexicon, tolerance)]


# ---------------------------------------------------------------------------------------------- baselines


def bow_model():
    """Bag of words (vocabulary fitted inside each training fold) and logistic regression."""
    return make_pipeline(CountVectorizer(), LogisticRegression(max_iter=2000))


def features(items: list[Stimulus], polarity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Text-only feature sets: `length (n, 2)` words and characters, `polarity (n, 4)` VADER, `bow (n,)` texts,
    `style (n, f)` the style-only features (style.py: no words but the opening one)."""
    texts = [s.text for s in items]
    if polarity is None:
        polarity = vader_scores(texts)
    return {"length": np.array([[n_words(t), len(t)] for t in texts], dtype=np.float64),
            "polarity": polarity,
            "bow": np.array(texts, dtype=str),
            "style": style_features(texts)}


def baseline(feats: dict[str, np.ndarray], y: np.ndarray, settings: ScreenSettings, seed: int,
             groups: np.ndarray | None = None) -> dict:
    """Macro one-vs-rest AUROC and 95% bootstrap interval of each feature set, all on the same stratified splits,
    grouped by `groups (n,)` when given (linked items share a fold and are resampled together)."""
    y = np.asarray(y)
    folds = stats.splits(y, settings.folds, splits_seed(seed), groups)[0]
    out = {}
    for name, X in feats.items():
        factory = bow_model if X.dtype.kind in "US" else None
        proba = stats.cv_proba(X, y, folds, model_factory=factory)
        point, low, high = stats.bootstrap_auroc(y, proba, settings.n_boot, derive(seed, "stimuli", "bootstrap"),
                                                 groups=groups)
        out[name] = {"auroc": point, "low": low, "high": high}
    return out


# ---------------------------------------------------------------------------------------------- the screen


def _phrase(record: dict) -> str:
    """One violation as the error and the log name it: file:line (when known), item, what, and the check's policy
    setting for failing display cues and style breaches."""
    at = f"{record['where']}: " if record.get("where") else ""
    item = f"{record['id']} " if record["id"] and record["check"] != "ratings" else ""
    policy = f" (screen.{record['check']}: fail)" if record["check"] in ("display_cues", "style_checks") \
        and record["policy"] == "fail" else ""
    return f"{at}{item}{record['what']}{policy}"


def _fail(found: list[str]) -> None:
    if found:
        more = f"; ... and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else ""
        raise ScreenError("stimuli screen failed: " + "; ".join(found[:MAX_LISTED]) + more)


def style_report(sets: dict[str, list[Stimulus]]) -> tuple[dict, list[tuple[list[str], str]]]:
    """style.style_checks of Sets B and N per emotion (an N twin under its vignette's emotion) and one quote style
    over both; breaches as (the sets they concern, phrase prefixed by the set)."""
    label, report, breaches = _labels(sets), {}, []
    for name in ("B", "N"):
        if sets.get(name):
            groups = {}
            for item in sets[name]:
                groups.setdefault(label[item.id], []).append((item.id, item.text))
            report[name], found = style_checks(groups)
            breaches += [([name], f"set {name} {b}") for b in found]
    used = sorted({q for r in report.values() for q in r["quote_styles"]})
    report["quote_styles"] = used
    if len(used) > 1 and all(len(r["quote_styles"]) <= 1 for n, r in report.items() if n != "quote_styles"):
        breaches.append((["B", "N"], f"sets B and N use quote styles {' and '.join(used)}, expected one"))
    return report, breaches


def dev_style_baseline(sets: dict[str, list[Stimulus]], settings: ScreenSettings) -> dict:
    """The style-only baseline of Set B 8-class and B vs N on `settings.dev_seed`, for writers revising the sets:
    no reported number uses that seed, so editing against it does not tune the evaluation splits."""
    out = {}
    for task, (items, y, groups) in _tasks(sets).items():
        out[task] = baseline({"style": features(items, np.zeros((len(items), 4)))["style"]}, y, settings,
                             settings.dev_seed, groups)["style"]
    return out


def _tasks(sets: dict[str, list[Stimulus]]) -> dict:
    """task -> (items, labels `(n,)`, pair groups or None) of the screen's baselines."""
    out = {}
    for name in ("A", "B"):
        if name in sets:
            out[f"set_{name.lower()}_8class"] = (sets[name], np.array([s.emotion for s in sets[name]]), None)
    if "B" in sets and "N" in sets:
        both = sets["B"] + sets["N"]
        y = np.r_[np.ones(len(sets["B"]), dtype=int), np.zeros(len(sets["N"]), dtype=int)]   # positive class: B
        out["b_vs_n"] = (both, y, stats.groups_from_pairs([s.id for s in both], [s.pair for s in both]))
    return out


def screen(sets: dict[str, list[Stimulus]], lexicon: dict, settings: ScreenSettings, seed: int = 0,
           cues: dict | None = None, paths: dict | None = None, ratings: dict | None = None) -> dict:
    """Metrics of every set (see module doc); `seed` is the top-level seed, used unless `settings.seed` is set.
    `cues` the display-cue lexicon (load_lexicon(..., "display_cues")), `paths` set -> JSONL (for file:line in
    messages), `ratings` id -> [(rater, answer)] (ratings.load_ratings; None: not rated).
    Raises ScreenError naming every violation that fails (module doc: `screen.on_violation` and the checks' own
    policies) before any baseline is fitted; the others are recorded under `violations`."""
    policy = settings.policy_of(sets)
    seed = resolve(settings.seed, seed)
    if settings.dev_seed == seed:
        raise ConfigError(f"params.yaml: screen.dev_seed: {seed} is the seed the screen reports (choose another)")
    where = {}
    for name, path in (paths or {}).items():
        where.update({i: f"{path}:{k}" for i, k in line_numbers(path).items()})
    hits = cue_hits(sets, cues or {})
    style, breaches = style_report(sets)
    design, shared = design_counts(sets)
    rated, short = ratings_mod.summarise(ratings, sets)
    set_of = {s.id: name for name, items in sets.items() for s in items}
    scripts = {name: {s.script for s in sets.get(name, [])} for name in ("A", "B")}
    records = rule_violations(sets, lexicon, settings.pair_length_tolerance)
    records += [{"check": "display_cues", "sets": [h["set"]], "id": h["id"], "what": f"display cue '{h['cue']}'"}
                for h in hits]
    records += [{"check": "style_checks", "sets": names, "id": None, "what": b} for names, b in breaches]
    records += [{"check": "style_checks", "sets": [n for n in ("A", "B") if k in scripts[n]], "id": None,
                 "what": phrase} for k, phrase in zip(design.get("scripts_under_two_labels", {}), shared)]
    records += [{"check": "ratings", "sets": [set_of[f.split(":")[0]]], "id": f.split(":")[0],
                 "what": f"blind readings: {f}"} for f in short]
    check_policy = {"display_cues": settings.display_cues, "style_checks": settings.style_checks}
    for r in records:
        lines = [where[i] for i in (r["id"] or "").split("/") if i in where]   # a pair: both lines
        r["where"] = " / ".join(lines) or None
        fails = check_policy.get(r["check"], "fail") == "fail" and any(policy[n] == "fail" for n in r["sets"])
        r["policy"] = "fail" if fails else "warn"
    _fail([_phrase(r) for r in records if r["policy"] == "fail"])
    for r in records:
        why = (f"screen.{r['check']}: warn" if check_policy.get(r["check"], "fail") == "warn"
               else f"screen.on_violation: warn for set {'/'.join(r['sets'])}")
        log.warning("screen: recorded, not failing (%s): %s", why, _phrase(r))
    per_set = {}
    for h in hits:
        per_set.setdefault(h["set"], Counter())[h["emotion"]] += 1
    metrics = {"counts": {}, "length": {}, "vader": {}, "nrc": {}, "explicit": {},
               "display_cues": {"policy": settings.display_cues, "n_hits": len(hits),
                                "n_items": len({h["id"] for h in hits}),
                                "hits_per_emotion": {k: dict(sorted(v.items())) for k, v in per_set.items()},
                                "hits": [{**h, "where": where.get(h["id"])} for h in hits]},
               "style_checks": {"policy": settings.style_checks, "breaches": [b for _, b in breaches] + shared,
                                **style},
               "word_skew": {name: word_skew(sets[name]) for name in ("A", "B") if name in sets},
               "ratings": rated, **({"writers_scripts": design} if design else {}),
               "violations": {"on_violation": policy, "n": len(records), "items": records}}
    nrc = load_nrc()
    polarity = {}
    for name, items in sets.items():
        texts = [s.text for s in items]
        polarity[name] = vader_scores(texts)
        per_emotion = {e: sum(s.emotion == e for s in items) for e in (*EMOTIONS, "neutral")}
        metrics["counts"][name] = {"n": len(items), "per_emotion": {e: k for e, k in per_emotion.items() if k}}
        if any(s.domain for s in items):     # emotion -> domain -> items, for the data card's balance table
            metrics["counts"][name]["per_domain"] = {
                e: dict(sorted(Counter(s.domain for s in items if s.emotion == e).items()))
                for e, k in per_emotion.items() if k}
        metrics["length"][name] = {"words": _describe([n_words(t) for t in texts]),
                                   "chars": _describe([len(t) for t in texts])}
        v = polarity[name]
        metrics["vader"][name] = {"compound_mean": float(v[:, 0].mean()), "compound_sd": float(v[:, 0].std(ddof=1)),
                                  "pos_mean": float(v[:, 1].mean()), "neg_mean": float(v[:, 2].mean())}
        nrc_rows = np.array([nrc_hits(t, nrc) for t in texts])
        metrics["nrc"][name] = {"hits_mean": float(nrc_rows[:, 0].mean()), "density_mean": float(nrc_rows[:, 1].mean()),
                                "items_with_hit": int((nrc_rows[:, 0] > 0).sum())}
        hit_counts = [len(explicit_hits(t, lexicon)) for t in texts]
        with_hit = sum(k > 0 for k in hit_counts)
        metrics["explicit"][name] = {"hits": int(sum(hit_counts)), "items_with_hit": int(with_hit),
                                     "share_with_hit": with_hit / len(items)}
    ratios = [wn / wb for _, _, wb, wn in pair_ratios(sets)]
    if ratios:
        r = np.array(ratios)
        metrics["pairs"] = {"n": len(r), "ratio_min": float(r.min()), "ratio_max": float(r.max()),
                            "ratio_mean": float(r.mean()), "tolerance": settings.pair_length_tolerance,
                            "n_outside": int((np.abs(r - 1) > settings.pair_length_tolerance).sum()),
                            "max_abs_word_diff": int(max(abs(wn - wb) for _, _, wb, wn in pair_ratios(sets)))}
    metrics["baselines"] = {}
    for task, (items, y, groups) in _tasks(sets).items():
        names = ("B", "N") if task == "b_vs_n" else (items[0].set,)
        metrics["baselines"][task] = baseline(features(items, np.vstack([polarity[n] for n in names])), y, settings,
                                              seed, groups)
    metrics["folds"] = {}   # digests of the baselines' splits by probe task: the probes must score the same folds
    for task, (items, y, groups) in _tasks(sets).items():
        folds = stats.splits(y, settings.folds, splits_seed(seed), groups)[0]
        metrics["folds"][PROBE_TASK[task]] = stats.folds_digest(folds, [s.id for s in items])
    metrics["seed"] = seed
    metrics["dev_seed"] = settings.dev_seed
    return metrics
