"""`nann data prepare`: turn an interaction file (UserBehavior CSV, delimited text or Parquet: `inputs.py`), and
optionally an items file (`items.py`), into the prepared arrays of docs/DESIGN.md.

Rules common to both splits:
- each user's behaviours are sorted by timestamp (stable: ties keep file order);
- users with fewer than --min-behaviors valid behaviours are dropped (default: 10 for the users split, the
  paper's; 5 for leave-last-out, where a user needs a history, a validation and a test target); items /
  categories are those occurring in the kept users' rows; dense item ids are 0..N-1 in ascending raw-id order,
  dense categories likewise; an item's category is the one of its first row in file order, or, given an items
  file, the file's (it wins over the log's category column; items it lacks get UNKNOWN_CATEGORY);
- 3 users minimum.

Split ``users`` (held-out users, the paper's Section 5.1):
- validation and test users are drawn at random (numpy default_rng(seed) permutation of the kept users: the first
  n_test are test, the next n_val validation, the rest training). Clipping: each of n_test / n_val is at most
  max(1, users // 10), so at least 80% of the users (and at least one) stay for training;
- for a val/test user with sequence length l the ceil(l/2)-th behaviour (1-based) is the target, its history the
  (at most max_seq) behaviours right before it; the behaviours after the target are not used;
- training users' full sequences are written.

Split ``last`` (leave-last-out, the usual protocol of sequential recommendation; for logs with few users):
- every kept user trains on all but its last two behaviours; its last is its test target, the one before it its
  validation target, each with the (at most max_seq) behaviours right before it as history;
- test and validation users are a seeded sample of at most --test-users / --val-users of the kept users (the
  first n_test / n_val of one default_rng(seed) permutation, so the validation users are among the test users
  when n_val <= n_test); they stay in training.

``auto`` (the default) takes ``users`` when at least AUTO_USERS_MIN users have --min-behaviors (default 10)
behaviours, enough for 1,000 test users under the tenth-of-the-users clipping, and those users hold at least
AUTO_USERS_MIN_ROWS of the log's behaviours (a sparse log whose users mostly have fewer would lose most of its
training data: Amazon Home 5-core keeps 41%); else ``last``.
`item_counts` counts item occurrences in the training sequences.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from nann.data.columns import parse_time_window
from nann.data.inputs import read_input
from nann.data.items import UNKNOWN_CATEGORY, ItemsFile, read_items
from nann.errors import UserError

FORMAT_VERSION = 1
SPLITS = ("auto", "users", "last")
AUTO_USERS_MIN = 10_000
"""Users with enough behaviours from which `auto` holds users out: a tenth of them makes 1,000 test users."""
AUTO_USERS_MIN_ROWS = 0.5
"""The share of the log's behaviours those users must hold for `auto` to hold users out."""
DEFAULT_MIN_BEHAVIORS = {"users": 10, "last": 5}
LEAST_BEHAVIORS = {"users": 2, "last": 3}  # a target needs a history; leave-last-out needs two targets


