"""String ids (`nann data prepare --hash-ids`): ASINs, UUIDs and the like become int64 raw ids.

The rest of the pipeline keeps int64 raw ids (items.npy, the served INT64 `history`), so a string key maps to
``string_id(key)``: the first 8 bytes of BLAKE2b(UTF-8 key), little-endian, top bit cleared (a non-negative
int64; stable across runs, machines and versions). Clients compute the same id to query; `prepare` writes
ROLE_keys.npz (``ids`` int64 ascending, ``keys`` UTF-8 bytes) for the way back. Two keys with one id (odds about
n^2 / 2^64) are refused, not merged.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nann.errors import UserError

_ID_MASK = (1 << 63) - 1
_COMPACT_AT = 1 << 20  # pending keys before the registry de-duplicates


def string_id(key: str) -> int:
    """The int64 raw id of a string key."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little") & _ID_MASK


class KeyRegistry:
    """The distinct (id, key) pairs of one id column (role), kept de-duplicated so memory follows the number of
    distinct keys, not rows."""

    def __init__(self, role: str, column: str):
        self.role, self.column = role, column
        self._ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        self._keys: list[pa.Array] = [pa.array([], type=pa.large_string())]
        self._pending = 0
        self._distinct = 0

    def ids_of(self, values: pa.Array) -> np.ndarray:
        """Ids (int64) of a batch's keys (any arrow type, hashed as text; 0 where null), remembering the keys."""
        encoded = pc.dictionary_encode(values.cast(pa.large_string()))
        keys = encoded.dictionary
        ids = np.fromiter((string_id(k) for k in keys.to_pylist()), dtype=np.int64, count=len(keys))
        self._ids.append(ids)
        self._keys.append(keys)
        self._pending += len(keys)
        if self._pending > max(_COMPACT_AT, self._distinct):
            self._compact()
        index = pc.fill_null(encoded.indices, len(keys)).to_numpy()
        return np.append(ids, 0)[index]

    def _compact(self) -> None:
        ids = np.concatenate(self._ids)
        keys = pa.concat_arrays(self._keys)
        order = np.argsort(ids, kind="stable")
        ids, keys = ids[order], keys.take(pa.array(order))
        same_id = ids[1:] == ids[:-1]
        if same_id.any():
            at = np.flatnonzero(same_id)
            first, second = keys.take(pa.array(at)), keys.take(pa.array(at + 1))
            differ = np.flatnonzero(~pc.equal(first, second).to_numpy(zero_copy_only=False))
            if differ.size:
                k = int(differ[0])
                raise UserError(f"--hash-ids: keys {first[k].as_py()!r} and {second[k].as_py()!r} of column "
                                f"{self.column!r} hash to the same id {int(ids[at[k]])}; map this column to "
                                f"integers yourself")
        keep = np.ones(ids.shape[0], dtype=bool)
        keep[1:] = ~same_id
        self._ids = [ids[keep]]
        self._keys = [keys.filter(pa.array(keep))]
        self._pending = 0
        self._distinct = int(keep.sum())

    def save(self, path: str, ids: np.ndarray) -> None:
        """Write `ids` (ascending, each one seen) with their keys to an .npz (no pickle)."""
        self._compact()
        known = self._ids[0]
        pos = np.searchsorted(known, ids)
        keys = self._keys[0].take(pa.array(pos)).cast(pa.large_binary()).to_pylist()
        np.savez(path, ids=np.asarray(ids, dtype=np.int64), keys=np.array(keys, dtype=np.bytes_))
