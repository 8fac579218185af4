"""The NRC emotion lexicon (Mohammad & Turney 2013, shipped in the `nrclex` package) and the project's word
definition: what the stimulus screen counts and what steered generation scores, in a module of its own so that a
stage reading the lexicon does not depend on the whole screen."""
from __future__ import annotations

import json
import re
from importlib import resources

from .io import DataError

NRC_EMOTIONS = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")
_WORD = re.compile(r"[a-z]+")           # the same word definition as attention.load_lexicon


def words(text: str) -> list[str]:
    """Lowercase letter runs: "Diego's" -> ["diego", "s"]."""
    return _WORD.findall(text.lower())


def load_nrc() -> dict[str, tuple[str, ...]]:
    """The NRC emotion lexicon shipped in the `nrclex` package (word -> categories), read directly from its file:
    NRCLex's own API fails on long texts here."""
    try:
        path = resources.files("nrclex.data").joinpath("nrc_en.json")
        with path.open("r", encoding="utf-8") as handle:
            raw = json.load(handle)
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise DataError(f"NRC lexicon not found in the nrclex package ({err}); install nrclex") from None
    return {w: tuple(c for c in cats if c in NRC_EMOTIONS) for w, cats in raw.items()}


def nrc_hits(text: str, nrc: dict) -> tuple[int, float]:
    """(NRC emotion-word count, count / words) of one text; positive/negative-only words do not count."""
    ws = words(text)
    hits = sum(1 for w in ws if nrc.get(w))
    return hits, hits / max(len(ws), 1)
