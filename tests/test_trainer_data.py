"""Tiny prepared-data directories for the trainer tests (written with numpy, independent of nann.data)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nann.errors import UserError
from trainer.sampling import NoiseSampler, epoch_order, load_data, make_batch, sample_positions


def make_prepared(out_dir, n_items=300, n_cats=10, n_users=200, seq_len=20, n_eval=40, max_seq=50, seed=0):
    """A prepared data directory (DESIGN.md layout) whose users each favour one category."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    item_cat = rng.integers(0, n_cats, n_items).astype(np.int32)
    by_cat = [np.nonzero(item_cat == c)[0] for c in range(n_cats)]

    def seq():
        c = rng.integers(n_cats)
        pool = by_cat[c] if len(by_cat[c]) else np.arange(n_items)
        s = np.where(rng.random(seq_len) < 0.8, rng.choice(pool, seq_len), rng.integers(0, n_items, seq_len))
        return s.astype(np.int32)

    train = [seq() for _ in range(n_users)]
    items = np.concatenate(train)
    offsets = np.zeros(n_users + 1, np.int64)
    offsets[1:] = np.cumsum([len(s) for s in train])
    counts = np.bincount(items, minlength=n_items).astype(np.int64)
    np.save(os.path.join(out_dir, "items.npy"), (np.arange(n_items) * 7 + 1000).astype(np.int64))
    np.save(os.path.join(out_dir, "categories.npy"), np.arange(n_cats, dtype=np.int64) + 50)
    np.save(os.path.join(out_dir, "item_category.npy"), item_cat)
    np.save(os.path.join(out_dir, "item_counts.npy"), counts)
    np.savez(os.path.join(out_dir, "train.npz"), items=items, offsets=offsets,
             user_ids=np.arange(n_users, dtype=np.int64))
    for k, name in enumerate(("val", "test")):
        ev = [seq() for _ in range(n_eval)]
        cut = [len(s) // 2 for s in ev]
        hist = [s[:c][-max_seq:] for s, c in zip(ev, cut)]
        ho = np.zeros(n_eval + 1, np.int64)
        ho[1:] = np.cumsum([len(h) for h in hist])
        np.savez(os.path.join(out_dir, f"{name}.npz"), history_items=np.concatenate(hist).astype(np.int32),
                 history_offsets=ho, targets=np.array([s[c] for s, c in zip(ev, cut)], np.int32),
                 user_ids=np.arange(n_eval, dtype=np.int64) + 10_000 * (k + 1))
    with open(os.path.join(out_dir, "stats.json"), "w") as f:
        json.dump({"users": n_users + 2 * n_eval, "items": n_items, "categories": n_cats}, f)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump({"format_version": 1, "max_seq": max_seq, "min_behaviors": 10, "seed": seed}, f)
    return out_dir


def test_samples_and_batches(tmp_path):
    d = load_data(make_prepared(tmp_path / "data", n_users=5, seq_len=8, max_seq=3))
    pos = sample_positions(d.train_offsets)
    assert len(pos) == 5 * 7
    hist, mask, tgt = make_batch(d.train_items, d.train_offsets, pos[:8], d.max_seq)
    # first user: positions 1..7; history = up to 3 behaviours before, time order
    s = d.train_items[:8]
    for j in range(7):
        i = j + 1
        h = s[max(0, i - 3):i]
        assert tgt[j] == s[i]
        assert mask[j].sum() == len(h)
        assert list(hist[j, :len(h)]) == list(h)
    o1 = epoch_order(pos, 0, 0, 0, 0, 1)
    assert sorted(o1) == sorted(pos)
    a, b = epoch_order(pos, 0, 0, 0, 0, 2), epoch_order(pos, 0, 0, 0, 1, 2)
    assert len(a) == len(b) and not set(a) & set(b)
    assert len(epoch_order(pos, 0, 1, 10, 0, 1)) == 10


def test_noise_sampler():
    counts = np.array([0, 10, 30, 60])
    ns = NoiseSampler(counts)
    x = ns.sample(np.random.default_rng(0), (20000,))
    freq = np.bincount(x, minlength=4) / len(x)
    assert np.allclose(freq, ns.q, atol=0.01)
    assert ns.q[0] > 0


def test_noise_mixed_with_uniform_samples_its_mixture_and_corrects_with_it():
    counts = np.array([0, 10, 30, 60, 900])
    plain, mixed = NoiseSampler(counts), NoiseSampler(counts, uniform_share=0.5)
    assert np.allclose(mixed.q, 0.5 * plain.q + 0.1) and np.isclose(mixed.q.sum(), 1.0)
    assert np.allclose(np.exp(mixed.log_q), mixed.q, rtol=1e-6)
    freq = np.bincount(mixed.sample(np.random.default_rng(0), (200, 200)).ravel(), minlength=5) / 40000
    assert np.allclose(freq, mixed.q, atol=0.01)
    assert freq[0] > 0.09  # the rarest item: ~1/1000 of the unigram noise, ~1/10 of the mixture
    assert "0.5 of it uniform" in mixed.describe() and plain.describe() == "unigram (counts clipped at 1)"
    with pytest.raises(UserError, match="--uniform-noise must be between 0 and 1"):
        NoiseSampler(counts, uniform_share=1.5)
