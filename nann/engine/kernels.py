"""Numba kernels of the retrieval engine (nann.engine.search drives them).

Result lists are kept as sorted uint64 *keys*: the high 32 bits are the float32 score mapped to an unsigned
integer whose ascending order is the score's DESCENDING order, the low 31 bits the item id. Sorting keys
ascending = best score first, ties broken by the smaller id, so every selection is deterministic and does
not depend on how requests were batched or in which order candidates arrived. Bit 31 marks an item a request may
not return (eligibility filters): it is still walked through, never part of the result.

Visited sets are bitmaps over item ids, one row of uint64 words per concurrent request. Each row keeps a
list of the words it turned from zero to non-zero ("touched"), so clearing costs O(work), not O(|V|).

Every kernel releases the GIL (``nogil``): walks of separate batches run in parallel threads (``OfflineRetriever``'s
shards).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_ID_MASK = np.uint64(0x7FFFFFFF)
INELIGIBLE = np.uint64(0x80000000)
_SHIFT = np.uint64(32)


@njit(cache=True, nogil=True)
def make_keys(score_bits, ids):
    """uint64 keys from float32 scores (given as their uint32 bit patterns) and int32 ids."""
    n = ids.shape[0]
    out = np.empty(n, dtype=np.uint64)
    low = np.uint64(0xFFFFFFFF)
    sign = np.uint64(0x80000000)
    for i in range(n):
        b = np.uint64(score_bits[i])
        if b & sign:
            s = low ^ b  # negative float: invert all bits
        else:
            s = b | sign  # positive float: set the sign bit
        hi = low ^ s  # descending
        out[i] = (hi << np.uint64(32)) | np.uint64(ids[i])
    return out


def decode_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32, scores float32) of uint64 keys (numpy, vectorised)."""
    keys = np.asarray(keys, dtype=np.uint64)
    ids = (keys & _ID_MASK).astype(np.int32)
    s = (~(keys >> _SHIFT)).astype(np.uint32)
    pos = (s & np.uint32(0x80000000)) != 0
    bits = np.where(pos, s & np.uint32(0x7FFFFFFF), ~s).astype(np.uint32)
    return ids, bits.view(np.float32)


@njit(cache=True, nogil=True)
def expand(indptr, indices, w_keys, w_flag, w_len, active, max_expand, bitmap, touched, touched_n,
           extra_ids, extra_ptr):
    """Neighbour expansion + visited test-and-set for all requests in one pass.

    For each active request r, its extra ids ``extra_ids[extra_ptr[r]:extra_ptr[r+1]]`` (entry points joining this
    round, e.g. history seeds) not yet in r's bitmap are marked and emitted first; then the flagged entries of its
    list W (at most ``max_expand[r]`` of them, best first; the others stay flagged for a later round) are expanded:
    their flags are cleared and every neighbour not yet in r's bitmap is marked and emitted.
    Returns (owner int32 [C], ids int32 [C], ptr int64 [B+1]): request r's candidates are ptr[r]:ptr[r+1],
    distinct within the request (the bitmap dedups).
    """
    nb = w_len.shape[0]
    total = 0
    for r in range(nb):
        if not active[r]:
            continue
        total += extra_ptr[r + 1] - extra_ptr[r]
        k = 0
        for j in range(w_len[r]):
            if k >= max_expand[r]:
                break
            if w_flag[r, j]:
                node = np.int64(w_keys[r, j] & np.uint64(0x7FFFFFFF))
                total += indptr[node + 1] - indptr[node]
                k += 1
    owner = np.empty(total, dtype=np.int32)
    ids = np.empty(total, dtype=np.int32)
    ptr = np.zeros(nb + 1, dtype=np.int64)
    c = 0
    for r in range(nb):
        if active[r]:
            for e in range(extra_ptr[r], extra_ptr[r + 1]):
                c = _emit_new(r, extra_ids[e], bitmap, touched, touched_n, owner, ids, c)
            k = 0
            for j in range(w_len[r]):
                if k >= max_expand[r]:
                    break
                if w_flag[r, j]:
                    w_flag[r, j] = 0
                    node = np.int64(w_keys[r, j] & np.uint64(0x7FFFFFFF))
                    for e in range(indptr[node], indptr[node + 1]):
                        c = _emit_new(r, indices[e], bitmap, touched, touched_n, owner, ids, c)
                    k += 1
        ptr[r + 1] = c
    return owner[:c], ids[:c], ptr


