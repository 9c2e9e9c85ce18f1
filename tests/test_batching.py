"""SubBatchSampler: single-subset sub-batches, one use per index per epoch, seeded, resumable."""
import itertools

import pytest

from comalite.batching import SubBatchSampler

# Subset sizes with tails: a = 8 * 8 + 6, b = 4 * 8 + 1, c smaller than a sub-batch, d a multiple of 8.
SIZES = {"a": 70, "b": 33, "c": 5, "d": 64}
SUBSETS = [name for name, size in SIZES.items() for _ in range(size)]
SUBSETS = [SUBSETS[i] for i in itertools.chain(range(0, 172, 2), range(1, 172, 2))]  # not grouped by subset


def _epoch(sampler):
    return list(sampler)


def _sub_batches(batch, size):
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def test_sub_batches_are_single_subset_except_the_leftover_ones():
    sampler = SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=8, seed=0, drop_last=False)
    batches = _epoch(sampler)
    sub_batches = [s for b in batches for s in _sub_batches(b, 8)]
    # Leftovers 6 + 1 + 5 + 0 = 12 items: one full leftover sub-batch and a short last piece of 4 (both
    # may mix subsets); the other 19 sub-batches are single-subset.
    assert all(len(s) == 8 for s in sub_batches[:-1]) and len(sub_batches[-1]) == 4
    mixed = [s for s in sub_batches if len({SUBSETS[i] for i in s}) > 1]
    assert len([s for s in mixed if len(s) == 8]) <= 1
    for s in mixed:  # inside leftover sub-batches each subset's items stay together
        names = [SUBSETS[i] for i in s]
        assert len(list(itertools.groupby(names))) == len(set(names))


def test_subset_sizes_that_divide_give_only_single_subset_sub_batches():
    subsets = ["x"] * 24 + ["y"] * 16 + ["z"] * 8
    for seed in range(5):
        batches = _epoch(SubBatchSampler(subsets, batch_size=16, sub_batch_size=8, seed=seed))
        assert len(batches) == 3
        assert all(len({subsets[i] for i in s}) == 1 for b in batches for s in _sub_batches(b, 8))


def test_each_index_once_per_epoch():
    sampler = SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=8, seed=3, drop_last=False)
    for _ in range(3):
        flat = [i for b in _epoch(sampler) for i in b]
        assert sorted(flat) == list(range(len(SUBSETS)))  # every index, including all of tiny subset c
    sampler = SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=8, seed=3)
    assert len(sampler) == 172 // 32 == 5
    flat = [i for b in _epoch(sampler) for i in b]
    assert len(flat) == len(set(flat)) == 160
    assert all(len(b) == 32 for b in _epoch(sampler))


def test_tiny_subset_is_not_dropped_forever():
    sampler = SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=8, seed=0)
    seen = {i for _ in range(10) for b in _epoch(sampler) for i in b}
    assert {i for i, name in enumerate(SUBSETS) if name == "c"} <= seen


def test_determinism_by_seed_and_epoch():
    first = [_epoch(SubBatchSampler(SUBSETS, 32, 8, seed=1)) for _ in range(2)]
    assert first[0] == first[1]
    assert _epoch(SubBatchSampler(SUBSETS, 32, 8, seed=2)) != first[0]
    sampler = SubBatchSampler(SUBSETS, 32, 8, seed=1)
    epoch0, epoch1 = _epoch(sampler), _epoch(sampler)  # exhausting an epoch moves to the next
    assert epoch0 == first[0] and epoch1 != epoch0
    sampler.set_epoch(1)
    assert _epoch(sampler) == epoch1


def _take(sampler, n):
    """The first n batches of an endless walk through epochs, as the training loop would see them."""
    out = []
    while len(out) < n:
        for batch in sampler:
            out.append(batch)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("k", [0, 3, 5, 7, 11])
def test_resume_equals_the_tail_of_an_uninterrupted_run(k):
    # 5 batches per epoch: k = 5 resumes exactly at an epoch boundary, 7 and 11 in later epochs.
    uninterrupted = _take(SubBatchSampler(SUBSETS, 32, 8, seed=4), 14)
    first = SubBatchSampler(SUBSETS, 32, 8, seed=4)
    head = _take(first, k)
    state = first.state_dict()
    resumed = SubBatchSampler(SUBSETS, 32, 8, seed=4)
    resumed.load_state_dict(state)
    assert head + _take(resumed, 14 - k) == uninterrupted
    # seek() from a step counter gives the same, without a saved state.
    sought = SubBatchSampler(SUBSETS, 32, 8, seed=4)
    sought.seek(k)
    assert _take(sought, 14 - k) == uninterrupted[k:]


def test_load_state_dict_refuses_other_settings():
    state = SubBatchSampler(SUBSETS, 32, 8, seed=4).state_dict()
    with pytest.raises(ValueError, match="seed"):
        SubBatchSampler(SUBSETS, 32, 8, seed=5).load_state_dict(state)
    with pytest.raises(ValueError):
        SubBatchSampler(SUBSETS[:-1], 32, 8, seed=4).load_state_dict(state)


def test_mixed_and_homogeneous_modes():
    subsets = [name for name in "wxyz" for _ in range(64)]
    mixed = _epoch(SubBatchSampler(subsets, batch_size=32, sub_batch_size=None, seed=0))
    assert len(mixed) == 8 and sorted(i for b in mixed for i in b) == list(range(256))
    # A uniform shuffle: every batch holds several subsets (all 32 from one would have odds ~ 4^-31).
    assert all(len({subsets[i] for i in b}) >= 3 for b in mixed)
    homogeneous = _epoch(SubBatchSampler(subsets, batch_size=32, sub_batch_size=32, seed=0))
    assert all(len({subsets[i] for i in b}) == 1 for b in homogeneous)
    assert len({subsets[b[0]] for b in homogeneous}) == 4  # and the batches still visit every subset
    # Sub-batches of 8: exactly 4 single-subset runs per batch, typically from different subsets.
    interleaved = _epoch(SubBatchSampler(subsets, batch_size=32, sub_batch_size=8, seed=0))
    assert all(len({subsets[i] for i in s}) == 1 for b in interleaved for s in _sub_batches(b, 8))
    assert any(len({subsets[i] for i in b}) > 1 for b in interleaved)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=12)
    with pytest.raises(ValueError):
        SubBatchSampler(SUBSETS, batch_size=32, sub_batch_size=64)
    with pytest.raises(ValueError):
        SubBatchSampler(SUBSETS, batch_size=0)
