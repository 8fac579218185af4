"""Random streams come from `seeds.derive`: deterministic, distinct per key, and the probes split exactly as the text
baselines do (compared by fold digest on the shipped sets)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from emotion_circuits import stats
from emotion_circuits.config import load_params
from emotion_circuits.probes import SetData, make_tasks, settings_from
from emotion_circuits.report import same_splits
from emotion_circuits.screen import PROBE_TASK, ScreenSettings, _tasks
from emotion_circuits.seeds import derive, resolve, rng, splits_seed
from emotion_circuits.stimuli import load_params_sets


def test_derive_is_deterministic_and_distinct_per_key():
    assert derive(0, "probes", "bootstrap") == derive(0, "probes", "bootstrap")
    keys = [(), ("probes",), ("probes", "bootstrap"), ("probes", "permutation"), ("patching",), ("repeat", 0),
            ("repeat", 1), (0,), (1,)]
    for root in (0, 1, 7):
        seeds = [derive(root, *k) for k in keys]
        assert len(set(seeds)) == len(seeds)
    assert derive(0, "x") != derive(1, "x")
    assert rng(3, "a").random() == np.random.default_rng(derive(3, "a")).random()
    assert resolve(None, 5) == 5 and resolve(2, 5) == 2


def test_a_name_never_collides_with_an_index():
    import zlib
    crc = zlib.crc32(b"bootstrap")
    assert derive(0, "bootstrap") != derive(0, crc)


@pytest.mark.parametrize("bad", [-1, 1.5, "a", True, None])
def test_bad_keys_and_roots_raise(bad):
    with pytest.raises(TypeError):
        derive(bad, "x")
    if not isinstance(bad, str):   # a name is a key
        with pytest.raises(TypeError):
            derive(0, bad)


def test_offset_seeds_collide_and_derived_streams_do_not():
    """The failure the module prevents: with `seed + r`, repeat 1 of a stage seeded 0 is repeat 0 of a stage seeded
    1 (the same folds); derived repeats are different splits."""
    y = np.repeat(np.arange(4), 10)

    def offset_splits(seed, repeats):     # the old scheme: StratifiedKFold(random_state=seed + r)
        from sklearn.model_selection import StratifiedKFold
        return [list(StratifiedKFold(5, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y))
                for r in range(repeats)]
    ids = np.arange(len(y))
    assert stats.folds_digest(offset_splits(0, 2)[1], ids) == stats.folds_digest(offset_splits(1, 1)[0], ids)
    new0, new1 = stats.splits(y, 5, 0, repeats=2), stats.splits(y, 5, 1, repeats=1)
    assert stats.folds_digest(new0[1], ids) != stats.folds_digest(new1[0], ids)
    assert stats.folds_digest(new0[0], ids) != stats.folds_digest(new0[1], ids)


def test_folds_digest_is_a_partition_digest():
    folds = [(np.array([2, 3]), np.array([0, 1])), (np.array([0, 1]), np.array([2, 3]))]
    ids = ["a", "b", "c", "d"]
    assert stats.folds_digest(folds, ids) == stats.folds_digest(folds[::-1], ids)
    other = [(np.array([1, 3]), np.array([0, 2])), (np.array([0, 2]), np.array([1, 3]))]
    assert stats.folds_digest(folds, ids) != stats.folds_digest(other, ids)


def _digests(params, probe_seed=None):
    """(text baselines' fold digests, probes' repeat-0 fold digests) on the shipped sets, as the stages take them."""
    sets = load_params_sets(params, ["A", "B", "N"])
    screen_settings = params.section("screen", ScreenSettings)
    root = resolve(screen_settings.seed, params.seed)
    theirs = {PROBE_TASK[task]: stats.folds_digest(stats.splits(y, screen_settings.folds, splits_seed(root), g)[0],
                                                   [s.id for s in items])
              for task, (items, y, g) in _tasks(sets).items()}
    settings = dataclasses.replace(settings_from(params), n_perm=0)
    if probe_seed is not None:
        settings = dataclasses.replace(settings, seed=probe_seed)
    data = {name: SetData(Path(name), {"h": np.zeros((len(items), 1, 1), np.float32)},
                          np.array([s.id for s in items]), np.array([s.emotion for s in items]))
            for name, items in sets.items()}
    tasks = make_tasks(data, settings, {s.id: s.pair for items in sets.values() for s in items})
    ours = {name: stats.folds_digest(tasks[name].folds[0], np.concatenate([data[s].ids for s in tasks[name].inputs]))
            for name in theirs}
    return theirs, ours


def test_probes_and_text_baselines_score_the_same_folds_on_the_shipped_sets():
    params = load_params("params.yaml")
    theirs, ours = _digests(params)
    assert set(theirs) == {"set_a", "set_b", "b_vs_n"} and theirs == ours
    assert same_splits({"folds": theirs}, {"m": {"folds": ours}}) == dict.fromkeys(theirs, True)
    theirs, other = _digests(params, probe_seed=params.seed + 1)    # a probes.seed of its own: the check fails
    assert all(theirs[t] != other[t] for t in theirs)
    assert same_splits({"folds": theirs}, {"m": {"folds": other}}) == dict.fromkeys(theirs, False)