@njit(cache=True, nogil=True, inline="always")
def _emit_new(r, v, bitmap, touched, touched_n, owner, ids, c):
    """Test-and-set item v in request r's bitmap; append (r, v) at position c when it was new. Returns the new c."""
    wi = v >> 6
    bit = np.uint64(1) << np.uint64(v & 63)
    word = bitmap[r, wi]
    if (word & bit) == 0:
        if word == 0:
            touched[r, touched_n[r]] = wi
            touched_n[r] += 1
        bitmap[r, wi] = word | bit
        owner[c] = r
        ids[c] = v
        c += 1
    return c


@njit(cache=True, nogil=True)
def select_seeds(hist_ids, hist_ptr, counts, num_items):
    """The ``counts[r]`` most recent distinct valid ids of each history (oldest first in
    ``hist_ids[hist_ptr[r]:hist_ptr[r+1]]``), newest first. Ids outside [0, num_items) are skipped.
    Returns (seed_ids int32, seed_ptr int64 [B+1])."""
    nb = counts.shape[0]
    out = np.empty(hist_ptr[nb], dtype=np.int32)
    ptr = np.zeros(nb + 1, dtype=np.int64)
    c = 0
    for r in range(nb):
        start = c
        for j in range(hist_ptr[r + 1] - 1, hist_ptr[r] - 1, -1):
            if c - start >= counts[r]:
                break
            v = hist_ids[j]
            if v < 0 or v >= num_items:
                continue
            dup = False
            for q in range(start, c):
                if out[q] == v:
                    dup = True
                    break
            if not dup:
                out[c] = v
                c += 1
        ptr[r + 1] = c
    return out[:c], ptr


@njit(cache=True, nogil=True)
def mark_nodes(bitmap, touched, touched_n, nodes, n_req):
    """Mark the same ``nodes`` visited for requests 0..n_req-1."""
    one = np.uint64(1)
    for r in range(n_req):
        for i in range(nodes.shape[0]):
            v = nodes[i]
            wi = v >> 6
            word = bitmap[r, wi]
            if word == 0:
                touched[r, touched_n[r]] = wi
                touched_n[r] += 1
            bitmap[r, wi] = word | (one << np.uint64(v & 63))


@njit(cache=True, nogil=True)
def mark_lists(bitmap, touched, touched_n, w_keys, w_len):
    """Mark every entry of each request's list W visited."""
    one = np.uint64(1)
    for r in range(w_len.shape[0]):
        for j in range(w_len[r]):
            v = np.int64(w_keys[r, j] & np.uint64(0x7FFFFFFF))
            wi = v >> 6
            word = bitmap[r, wi]
            if word == 0:
                touched[r, touched_n[r]] = wi
                touched_n[r] += 1
            bitmap[r, wi] = word | (one << np.uint64(v & 63))


@njit(cache=True, nogil=True)
def reset_bitmaps(bitmap, touched, touched_n):
    """Clear only the touched words of every row."""
    for r in range(touched_n.shape[0]):
        for k in range(touched_n[r]):
            bitmap[r, touched[r, k]] = 0
        touched_n[r] = 0