def _log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def _gather_segments(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    """Concatenate values[starts[k] : starts[k]+lengths[k]] for all k; returns (flat, offsets int64 [K+1])."""
    lengths = lengths.astype(np.int64)
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    idx = np.arange(total, dtype=np.int64)
    idx += np.repeat(starts.astype(np.int64) - offsets[:-1], lengths)
    return values[idx], offsets


def _user_time_order(user_rank: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order by (user, timestamp), stable: equal timestamps of a user keep file order. One stable argsort of
    a packed (user, time) key when both fit in 63 bits (the usual case), else two stable argsorts."""
    if ts.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    t0 = int(ts.min())
    ts_bits = max(int(ts.max()) - t0, 1).bit_length()
    if int(user_rank.max()).bit_length() + ts_bits <= 63:
        return np.argsort((user_rank << ts_bits) | (ts - t0), kind="stable")
    by_time = np.argsort(ts, kind="stable")
    return by_time[np.argsort(user_rank[by_time], kind="stable")]


def split_counts(num_users: int, val_users: int, test_users: int) -> tuple[int, int]:
    """Clipped (n_val, n_test): each at most max(1, num_users // 10)."""
    cap = max(1, num_users // 10)
    return min(val_users, cap), min(test_users, cap)


def choose_split(user_counts: np.ndarray, split: str, min_behaviors: int | None) -> tuple[str, int, str]:
    """(split, min behaviours, why) for --split and --min-behaviors (None: the split's default), given the number
    of behaviours of every user."""
    if split not in SPLITS:
        raise UserError(f"unknown --split {split!r}; choose one of {', '.join(SPLITS)}")
    reason = f"--split {split}"
    if split == "auto":
        need = min_behaviors or DEFAULT_MIN_BEHAVIORS["users"]
        kept = user_counts >= need
        enough = int(kept.sum())
        share = float(user_counts[kept].sum() / max(1, user_counts.sum()))
        split = "users" if enough >= AUTO_USERS_MIN and share >= AUTO_USERS_MIN_ROWS else "last"
        reason = f"auto: {enough:,} users have at least {need} behaviours, holding {share:.0%} of them: "
        if enough < AUTO_USERS_MIN:
            reason += (f"fewer than {AUTO_USERS_MIN:,} users, so held-out users (a tenth at most) would give only "
                       f"{enough // 10:,} test users")
        elif share < AUTO_USERS_MIN_ROWS:
            reason += (f"held-out users would train on less than {AUTO_USERS_MIN_ROWS:.0%} of the log; "
                       f"leave-last-out keeps every user with {DEFAULT_MIN_BEHAVIORS['last']}")
        else:
            reason += f"at least {AUTO_USERS_MIN:,} users and {AUTO_USERS_MIN_ROWS:.0%} of the log"
    min_behaviors = min_behaviors or DEFAULT_MIN_BEHAVIORS[split]
    _check_min_behaviors(split, min_behaviors)
    return split, min_behaviors, reason


def _check_min_behaviors(split: str, min_behaviors: int) -> None:
    if min_behaviors < LEAST_BEHAVIORS[split]:
        raise UserError(f"--min-behaviors must be at least {LEAST_BEHAVIORS[split]} for --split {split} (a target "
                        f"needs a history{'; so do validation and test' if split == 'last' else ''}), "
                        f"got {min_behaviors}")


def _eval_split(seq: np.ndarray, starts: np.ndarray, target_pos: np.ndarray, max_seq: int,
                user_ids: np.ndarray) -> dict:
    """val.npz / test.npz arrays: per user, the target at target_pos of its sequence (starting at starts) and the
    at most max_seq behaviours right before it."""
    h = np.minimum(target_pos, max_seq)
    hist, hoff = _gather_segments(seq, starts + target_pos - h, h)
    return {"history_items": hist.astype(np.int32), "history_offsets": hoff,
            "targets": seq[starts + target_pos].astype(np.int32), "user_ids": user_ids}


def prepare_arrays(user, item, category, timestamp, *, max_seq: int, min_behaviors: int | None,
                   val_users: int, test_users: int, seed: int, split: str = "auto") -> dict:
    """Core of `prepare` on in-memory arrays (file order). Returns a dict of the output arrays plus counts and the
    split taken (``split``, ``min_behaviors``, ``split_reason``)."""
    uu, u_inv, u_cnt = np.unique(user, return_inverse=True, return_counts=True)
    split, min_behaviors, reason = choose_split(u_cnt, split, min_behaviors)
    keep_user = u_cnt >= min_behaviors
    n_users = int(keep_user.sum())
    if n_users < 3:
        raise UserError(f"only {n_users} users have at least {min_behaviors} behaviours; need at least 3 "
                        f"(lower --min-behaviors or use a larger log)")
    row_keep = keep_user[u_inv]
    # dense user index among the kept users, in ascending raw id order
    kept_rank = np.cumsum(keep_user) - 1
    ku = kept_rank[u_inv[row_keep]].astype(np.int64)
    items_k = item[row_keep]
    cats_k = category[row_keep]
    ts_k = timestamp[row_keep]
    del u_inv, row_keep

    items, first_idx, item_dense = np.unique(items_k, return_index=True, return_inverse=True)
    categories = np.unique(cats_k)
    item_category = np.searchsorted(categories, cats_k[first_idx]).astype(np.int32)
    del items_k, cats_k, first_idx

    order = _user_time_order(ku, ts_k)
    del ku, ts_k
    seq = item_dense[order].astype(np.int32)
    del order, item_dense
    lengths = u_cnt[keep_user].astype(np.int64)
    starts = np.zeros(n_users, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    user_ids = uu[keep_user].astype(np.int64)

    perm = np.random.default_rng(seed).permutation(n_users)
    out = {"items": items.astype(np.int64), "categories": categories.astype(np.int64),
           "item_category": item_category, "split": split, "min_behaviors": min_behaviors, "split_reason": reason}
    if split == "users":
        n_val, n_test = split_counts(n_users, val_users, test_users)
        test_u = np.sort(perm[:n_test])
        val_u = np.sort(perm[n_test:n_test + n_val])
        train_u = np.sort(perm[n_test + n_val:])
        train_lengths = lengths[train_u]
        for name, us in (("val", val_u), ("test", test_u)):  # target: the ceil(l/2)-th behaviour (0-based below)
            out[name] = _eval_split(seq, starts[us], (lengths[us] + 1) // 2 - 1, max_seq, user_ids[us])
    else:
        test_u = np.sort(perm[:min(test_users, n_users)])
        val_u = np.sort(perm[:min(val_users, n_users)])
        train_u = np.arange(n_users)
        train_lengths = lengths - 2
        for name, us, back in (("val", val_u, 2), ("test", test_u, 1)):
            out[name] = _eval_split(seq, starts[us], lengths[us] - back, max_seq, user_ids[us])
    train_items, train_off = _gather_segments(seq, starts[train_u], train_lengths)
    out["train"] = {"items": train_items.astype(np.int32), "offsets": train_off, "user_ids": user_ids[train_u]}
    out["item_counts"] = np.bincount(train_items, minlength=items.shape[0]).astype(np.int64)
    out["counts"] = {"users": n_users, "items": int(items.shape[0]), "categories": int(categories.shape[0]),
                     "behaviors": int(seq.shape[0]), "train_users": int(train_u.shape[0]),
                     "val_users": int(val_u.shape[0]), "test_users": int(test_u.shape[0]),
                     "samples": int((train_lengths - 1).sum()),
                     "dropped_users": int(uu.shape[0] - n_users)}
    return out


def _check_args(args) -> None:
    if args.max_seq < 1:
        raise UserError(f"--max-seq must be at least 1, got {args.max_seq}")
    if args.min_behaviors is not None:
        _check_min_behaviors("users" if args.split == "auto" else args.split, args.min_behaviors)
    if args.test_users < 0 or args.val_users < 0:
        raise UserError("--test-users and --val-users must be non-negative")
    if not (0.0 <= args.max_malformed <= 1.0):
        raise UserError(f"--max-malformed is a share in [0, 1], got {args.max_malformed}")
    if args.csv and args.format not in ("auto", "userbehavior"):
        raise UserError(f"--csv reads the UserBehavior format; use --input FILE --format {args.format} instead")
    if bool(args.items) != bool(args.item_columns):
        raise UserError("--items FILE and --item-columns item=COL,category=COL go together")
    if args.items and "category" in (args.hash_ids or ""):
        raise UserError("--hash-ids category does not apply with --items: the items file gives the categories "
                        "(text ones are hashed by themselves)")


def _read_items_file(args) -> ItemsFile | None:
    if not args.items:
        return None
    items = read_items(args.items, args.item_columns, delimiter=args.item_delimiter, encoding=args.encoding,
                       no_header=args.no_header, separator=args.category_separator,
                       hash_item="item" in (args.hash_ids or ""), max_malformed=args.max_malformed)
    if items.report:
        print(items.report, file=sys.stderr)
    _log(f"items file {args.items}: {items.item.shape[0]:,} items ({items.repeated:,} repeated rows skipped), "
         f"{np.unique(items.category).shape[0]:,} categories")
    return items


def _save_category_names(d: str, items: ItemsFile, categories: np.ndarray) -> None:
    """category_keys.npz when the items file named categories by text: every category's text (integer ones their
    decimal text, UNKNOWN_CATEGORY an empty one)."""
    if not items.category_names:
        return
    names = [items.category_names.get(c, "" if c == UNKNOWN_CATEGORY else str(c)) for c in categories.tolist()]
    np.savez(os.path.join(d, "category_keys.npz"), ids=categories,
             keys=np.array([n.encode() for n in names], dtype=np.bytes_))


def _save_id_keys(d: str, id_keys: dict, out: dict) -> None:
    """ROLE_keys.npz for each --hash-ids role, over the ids the prepared data holds."""
    kept = {"item": out["items"], "category": out["categories"],
            "user": np.unique(np.concatenate([out[s]["user_ids"] for s in ("train", "val", "test")]))}
    for role, registry in id_keys.items():
        registry.save(os.path.join(d, f"{role}_keys.npz"), kept[role])


def main(args) -> int:
    _check_args(args)
    time_window = parse_time_window(args.time_window) if args.time_window else None
    t0 = time.perf_counter()
    items = _read_items_file(args)
    fmt, res = read_input(args.csv or args.input, "userbehavior" if args.csv else args.format,
                          columns=args.columns, delimiter=args.delimiter, encoding=args.encoding,
                          no_header=args.no_header, hash_ids=args.hash_ids, min_rating=args.min_rating,
                          time_window=time_window, max_malformed=args.max_malformed)
    if res.malformed_rows:
        print(res.summary(), file=sys.stderr)
    t1 = time.perf_counter()
    dropped = f", {res.below_min_rating:,} below --min-rating dropped" if res.below_min_rating else ""
    _log(f"read {res.valid_rows:,} valid rows of {res.rows:,} ({fmt}{dropped}) in {t1 - t0:.1f}s")
    if items is not None:
        if fmt == "userbehavior" or "category=" in (args.columns or ""):
            _log("the items file's categories replace the log's category column")
        res.category = items.category_of(res.item)
    out = prepare_arrays(res.user, res.item, res.category, res.timestamp, max_seq=args.max_seq,
                         min_behaviors=args.min_behaviors, val_users=args.val_users,
                         test_users=args.test_users, seed=args.seed, split=args.split)
    _log(f"split: {out['split']} ({out['split_reason']}); users need {out['min_behaviors']} behaviours")
    rows, valid_rows, malformed = res.rows, res.valid_rows, dict(res.malformed)
    below_min_rating, id_keys = res.below_min_rating, res.id_keys
    del res
    d = args.out
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {d}: {e.strerror}") from None
    np.save(os.path.join(d, "items.npy"), out["items"])
    np.save(os.path.join(d, "categories.npy"), out["categories"])
    np.save(os.path.join(d, "item_category.npy"), out["item_category"])
    np.save(os.path.join(d, "item_counts.npy"), out["item_counts"])
    for name in ("train", "val", "test"):
        np.savez(os.path.join(d, f"{name}.npz"), **out[name])
    _save_id_keys(d, id_keys, out)
    c = out["counts"]
    stats = {"users": c["users"], "items": c["items"], "categories": c["categories"], "rows": rows,
             "valid_rows": valid_rows, "malformed": malformed, "train_users": c["train_users"],
             "val_users": c["val_users"], "test_users": c["test_users"], "samples": c["samples"],
             "behaviors": c["behaviors"], "dropped_users": c["dropped_users"], "input_format": fmt,
             "below_min_rating": below_min_rating, "hashed_ids": sorted(id_keys), "split": out["split"],
             "split_reason": out["split_reason"]}
    if items is not None:
        _save_category_names(d, items, out["categories"])
        unknown = out["categories"][out["item_category"]] == UNKNOWN_CATEGORY
        stats["items_file"] = {"path": args.items, "rows": items.rows, "items": int(items.item.shape[0]),
                               "repeated": items.repeated, "malformed": items.malformed,
                               "unknown_category_items": int(unknown.sum())}
        _log(f"{int(unknown.sum()):,} of {c['items']:,} items have no category in the items file: they share "
             f"one unknown category")
    meta = {"format_version": FORMAT_VERSION, "max_seq": args.max_seq, "min_behaviors": out["min_behaviors"],
            "seed": args.seed, "split": out["split"]}
    with open(os.path.join(d, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    _log(f"{c['users']:,} users ({c['train_users']:,} train / {c['val_users']:,} val / {c['test_users']:,} test), "
         f"{c['items']:,} items, {c['categories']:,} categories, {c['samples']:,} training samples "
         f"-> {d} in {time.perf_counter() - t0:.1f}s")
    return 0
