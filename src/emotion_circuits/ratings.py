"""Blind readings of the stimuli (issue 23): `stimuli/ratings.jsonl`, one reading a line, `{"id", "rater",
"answer"}` with `answer` one of the eight emotions or "none". The screen summarises agreement with the label (Set B),
the share of "none" (Set N) and Fleiss' kappa, and fails an authored item that the readers do not read as intended.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .config import EMOTIONS
from .stimuli import Stimulus

NONE = "none"
ANSWERS = (*EMOTIONS, NONE)
KEYS = ("id", "rater", "answer")
B_AGREE = 2 / 3        # a Set B item needs at least 2 of 3 readings (two-thirds of its readings) on its label


class RatingsError(ValueError):
    """A bad ratings file or line, or an item the readers do not read as intended; one line naming it."""


def load_ratings(path, known_ids) -> dict[str, list[tuple[str, str]]] | None:
    """id -> [(rater, answer)] of the file, or None when it does not exist (not rated). Every id must be a stimulus
    of `known_ids`; a rater reads an item once."""
    path = Path(path)
    if not path.exists():
        return None
    out, seen = defaultdict(list), {}
    known = set(known_ids)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise RatingsError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or set(obj) != set(KEYS):
            raise RatingsError(f"{where}: expected an object with exactly the keys {', '.join(KEYS)}")
        if not all(isinstance(obj[k], str) and obj[k].strip() for k in KEYS):
            raise RatingsError(f"{where}: every value must be a non-empty string")
        if obj["id"] not in known:
            raise RatingsError(f"{where}: id {obj['id']!r} is not a stimulus of the screened sets")
        if obj["answer"] not in ANSWERS:
            raise RatingsError(f"{where}: answer {obj['answer']!r} is not one of {', '.join(ANSWERS)}")
        key = (obj["id"], obj["rater"])
        if key in seen:
            raise RatingsError(f"{where}: rater {obj['rater']!r} already read {obj['id']!r} (line {seen[key]})")
        seen[key] = number
        out[obj["id"]].append((obj["rater"], obj["answer"]))
    return dict(out)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of `counts (n_items, n_categories)`: how many readers put each item in each category. Items may
    have different numbers of readings (at least 2 each): P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), P_e from the
    pooled category shares; with equal n_i this is Fleiss (1971)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or (n < 2).any():
        raise ValueError("Fleiss' kappa needs at least one item and at least 2 readings per item")
    agree = ((counts ** 2).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / n.sum()
    expected = float((shares ** 2).sum())
    return float("nan") if expected == 1 else float((agree.mean() - expected) / (1 - expected))


def _counts(ratings, items) -> np.ndarray:
    return np.array([[sum(a == c for _, a in ratings.get(s.id, [])) for c in ANSWERS] for s in items])


def summarise(ratings: dict | None, sets: dict[str, list[Stimulus]]) -> tuple[dict, list[str]]:
    """(report, failures) of Sets B and N. Report: readings per item, agreement with the label (B), share "none"
    (N), Fleiss' kappa over the items of each set with 2+ readings and over both. Failures: a B item with fewer
    than two-thirds (and fewer than 2) of its readings on its label, an N item whose majority (more than half) is not
    "none", one phrase each naming the item; an unread item fails too once the file exists."""
    if ratings is None:
        return {"rated": False, "note": "not rated (no stimuli/ratings.jsonl)"}, []
    report, failures, pooled = {"rated": True}, [], []
    for name in ("B", "N"):
        items = sets.get(name, [])
        if not items:
            continue
        counts = _counts(ratings, items)
        n = counts.sum(axis=1)
        target = np.array([ANSWERS.index(s.emotion if name == "B" else NONE) for s in items])
        hits = counts[np.arange(len(items)), target]
        for s, k, total in zip(items, hits, n):
            if total == 0:
                failures.append(f"{s.id}: no readings")
            elif name == "B" and (k < 2 or k / total < B_AGREE):
                failures.append(f"{s.id}: {k} of {total} readings {s.emotion!r}, "
                                f"others {dict(Counter(a for _, a in ratings[s.id] if a != s.emotion))}")
            elif name == "N" and not k > total / 2:
                failures.append(f"{s.id}: {k} of {total} readings 'none', "
                                f"others {dict(Counter(a for _, a in ratings[s.id] if a != NONE))}")
        rated = n >= 2
        pooled.append(counts[rated])
        key = "agreement_with_label" if name == "B" else "share_none"
        report[name] = {"n_items": len(items), "n_unread": int((n == 0).sum()), "readings": int(n.sum()),
                        key: float(hits.sum() / max(n.sum(), 1)),
                        "items_passing": len(items) - sum(f.split(":")[0] in {s.id for s in items} for f in failures),
                        "fleiss_kappa": fleiss_kappa(counts[rated]) if rated.any() else None}
    if pooled and sum(len(p) for p in pooled):
        report["fleiss_kappa_b_and_n"] = fleiss_kappa(np.concatenate(pooled))
    report["raters"] = sorted({r for readings in ratings.values() for r, _ in readings})
    return report, failures