@njit(cache=True, nogil=True)
def merge(w_keys, w_flag, w_len, cand_keys, ptr, ef, cap, buf_keys, buf_flag, top, entered):
    """W <- the best of (W ∪ N) for every request, in place: entries in key order until ``ef[r]`` of them are eligible
    (or ``cap[r]`` entries in all). Without filters every entry is eligible and this is top-ef.

    W rows are sorted keys (w_len[r] valid); N of request r is cand_keys[ptr[r]:ptr[r+1]] (unsorted, disjoint
    from W). New entries get flag 1, kept entries keep their flag. Selection: partition to the best cap
    candidates, sort them, then a linear merge with W.

    entered[r] is set to how many of N landed among the first ``top[r]`` eligible entries of the new W: the new items
    of request r's answer (its top-k), what the walk's stopping rule reads.
    """
    for r in range(w_len.shape[0]):
        c = cap[r]
        n = ptr[r + 1] - ptr[r]
        entered[r] = 0
        if n == 0:
            w_len[r] = _kept(w_keys[r], w_len[r], ef[r], c)
            continue
        seg = cand_keys[ptr[r]:ptr[r + 1]]
        if n > c:
            cs = np.sort(np.partition(seg, c - 1)[:c])
        else:
            cs = np.sort(seg)
        nc = cs.shape[0]
        wl = w_len[r]
        i = 0
        j = 0
        o = 0
        good = 0
        while o < c and good < ef[r] and (i < wl or j < nc):
            if j >= nc or (i < wl and w_keys[r, i] < cs[j]):
                buf_keys[o] = w_keys[r, i]
                buf_flag[o] = w_flag[r, i]
                i += 1
            else:
                buf_keys[o] = cs[j]
                buf_flag[o] = 1
                j += 1
                if good < top[r] and (buf_keys[o] & INELIGIBLE) == 0:
                    entered[r] += 1
            if (buf_keys[o] & INELIGIBLE) == 0:
                good += 1
            o += 1
        for k in range(o):
            w_keys[r, k] = buf_keys[k]
            w_flag[r, k] = buf_flag[k]
        w_len[r] = o


@njit(cache=True, nogil=True)
def _kept(keys, length, ef, cap):
    """How many leading entries of a sorted list the ef / cap rule keeps."""
    good = 0
    o = 0
    while o < length and o < cap and good < ef:
        if (keys[o] & INELIGIBLE) == 0:
            good += 1
        o += 1
    return o


@njit(cache=True, nogil=True)
def truncate(w_keys, w_len, ef, cap):
    """Cut every list to what the ef / cap rule keeps (a layer with a smaller ef than the one before)."""
    for r in range(w_len.shape[0]):
        w_len[r] = _kept(w_keys[r], w_len[r], ef[r], cap[r])


@njit(cache=True, nogil=True)
def mark_ineligible(keys, owner, blocked, exclude_ids, exclude_ptr, allow_cats, allow_ptr, item_category):
    """Set the INELIGIBLE bit of every key its request may not return: the item is in the ``blocked`` bitmap
    (uint64 words over item ids; may be empty = none blocked), in the request's sorted ``exclude_ids`` segment, or
    its category is not in the request's sorted ``allow_cats`` segment (an empty segment allows every category)."""
    for i in range(keys.shape[0]):
        v = np.int64(keys[i] & np.uint64(0x7FFFFFFF))
        r = owner[i]
        bad = blocked.shape[0] > 0 and (blocked[v >> 6] >> np.uint64(v & 63)) & np.uint64(1) != 0
        if not bad:
            bad = _in_sorted(exclude_ids, exclude_ptr[r], exclude_ptr[r + 1], v)
        if not bad and allow_ptr[r + 1] > allow_ptr[r]:
            bad = not _in_sorted(allow_cats, allow_ptr[r], allow_ptr[r + 1], item_category[v])
        if bad:
            keys[i] |= INELIGIBLE


@njit(cache=True, nogil=True, inline="always")
def _in_sorted(values, lo, hi, x):
    """Whether x is in the sorted values[lo:hi] (binary search)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and values[lo] == x


@njit(cache=True, nogil=True)
def eligible_top(w_keys, w_len, top_m, out):
    """The first top_m[r] eligible keys of each list into out [B, M] (0 where fewer); returns their counts."""
    counts = np.zeros(w_len.shape[0], dtype=np.int64)
    for r in range(w_len.shape[0]):
        k = 0
        for j in range(w_len[r]):
            if k >= top_m[r]:
                break
            if (w_keys[r, j] & INELIGIBLE) == 0:
                out[r, k] = w_keys[r, j]
                k += 1
        counts[r] = k
    return counts


@njit(cache=True, nogil=True)
def count_flags(w_flag, w_len, out):
    """out[r] = the entries of request r's list not yet expanded."""
    for r in range(w_len.shape[0]):
        f = 0
        for j in range(w_len[r]):
            if w_flag[r, j]:
                f += 1
        out[r] = f
