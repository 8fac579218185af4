"""Style of a stimulus text without its words (issue 23): the style-only baseline's features and the per-emotion
style checks of the `stimuli` screen.

If the writers' habits differ by emotion (sentence length, colons, quotes, tense, how an item opens), a classifier
gets the label from style alone and a probe may learn the writer. The features carry no word identity except the
opening word, one-hot over a fixed list of common openers (fixed so that Set A and Set B features share columns).
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

_SENTENCE_END = re.compile(r"[.!?]+(?=[\s\"'”’)]|$)")
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_DOUBLE = re.compile(r"[\"“”]")
_SINGLE_OPEN = re.compile(r"(?:^|(?<=[\s(\[—–-]))['‘](?=[A-Za-z0-9])")   # an opening single quote, not an apostrophe
PUNCTUATION = (",", ";", ":", "—", "-", "(", "!", "?", "...")
PRESENT = frozenset("""is are am has does says goes comes isn aren doesn hasn keeps counts watches sees pulls fills
    passes slows winds reads snows rains takes makes gets gives looks turns walks opens stands sits holds carries puts
    runs finds tells asks knows thinks leaves brings begins calls lets stops waits lifts checks moves hears starts
    shows settles lies falls rises writes drives sets cuts lays pays sends spends wears eats""".split())
PAST = frozenset("""was were had did said went came saw took made got gave knew thought told wasn weren didn hadn
    found left put ran sat stood began kept held brought felt heard drove sold met lay woke rose fell wrote spoke broke
    chose threw grew drew flew wore ate struck caught taught bought fought sought sent spent built lost paid laid led
    fed won swam sang rang hung shot hid slid shut became""".split())
OPENERS = ("the", "a", "an", "she", "he", "they", "it", "his", "her", "their", "when", "after", "since", "with",
           "as", "at", "in", "on", "for", "by", "during", "every", "this", "that", "there")   # fixed one-hot columns
QUOTE_STYLES = ("double", "single")


def sentences(text: str) -> list[str]:
    """Sentences split after `.`, `!`, `?` (a run of them) before a space, a closing quote or the end."""
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    return [p for p in parts if p] or [text]


def opening(text: str) -> str:
    """The opening frame: the first word, case-folded ("" when the text has no letters)."""
    found = _TOKEN.search(text)
    return found.group(0).split("'")[0].split("’")[0].casefold() if found else ""


def quote_counts(text: str) -> tuple[int, int]:
    """(double quote marks, opening single quotes): apostrophes inside or after words are not quotes."""
    return len(_DOUBLE.findall(text)), len(_SINGLE_OPEN.findall(text))


def quote_styles(text: str) -> set[str]:
    double, single = quote_counts(text)
    return {s for s, k in zip(QUOTE_STYLES, (double, single)) if k}


def tense_counts(text: str) -> tuple[float, float]:
    """(present-tense markers, past-tense markers): auxiliaries and common verbs in the third person, plus words of
    5+ letters ending in -ed at half weight as past (many are adjectives: "crowded", "blocked"). A heuristic, good
    enough to tell a present-tense narrative from a past one."""
    ws = [w.casefold().replace("’", "'").split("'")[0] for w in _TOKEN.findall(text)]
    present = sum(w in PRESENT for w in ws)
    past = sum(1.0 if w in PAST else 0.5 if len(w) >= 5 and w.endswith("ed") else 0.0 for w in ws)
    return float(present), past


def is_present_tense(text: str) -> bool:
    present, past = tense_counts(text)
    return present > past


def named_tokens(text: str) -> int:
    """Capitalized tokens that do not open a sentence or a quotation (names, places, institutions); "I" does not
    count."""
    count = 0
    for sentence in sentences(text):
        for k, found in enumerate(_TOKEN.finditer(sentence)):
            before = sentence[:found.start()].rstrip()[-1:]
            t = found.group(0)
            count += k > 0 and t[0].isupper() and t != "I" and before not in "\"“'‘:"
    return count


FEATURE_NAMES = ("sentences", "words_per_sentence", *(f"punct_{p}" for p in PUNCTUATION), "quotes_double",
                 "quotes_single", "tense_present", "tense_past", "named_tokens", "mean_word_length",
                 *(f"opens_{w}" for w in OPENERS), "opens_capitalized_other", "opens_other")


def style_features(texts) -> np.ndarray:
    """`(n, len(FEATURE_NAMES))` float64 style features of each text: no word identity beyond the opening word."""
    rows = []
    for text in texts:
        ss = sentences(text)
        tokens = _TOKEN.findall(text)
        first = opening(text)
        first_raw = tokens[0] if tokens else ""
        open_hot = [float(first == w) for w in OPENERS]
        other = first not in OPENERS
        rows.append([len(ss), len(text.split()) / len(ss), *(text.count(p) for p in PUNCTUATION),
                     *quote_counts(text), *tense_counts(text), named_tokens(text),
                     float(np.mean([len(t) for t in tokens])) if tokens else 0.0, *open_hot,
                     float(other and first_raw[:1].isupper() and first_raw.casefold() != "i"),
                     float(other and not (first_raw[:1].isupper() and first_raw.casefold() != "i"))])
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


# ---------------------------------------------------------------------------------------------- the checks

LIMITS_PER_24 = {"colon": 6, "same_opening": 4, "present_tense": 1}   # issue 23, per 24 items of one emotion


def limit(rule: str, n_items: int) -> int:
    """The rule's maximum for an emotion with `n_items` items: stated per 24, scaled and rounded (16 items: 4, 3, 1)."""
    return max(int(round(LIMITS_PER_24[rule] * n_items / 24)), 1)


def style_checks(groups: dict[str, list[tuple[str, str]]]) -> tuple[dict, list[str]]:
    """Per emotion of one set (`groups`: emotion -> [(id, text)]): items with a colon, the most frequent opening
    word and its count, present-tense items, items per quote style; and the breaches, one phrase each, of the
    per-emotion limits and of one quote style over the whole set. Returns (report, breaches)."""
    report, breaches, styles = {}, [], Counter()
    for emotion, items in groups.items():
        n = len(items)
        colon = [i for i, t in items if ":" in t]
        openings = Counter(opening(t) for _, t in items)
        top, top_n = openings.most_common(1)[0]
        present = [i for i, t in items if is_present_tense(t)]
        quotes = Counter(s for _, t in items for s in quote_styles(t))
        styles.update(quotes)
        report[emotion] = {"n": n, "colon": len(colon), "top_opening": top, "top_opening_n": top_n,
                           "present_tense": len(present), "present_tense_ids": present,
                           "quotes": {s: quotes.get(s, 0) for s in QUOTE_STYLES},
                           "limits": {r: limit(r, n) for r in LIMITS_PER_24}}
        over = {"colon": len(colon), "same_opening": top_n, "present_tense": len(present)}
        for rule, found in over.items():
            if found > limit(rule, n):
                what = f" ({top!r})" if rule == "same_opening" else ""
                breaches.append(f"{emotion}: {found} items {rule.replace('_', ' ')}{what}, max {limit(rule, n)}")
    used = [s for s in QUOTE_STYLES if styles.get(s)]
    if len(used) > 1:
        breaches.append("quote styles " + " and ".join(f"{s} ({styles[s]} items)" for s in used) + ", expected one")
    return {"per_emotion": report, "quote_styles": used}, breaches
