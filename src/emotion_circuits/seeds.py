"""Every random stream of the pipeline comes from one root seed through `derive`: numpy's `SeedSequence` with the
stream's name as its spawn key, the documented way to get independent streams (a child of `SeedSequence.spawn` is
exactly `SeedSequence(root, spawn_key=...)`). Adding offsets to a seed (`seed + 1`, `seed + r`) instead makes
streams that collide (the repeat-1 splits of one stage are the repeat-0 splits of a stage seeded one higher).

A stage derives its own root, `derive(params.seed, stage)`, and a function that takes `seed` derives one stream
per purpose from it, `derive(seed, "bootstrap")`; the same `(root, key)` always gives the same stream, so two
analyses that must share splits (the probes and the text baselines) share the key `"splits"`."""
from __future__ import annotations

import zlib

import numpy as np

_STRING = 2 ** 32   # strings map above every uint32, so a name never collides with an index


def _word(part) -> int:
    if isinstance(part, str):
        return _STRING + zlib.crc32(part.encode())
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool) and part >= 0:
        return int(part)
    raise TypeError(f"a stream key is a name or a non-negative integer, got {part!r}")


def derive(root: int, *key: str | int) -> int:
    """The seed (a 32-bit integer, for APIs that take one: numpy, scikit-learn's random_state) of the stream
    `key` under `root`; `derive(root)` with no key is the root's own first word."""
    if not isinstance(root, (int, np.integer)) or isinstance(root, bool) or root < 0:
        raise TypeError(f"a root seed is a non-negative integer, got {root!r}")
    sequence = np.random.SeedSequence(int(root), spawn_key=tuple(_word(part) for part in key))
    return int(sequence.generate_state(1)[0])


def rng(root: int, *key: str | int) -> np.random.Generator:
    """A generator on the stream `key` under `root` (`np.random.default_rng(derive(root, *key))`)."""
    return np.random.default_rng(derive(root, *key))


def resolve(section_seed: int | None, top_seed: int) -> int:
    """A section's `seed: null` means the top-level seed: the one place that rule lives."""
    return top_seed if section_seed is None else section_seed


def splits_seed(root: int) -> int:
    """The seed of the cross-validation splits. The probes and the text-only baselines (`stimuli` stage) both
    take it, so they score the same folds; the summary compares their fold digests."""
    return derive(root, "splits")
