"""The writing plan of Sets B and N v3 (issue 23) and a checker for a writer's draft.

The plan fixes, for every item number k = 1..24 of every emotion, the writer, the domain, the situation script, the
narrative form, the length and the opening word, and it is the same for all eight emotions: style (length,
sentence count, opening word, form, writer) then carries no information about the emotion by construction.

    python tools/stimulus_plan.py --writer 3            # print writer 3's 24 assignments
    python tools/stimulus_plan.py --check draft.jsonl   # check a draft (B items and their N twins), one line a problem
    python tools/stimulus_plan.py --assemble d1.jsonl d2.jsonl ...   # write stimuli/sets/set_B.jsonl and set_N.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from emotion_circuits.config import EMOTIONS  # noqa: E402
from emotion_circuits.io import write_text  # noqa: E402
from emotion_circuits.screen import DISPLAY_CUES, explicit_hits, load_lexicon, n_words  # noqa: E402
from emotion_circuits.style import is_present_tense, opening, quote_counts, sentences  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("work", "family", "health", "public", "travel", "school", "home", "money")
N_WRITERS, PER_EMOTION = 8, 24

# Six situation scripts per emotion; no script belongs to two emotions.
SCRIPTS = {
    "rage": {
        "credit-theft": "someone with power over them takes the credit or reward for their work, and punishes them for objecting",
        "harm-covered-up": "a reckless or negligent person injures someone they love, then lies to escape the blame",
        "public-humiliation": "someone who enjoys power over them humiliates them on purpose in front of others",
        "spiteful-destruction": "someone destroys what they built or own, on purpose and out of spite",
        "rigged-process": "an official bends or rigs the rules to deny them what they are owed and favour a crony",
        "repeated-lies": "a person who promised again and again breaks their word and lies to their face, at great cost to them",
    },
    "grief": {
        "death-of-loved-one": "a person they love dies",
        "death-of-animal": "an animal companion of many years dies",
        "loss-of-home": "a home or place that held their life is gone for good (sold, burned, demolished, flooded)",
        "end-of-bond": "a bond ends for good: a marriage, a lifelong friendship, a child who cuts all contact",
        "loss-of-ability": "an illness or accident, no one's fault, ends for good a life's work or an ability they lived for",
        "fading-person": "someone they love is still alive but no longer the person they were (dementia, a coma with no recovery)",
    },
    "terror": {
        "violent-attacker": "an armed or violent person is coming for them and there is no way out",
        "disaster-trapped": "they are trapped as a disaster closes in (water rising, fire at the exits, a collapse)",
        "loss-of-control": "the vehicle or structure they are on fails beneath them (brakes gone, a plane dropping, a cable parting)",
        "child-in-danger": "their child is in mortal danger at this moment and they cannot reach them",
        "wild-animal": "a dangerous animal is at arm's length (a bear, a pack of dogs, a snake in the bed)",
        "body-failing": "their own body suddenly fails, alone and far from help (airway closing, heart stopping)",
    },
    "ecstasy": {
        "dream-achieved": "after years of trying and refusals they are chosen for the thing they wanted most",
        "reunion": "they are reunited with someone they thought lost or have not seen for many years",
        "windfall": "a sudden gain changes their life (a prize, a debt wiped out, a home of their own at last)",
        "new-life": "a child arrives after a long wait (a birth after years of trying, an adoption approved)",
        "reprieve": "a doom hanging over them is lifted (an all-clear after a grave diagnosis, a conviction overturned)",
        "love-returned": "the person they love says yes or declares love in return",
    },
    "loathing": {
        "contamination": "what they eat, drink or lie in turns out to be rotten or fouled (maggots, mould, sewage)",
        "cruelty-for-fun": "someone torments a helpless animal or person for amusement",
        "bodily-violation": "a stranger's bodily waste or fluid gets into their food, drink or mouth",
        "moral-corruption": "someone preys on the weak while posing as good (a carer who robs the dying, a profiteer from victims)",
        "infestation": "vermin fill the place they live, sleep or cook (rats, cockroaches, lice)",
        "filthy-habits": "someone's foul personal habits intrude on them (a cook licking the spoon back into the pot, nail clippings on a desk)",
    },
    "amazement": {
        "impossible-coincidence": "a coincidence so unlikely it seems impossible",
        "spectacle-of-nature": "a spectacle of nature few people ever see (a total eclipse, a whale breaching beside a boat)",
        "revealed-identity": "someone turns out to be someone else entirely (a stranger is a twin, the cleaner founded the firm)",
        "inexplicable-feat": "something is done that should not be possible (a child solves what experts could not, a device that defies belief)",
        "hidden-discovery": "something long hidden is found (a sealed room behind a wall, a lost masterpiece in an attic)",
        "vast-scale": "something turns out to be of a size or number beyond belief (a cave hall larger than a cathedral)",
    },
    "admiration": {
        "courage-for-stranger": "someone risks their life to save a stranger",
        "integrity-at-cost": "someone tells the truth or refuses a bribe and pays a heavy price for it",
        "mastery": "someone performs a skill at a level that took decades of discipline",
        "generosity": "someone gives away what they can least spare, quietly, to people who need it",
        "perseverance": "someone keeps going for years against odds that would have stopped anyone, and finishes",
        "grace-under-provocation": "someone insulted or wronged answers with calm and kindness",
    },
    "vigilance": {
        "known-threat": "a threat is known to be near and they are the one on duty against it (a prowler, a poacher, a thief)",
        "fragile-charge": "a fragile person in their care could be harmed at any moment (a newborn, an allergic child at a party)",
        "hazard-near-limit": "a hazard is close to its limit and could tip at any moment (a river at the top of a levee, a gauge near red)",
        "suspected-trap": "they suspect deception and must catch it before it costs them (a rigged contract, a con, a forged note)",
        "awaiting-signal": "they must act the instant a signal comes (a relay handover, a starting gun, a goalkeeper at a penalty)",
        "danger-zone": "they move through a place where one careless step is dangerous (a path through a minefield, ice over a river)",
    },
}

FORMS = {
    "short": "report: 1-3 sentences, 25-50 words",
    "medium": "report: 3-5 sentences, 50-85 words",
    "long": "report: 4-7 sentences, 85-130 words",
    "scene": "scene: one unnamed person in one scene, what they notice and do; 8-12 short sentences, 90-140 words",
}
WORDS = {"short": (25, 50), "medium": (50, 85), "long": (85, 130), "scene": (90, 140)}
SENTENCES = {"short": (1, 3), "medium": (3, 5), "long": (4, 7), "scene": (8, 12)}
NAME = "<name>"   # the item opens with a person's first name (a different name in every item)
OPENERS = {1: NAME, 2: "the", 3: "she", 4: "on", 5: NAME, 6: "he", 7: "after", 8: "at", 9: "it", 10: NAME,
           11: "when", 12: "the", 13: "in", 14: NAME, 15: "she", 16: "by", 17: "the", 18: "he", 19: NAME,
           20: "during", 21: "there", 22: "a", 23: "for", 24: "at"}


def slot(k: int) -> dict:
    """The assignment of item number k (1..24), the same for every emotion."""
    if not 1 <= k <= PER_EMOTION:
        raise ValueError(f"item number {k} outside 1..{PER_EMOTION}")
    writer, position = (k - 1) // 3 + 1, (k - 1) % 3
    form = "scene" if position == 2 else "medium" if position == 1 else ("short" if writer % 2 else "long")
    return {"k": k, "writer": f"writer-{writer}", "domain": DOMAINS[(k - 1) % 8],
            "script_index": ((k - 1) + (k - 1) // 6) % 6, "form": form, "opener": OPENERS[k]}


def assignments(writer: int) -> list[dict]:
    out = []
    for emotion in EMOTIONS:
        scripts = list(SCRIPTS[emotion])
        for k in range(1, PER_EMOTION + 1):
            s = slot(k)
            if s["writer"] == f"writer-{writer}":
                name = scripts[s["script_index"]]
                out.append({"id": f"b-{emotion}-{k:02d}", "pair": f"n-{emotion}-{k:02d}", "emotion": emotion,
                            "domain": s["domain"], "script": name, "script_means": SCRIPTS[emotion][name],
                            "form": s["form"], "form_means": FORMS[s["form"]], "opener": s["opener"]})
    return out


def _text_problems(text: str, form: str, opener: str, lexicon: dict, cues: dict) -> list[str]:
    found = []
    hits = sorted({w for _, w in explicit_hits(text, lexicon)})
    if hits:
        found.append(f"emotion words {hits}")
    cue = sorted({w for _, w in explicit_hits(text, cues)})
    if cue:
        found.append(f"display cues {cue}")
    lo, hi = WORDS[form]
    if not lo <= n_words(text) <= hi:
        found.append(f"{n_words(text)} words, {form} needs {lo}-{hi}")
    lo, hi = SENTENCES[form]
    if not lo <= len(sentences(text)) <= hi:
        found.append(f"{len(sentences(text))} sentences, {form} needs {lo}-{hi}")
    first = opening(text)
    if opener == NAME:
        if not text[:1].isupper() or first in {o for o in OPENERS.values() if o != NAME} | {"i", "a", "an"}:
            found.append(f"opens with {first!r}, expected a first name")
    elif first != opener:
        found.append(f"opens with {first!r}, expected {opener!r}")
    if is_present_tense(text):
        found.append("reads as present tense (tell it in the past)")
    if any(quote_counts(text)):
        found.append("quotation marks (report speech indirectly)")
    bad = [p for p in (":", ";", "—", "–", "(", "!", "?", "...") if p in text]
    if bad:
        found.append(f"punctuation {bad} (use only commas and full stops)")
    return found


def check(path: Path) -> list[str]:
    """Every problem of a draft: one line each, naming the id."""
    lexicon = load_lexicon(ROOT / "stimuli" / "lexicon.yaml")
    cues = load_lexicon(ROOT / "stimuli" / "lexicon.yaml", DISPLAY_CUES)
    items, problems = {}, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg})")
            continue
        items[obj.get("id")] = obj
    for id_, obj in items.items():
        try:
            kind, emotion, k = id_.split("-")
            s = slot(int(k))
        except (ValueError, AttributeError):
            problems.append(f"{id_}: bad id (expected b-<emotion>-NN or n-<emotion>-NN)")
            continue
        want = {"set": "B" if kind == "b" else "N", "emotion": emotion if kind == "b" else "neutral",
                "domain": s["domain"], "writer": s["writer"], "script": list(SCRIPTS[emotion])[s["script_index"]],
                "pair": f"{'n' if kind == 'b' else 'b'}-{emotion}-{k}"}
        for key, value in want.items():
            if obj.get(key) != value:
                problems.append(f"{id_}: {key} is {obj.get(key)!r}, expected {value!r}")
        extra = set(obj) - set(want) - {"id", "text"}
        if extra:
            problems.append(f"{id_}: unknown keys {sorted(extra)}")
        text = obj.get("text", "")
        problems += [f"{id_}: {p}" for p in _text_problems(text, s["form"], s["opener"], lexicon, cues)]
        if kind == "b":
            twin = items.get(want["pair"])
            if twin is None:
                problems.append(f"{id_}: twin {want['pair']} missing")
            else:
                ratio = n_words(twin.get("text", "")) / max(n_words(text), 1)
                if abs(ratio - 1) > 0.08:
                    problems.append(f"{id_}: twin length ratio {ratio:.2f} (keep within 0.92-1.08)")
    return problems


def assemble(paths: list[Path]) -> None:
    """Concatenate drafts into stimuli/sets/set_B.jsonl and set_N.jsonl in params emotion order (atomic writes)."""
    rows = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                rows[obj["id"]] = obj
    order = ("id", "set", "emotion", "domain", "writer", "script", "text", "pair")
    for set_name, prefix in (("B", "b"), ("N", "n")):
        ids = [f"{prefix}-{e}-{k:02d}" for e in EMOTIONS for k in range(1, PER_EMOTION + 1)]
        missing = [i for i in ids if i not in rows]
        if missing:
            raise SystemExit(f"missing {len(missing)} items, first {missing[0]}")
        out = ROOT / "stimuli" / "sets" / f"set_{set_name}.jsonl"
        write_text(out, "".join(json.dumps({k: rows[i][k] for k in order}, ensure_ascii=False) + "\n" for i in ids))
        print(f"wrote {out} ({len(ids)} items)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writer", type=int)
    parser.add_argument("--check", type=Path)
    parser.add_argument("--assemble", type=Path, nargs="+")
    args = parser.parse_args()
    if args.writer:
        for a in assignments(args.writer):
            print(json.dumps(a))
    if args.check:
        problems = check(args.check)
        print("\n".join(problems) if problems else "no problems")
        counts = Counter(i.split("-")[0] for i in (json.loads(x)["id"] for x in args.check.read_text().splitlines()
                                                     if x.strip()))
        print(f"{counts.get('b', 0)} B items, {counts.get('n', 0)} N items")
    if args.assemble:
        assemble(args.assemble)


if __name__ == "__main__":
    main()
