"""Synthetic UserBehavior data: items live in a 16-d latent space, grouped in categories (skewed sizes; similar
categories form groups) with Zipf-like popularity; each user has 2-5 interests, each an anchor category plus two
related ones and a latent taste point. A sequence is a run of sessions; each session picks one interest, and each
next item is either a repeat of a recent item of that interest (10%) or drawn from its categories with probability
~ popularity x exp(beta * cos(item, context)), the context being the interest's taste point mixed with its recent
items. Raw ids are sparse random integers; timestamps fall in 2017-11-25..12-03 with session gaps; behaviour types
mix pv 89% / cart 5.5% / fav 3% / buy 2.5%; rows are written shuffled within chunks of users.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from nann.errors import UserError

DIM = 16
WINDOW_START = 1_511_568_000  # 2017-11-25 00:00:00 UTC
WINDOW_SECONDS = 9 * 86_400  # .. 2017-12-03 23:59:59 UTC
BEHAVIOR_NAMES = np.array(["pv", "buy", "cart", "fav"])
BEHAVIOR_P = np.array([0.89, 0.025, 0.055, 0.03])
MAX_INTERESTS = 5
CATS_PER_INTEREST = 3
CAT_P = np.array([0.6, 0.2, 0.2])  # anchor category, two related ones
CANDIDATES = 12  # popularity-sampled candidates re-ranked by similarity
BETA = 6.0  # similarity sharpness
REPEAT_P = 0.10
RING = 8  # recent items remembered per interest
SWITCH_P = 1 / 8  # chance a new session starts before a behaviour
LEN_MEDIAN, LEN_SIGMA, LEN_MIN, LEN_MAX = 50.0, 0.75, 5, 1000
CHUNK_USERS = 8192
POP_EXP = 0.7


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class World:
    """Items, categories and their latent structure (shared by all users)."""

    def __init__(self, n_items: int, n_cats: int, seed: int):
        rng = np.random.default_rng([seed, 0x5EED])
        self.n_items, self.n_cats = n_items, n_cats
        n_groups = max(1, n_cats // 16)
        self.cat_group = rng.integers(0, n_groups, n_cats)
        self.cat_group[:n_groups if n_groups <= n_cats else n_cats] = np.arange(min(n_groups, n_cats))
        group_c = _unit(rng.standard_normal((n_groups, DIM)))
        self.cat_centroid = _unit(group_c[self.cat_group] + 0.6 * _unit(rng.standard_normal((n_cats, DIM))))
        # skewed category sizes: every category gets one item, the rest by a Zipf-like share
        share = (1.0 + rng.permutation(n_cats)) ** -1.0
        share /= share.sum()
        first = min(n_items, n_cats)
        cat = np.concatenate([np.arange(first), rng.choice(n_cats, n_items - first, p=share)])
        self.item_cat = rng.permutation(cat).astype(np.int64)
        self.item_lat = _unit(self.cat_centroid[self.item_cat]
                              + 0.9 * _unit(rng.standard_normal((n_items, DIM))).astype(np.float64)).astype(np.float32)
        pop = (1.0 + rng.permutation(n_items)) ** -POP_EXP  # Zipf-like popularity
        self.by_cat = np.argsort(self.item_cat, kind="stable")
        self.cum = np.cumsum(pop[self.by_cat])
        counts = np.bincount(self.item_cat, minlength=n_cats)
        self.cat_end = np.cumsum(counts)
        self.cat_start = self.cat_end - counts
        lo = np.concatenate([[0.0], self.cum])
        self.cat_lo = lo[self.cat_start]
        self.cat_mass = lo[self.cat_end] - self.cat_lo
        p = self.cat_mass ** 0.7
        self.cat_pick_cum = np.cumsum(p / p.sum())
        self.group_members = np.argsort(self.cat_group, kind="stable")
        gcounts = np.bincount(self.cat_group, minlength=n_groups)
        self.group_end = np.cumsum(gcounts)
        self.group_start = self.group_end - gcounts
        # sparse, unique raw ids
        self.item_raw = 1 + rng.choice(max(20 * n_items, 5_000_000), n_items, replace=False).astype(np.int64)
        self.cat_raw = 1 + rng.choice(max(20 * n_cats, 5_000_000), n_cats, replace=False).astype(np.int64)

    def sample_from_cats(self, rng, cats: np.ndarray, m: int) -> np.ndarray:
        """m popularity-weighted item draws from each given category -> [len(cats), m] item indices."""
        u = self.cat_lo[cats][:, None] + rng.random((cats.shape[0], m)) * self.cat_mass[cats][:, None]
        pos = np.searchsorted(self.cum, u, side="right")
        pos = np.clip(pos, self.cat_start[cats][:, None], self.cat_end[cats][:, None] - 1)
        return self.by_cat[pos]


def generate_chunk(world: World, rng, n_users: int):
    """Sequences of n_users users -> (user index, item index, behaviour code, timestamp) rows in (user, time) order."""
    lengths = np.clip(np.rint(rng.lognormal(np.log(LEN_MEDIAN), LEN_SIGMA, n_users)), LEN_MIN, LEN_MAX)
    lengths = np.sort(lengths.astype(np.int64))[::-1]  # active users are always a prefix
    n_int = rng.integers(2, MAX_INTERESTS + 1, n_users)
    # interests: anchor category ~ mass^0.7, two related categories from the anchor's group
    anchor = np.minimum(np.searchsorted(world.cat_pick_cum, rng.random((n_users, MAX_INTERESTS))), world.n_cats - 1)
    g = world.cat_group[anchor]
    gsize = world.group_end[g] - world.group_start[g]
    rel = world.group_members[world.group_start[g][..., None]
                              + (rng.random((n_users, MAX_INTERESTS, 2)) * gsize[..., None]).astype(np.int64)]
    icats = np.concatenate([anchor[..., None], rel], axis=-1)  # [U, I, 3]
    w = rng.gamma(1.0, size=(n_users, MAX_INTERESTS)) * (np.arange(MAX_INTERESTS) < n_int[:, None])
    wcum = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
    taste = _unit(world.cat_centroid[anchor] + 0.6 * _unit(rng.standard_normal((n_users, MAX_INTERESTS, DIM))))
    taste = taste.astype(np.float32)
    ctx = taste.copy()
    ring = np.zeros((n_users, MAX_INTERESTS, RING), dtype=np.int64)
    cnt = np.zeros((n_users, MAX_INTERESTS), dtype=np.int64)
    cur = np.zeros(n_users, dtype=np.int64)
    L = int(lengths[0])
    items = np.zeros((L, n_users), dtype=np.int64)
    new_sess = np.zeros((L, n_users), dtype=bool)
    active_at = np.searchsorted(-lengths, -np.arange(L), side="left")  # number of users with length > t
    cat_cdf = np.cumsum(CAT_P)
    for t in range(L):
        a = int(active_at[t])
        ar = np.arange(a)
        sw = rng.random(a) < SWITCH_P if t else np.ones(a, dtype=bool)
        if sw.any():
            si = np.flatnonzero(sw)
            pick = (rng.random(si.shape[0])[:, None] > wcum[si]).sum(1)
            cur[si] = np.minimum(pick, n_int[si] - 1)
        new_sess[t, :a] = sw
        c = cur[:a]
        cats = icats[ar, c, np.minimum(np.searchsorted(cat_cdf, rng.random(a)), CATS_PER_INTEREST - 1)]
        cand = world.sample_from_cats(rng, cats, CANDIDATES)
        ctx_a = ctx[ar, c]
        sims = np.einsum("amd,ad->am", world.item_lat[cand], ctx_a)
        gum = -np.log(-np.log(rng.random((a, CANDIDATES)) + 1e-12) + 1e-12)
        new = cand[ar, np.argmax(BETA * sims + gum, axis=1)]
        k = cnt[ar, c]
        rep = (rng.random(a) < REPEAT_P) & (k > 0)
        back = (rng.random(a) * np.minimum(k, RING)).astype(np.int64)
        old = ring[ar, c, (k - 1 - back) % RING]
        item = np.where(rep, old, new)
        items[t, :a] = item
        ctx[ar, c] = _unit(0.5 * ctx_a + 0.3 * world.item_lat[item] + 0.2 * taste[ar, c])
        ring[ar, c, k % RING] = item
        cnt[ar, c] = k + 1
    # timestamps: short gaps inside a session, long between, squeezed into the 9-day window
    live = np.arange(L)[:, None] < lengths[None, :]
    gaps = np.where(new_sess, 600.0 + rng.exponential(4 * 3600.0, (L, n_users)),
                    1.0 + rng.exponential(45.0, (L, n_users)))
    gaps[0] = 0.0
    gaps = np.floor(gaps) * live
    total = gaps.sum(0)
    room = WINDOW_SECONDS - 1 - (lengths - 1)  # room for the parts of the gaps above the 1-second minimum
    extra = np.maximum(total - (lengths - 1), 1.0)
    scale = np.minimum(1.0, room / extra)
    gaps = np.where(gaps > 0, 1.0 + np.floor((gaps - 1.0) * scale[None, :]), 0.0) * live
    gaps[0] = 0.0
    span = gaps.sum(0)
    start = WINDOW_START + np.floor(rng.random(n_users) * (WINDOW_SECONDS - span)).astype(np.int64)
    ts = start[None, :] + np.cumsum(gaps, axis=0).astype(np.int64)
    tt, uu = np.nonzero(live)
    order = np.lexsort((tt, uu))
    tt, uu = tt[order], uu[order]
    beh = np.searchsorted(np.cumsum(BEHAVIOR_P), rng.random(tt.shape[0]) * 0.999999)
    return uu, items[tt, uu], beh, ts[tt, uu]


def _format_rows(user_raw, item_raw, cat_raw, beh, ts) -> bytes:
    names = BEHAVIOR_NAMES[beh].tolist()
    lines = [f"{u},{i},{c},{b},{t}" for u, i, c, b, t in
             zip(user_raw.tolist(), item_raw.tolist(), cat_raw.tolist(), names, ts.tolist())]
    lines.append("")
    return "\n".join(lines).encode()


def synthesize(out_dir: str, users: int, items: int, categories: int, seed: int = 0,
               progress: bool = True) -> tuple[str, int]:
    """Write out_dir/UserBehavior.csv; returns (path, rows written)."""
    if users < 1 or items < 1 or categories < 1:
        raise UserError("--users, --items and --categories must be positive")
    if categories > items:
        raise UserError(f"--categories ({categories}) cannot exceed --items ({items})")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out_dir}: {e.strerror}") from None
    world = World(items, categories, seed)
    id_rng = np.random.default_rng([seed, 0x05E5])
    user_raw = 1 + id_rng.choice(max(20 * users, 2_000_000), users, replace=False).astype(np.int64)
    path = os.path.join(out_dir, "UserBehavior.csv")
    tmp = path + ".tmp"
    rows = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=users, unit="user", desc="synth", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    with open(tmp, "wb") as f:
        for ci, lo in enumerate(range(0, users, CHUNK_USERS)):
            n = min(CHUNK_USERS, users - lo)
            rng = np.random.default_rng([seed, 1, ci])
            u, it, beh, ts = generate_chunk(world, rng, n)
            perm = rng.permutation(u.shape[0])  # not sorted by user / time: prepare must sort
            u, it, beh, ts = u[perm], it[perm], beh[perm], ts[perm]
            f.write(_format_rows(user_raw[lo + u], world.item_raw[it], world.cat_raw[world.item_cat[it]], beh, ts))
            rows += u.shape[0]
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    os.replace(tmp, path)
    return path, rows


def main(args) -> int:
    t0 = time.perf_counter()
    path, rows = synthesize(args.out, args.users, args.items, args.categories, args.seed)
    print(f"[synth] wrote {rows:,} rows for {args.users:,} users, {args.items:,} items, {args.categories:,} "
          f"categories to {path} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0
