"""Stimulus sets (DESIGN §2): JSONL, one object a line, validated with one-line errors naming file and line."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import EMOTIONS, SETS

KEYS = {"id", "set", "emotion", "text"}
OPTIONAL = {"pair", "domain", "writer", "script"}
# domain: the situation's domain (work, family, ...), for domain-held-out CV; writer: who (or which writing pass)
# wrote the item, for the style balance; script: its situation script (a death, a betrayal, ...), for
# situation-held-out CV


class StimulusError(ValueError):
    """A bad stimulus file or line; the message names file and line."""


@dataclass(frozen=True)
class Stimulus:
    id: str
    set: str
    emotion: str
    text: str
    pair: str | None = None
    domain: str | None = None
    writer: str | None = None
    script: str | None = None


def _parse_line(path: Path, number: int, line: str, set_name: str | None) -> Stimulus:
    where = f"{path}:{number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise StimulusError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise StimulusError(f"{where}: expected a JSON object")
    missing, extra = KEYS - set(obj), set(obj) - KEYS - OPTIONAL
    if missing:
        raise StimulusError(f"{where}: missing key {sorted(missing)[0]!r}")
    if extra:
        raise StimulusError(f"{where}: unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(KEYS | OPTIONAL))})")
    if not all(isinstance(obj[k], str) for k in KEYS | (OPTIONAL & set(obj))):
        raise StimulusError(f"{where}: every value must be a string")
    if obj["set"] not in SETS:
        raise StimulusError(f"{where}: unknown set {obj['set']!r} (expected one of {', '.join(SETS)})")
    if set_name is not None and obj["set"] != set_name:
        raise StimulusError(f"{where}: set {obj['set']!r} in the file of set {set_name!r}")
    allowed = EMOTIONS if obj["set"] in ("A", "B") else ("neutral",)
    if obj["emotion"] not in allowed:
        raise StimulusError(f"{where}: unknown emotion {obj['emotion']!r} for set {obj['set']} "
                            f"(expected one of {', '.join(allowed)})")
    if not obj["text"].strip():
        raise StimulusError(f"{where}: empty text")
    if not obj["id"].strip():
        raise StimulusError(f"{where}: empty id")
    for key in ("domain", "writer", "script"):
        if key in obj and not obj[key].strip():
            raise StimulusError(f"{where}: empty {key}")
    return Stimulus(id=obj["id"], set=obj["set"], emotion=obj["emotion"], text=obj["text"], pair=obj.get("pair"),
                    domain=obj.get("domain"), writer=obj.get("writer"), script=obj.get("script"))


def load_stimuli(path, set_name: str | None = None) -> list[Stimulus]:
    """All stimuli of one JSONL file (blank lines skipped); raises StimulusError naming file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise StimulusError(f"{path}: not found") from None
    except UnicodeDecodeError as err:
        raise StimulusError(f"{path}: not UTF-8 text ({err.reason})") from None
    items, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = _parse_line(path, number, line, set_name)
        if item.id in seen:
            raise StimulusError(f"{path}:{number}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = number
        items.append(item)
    if not items:
        raise StimulusError(f"{path}: no stimuli")
    return items


def load_sets(paths: dict) -> dict[str, list[Stimulus]]:
    """Several sets by name; also checks ids are unique across files and every `pair` exists and is mutual."""
    sets = {name: load_stimuli(path, name) for name, path in paths.items()}
    where, by_id = {}, {}
    for name, items in sets.items():
        lines = line_numbers(paths[name])
        for item in items:
            if item.id in by_id:
                raise StimulusError(f"{paths[name]}:{lines[item.id]}: id {item.id!r} also in {where[item.id]}")
            by_id[item.id], where[item.id] = item, f"{paths[name]}:{lines[item.id]}"
    for item in by_id.values():
        if item.pair is None:
            continue
        partner = by_id.get(item.pair)
        if partner is None:
            raise StimulusError(f"{where[item.id]}: pair {item.pair!r} of {item.id!r} not found in any set")
        if partner.pair != item.id:
            raise StimulusError(f"{where[item.id]}: pair {item.pair!r} of {item.id!r} does not pair back "
                                f"(its pair is {partner.pair!r})")
    return sets


def line_numbers(path) -> dict[str, int]:
    """id -> its line number in a stimuli JSONL (for messages naming file and line)."""
    numbers = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            numbers[json.loads(line)["id"]] = number
    return numbers


def load_params_sets(params, names=None) -> dict[str, list[Stimulus]]:
    """The sets listed in params.yaml `stimuli:` (all, or `names`)."""
    names = list(params.stimuli) if names is None else list(names)
    return load_sets({name: params.stimulus_file(name) for name in names})
