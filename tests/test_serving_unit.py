"""Serving logic without a server: request validation, manifests, TensorRT profiles, config rendering."""
import json

import numpy as np
import pytest

from nann.engine.grid import CandidateGrid
from nann.serving.export import pbtxt_string, tensor_entries
from nann.serving.repository import ArtifactError, verify_manifest, write_manifest
from nann.serving.requests import RequestError, ServingLimits, parse_history, parse_search
from nann.serving.services import check_state
from nann.serving.tensorrt_build import profile_shapes

RAW = np.array([11, 25, 37, 40, 58], dtype=np.int64)


def raw_to_dense(raw):
    pos = np.searchsorted(RAW, raw)
    pos = np.clip(pos, 0, RAW.size - 1)
    return np.where(RAW[pos] == raw, pos, -1)


LIMITS = ServingLimits(max_seq=3, max_history=6, default_k=2, max_k=4, default_ef=(4, 5), default_rounds=(1, 2),
                       max_ef=10, max_rounds=3, default_frontier=3, max_frontier=8)


def test_history_maps_and_keeps_most_recent():
    assert parse_history(np.array([[11, 25, 37, 40]]), raw_to_dense, LIMITS).tolist() == [1, 2, 3]
    assert parse_history(np.array([58]), raw_to_dense, LIMITS).tolist() == [4]


@pytest.mark.parametrize("history, message", [
    (np.array([], dtype=np.int64), "history is empty"),
    (np.array([11] * 7), "more than the maximum 6"),
    (np.array([11, 12, -5]), "unknown item ids (2): 12, -5"),
    (np.array([2**62]), "unknown item ids"),
    (np.array([1.5, 2.0]), "integer"),
    (np.zeros((2, 2), dtype=np.int64), "shape"),
])
def test_bad_histories_are_refused_with_a_message(history, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_history(history, raw_to_dense, LIMITS)


def test_search_defaults_and_overrides():
    p = parse_search(None, None, None, LIMITS)
    assert (p.ef, p.rounds, p.top_m) == ((4, 5), (1, 2), 2)
    p = parse_search(np.array([[3]], dtype=np.int32), np.array([[2, 9]]), np.array([[3, 3]]), LIMITS)
    assert (p.ef, p.rounds, p.top_m) == ((2, 9), (3, 3), 3)
    # the last layer's ef grows to k so the result list can hold k items
    assert parse_search(np.array([4]), np.array([2, 2]), None, LIMITS).ef == (2, 4)


def test_search_frontier():
    assert parse_search(None, None, None, LIMITS).frontier == LIMITS.default_frontier
    assert parse_search(None, None, None, LIMITS, np.array([], dtype=np.int32)).frontier == LIMITS.default_frontier
    served = ServingLimits()
    assert parse_search(None, None, None, served).frontier == served.default_frontier
    p = parse_search(np.array([3]), np.array([2, 9]), np.array([3, 3]), LIMITS, np.array([[5]], dtype=np.int32))
    assert (p.ef, p.rounds, p.top_m, p.frontier) == ((2, 9), (3, 3), 3, 5)
    assert parse_search(None, None, None, LIMITS, np.array([0])).frontier == 0  # unlimited
    assert parse_search(None, None, None, LIMITS, np.array([8])).frontier == 8
    with pytest.raises(ValueError, match=r"default_frontier=9 is outside \[0, 8\]"):
        ServingLimits(default_frontier=9, max_frontier=8)


@pytest.mark.parametrize("frontier, message", [
    (np.array([-1]), r"frontier=-1 is outside \[0, 8\] \(0 = unlimited\)"),
    (np.array([9]), r"frontier=9 is outside \[0, 8\]"),
    (np.array([1, 2]), "frontier must be a single value, got 2"),
    (np.array([1.5]), "frontier must be an integer tensor"),
])
def test_bad_frontier_is_refused(frontier, message):
    with pytest.raises(RequestError, match=message):
        parse_search(None, None, None, LIMITS, frontier)


@pytest.mark.parametrize("k, ef, rounds, message", [
    (np.array([0]), None, None, r"k=0 is outside \[1, 4\]"),
    (np.array([5]), None, None, r"k=5 is outside"),
    (np.array([1, 2]), None, None, "single value"),
    (None, np.array([1]), None, "ef needs 2 values"),
    (None, np.array([0, 3]), None, r"ef=\[0, 3\] is outside \[1, 10\]"),
    (None, None, np.array([1, 4]), r"rounds=\[1, 4\] is outside \[1, 3\]"),
])
def test_bad_search_parameters_are_refused(k, ef, rounds, message):
    with pytest.raises(RequestError, match=message):
        parse_search(k, ef, rounds, LIMITS)


def test_limits_json_round_trip():
    assert ServingLimits.from_json(json.loads(json.dumps(LIMITS.to_json()))) == LIMITS
    # a repository exported before frontier existed: its limits lack the keys and get the defaults
    old = {key: value for key, value in LIMITS.to_json().items() if "frontier" not in key}
    assert ServingLimits.from_json(old).default_frontier == ServingLimits().default_frontier


def test_manifest_catches_missing_truncated_and_altered_files(tmp_path):
    (tmp_path / "graph").mkdir()
    (tmp_path / "a.npy").write_bytes(b"0123456789")
    (tmp_path / "graph" / "b.npy").write_bytes(b"abc")
    write_manifest(tmp_path)
    verify_manifest(tmp_path)
    (tmp_path / "a.npy").write_bytes(b"0123456788")
    with pytest.raises(ArtifactError, match="a.npy does not match its sha256"):
        verify_manifest(tmp_path)
    (tmp_path / "a.npy").write_bytes(b"01234")
    with pytest.raises(ArtifactError, match="a.npy has 5 bytes, expected 10"):
        verify_manifest(tmp_path)
    (tmp_path / "a.npy").write_bytes(b"0123456789")
    (tmp_path / "graph" / "b.npy").unlink()
    with pytest.raises(ArtifactError, match="b.npy is missing"):
        verify_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        verify_manifest(tmp_path)


def test_tensorrt_profiles_one_per_grid_size():
    specs = [{"name": "keys", "dtype": "float32", "dims": [50, 64]}, {"name": "bias", "dtype": "float32", "dims": [128]}]
    grid = CandidateGrid([1, 200, 400])
    profiles = profile_shapes(specs, grid, max_batch=64)
    assert len(profiles) == 3
    for size, p in zip([1, 200, 400], profiles):
        assert p["cand_ids"] == ((size,), (size,), (size,)) == p["owner"]
        assert p["keys"] == ((1, 50, 64), (8, 50, 64), (64, 50, 64))
        assert p["bias"][2] == (64, 128)


def test_config_rendering_helpers():
    specs = [{"name": "keys", "dtype": "float32", "dims": [50, 64]}]
    assert tensor_entries(specs, batched=True) == '  { name: "keys" data_type: TYPE_FP32 dims: [ 50, 64 ] }'
    assert "dims: [ -1, 50, 64 ]" in tensor_entries(specs, batched=False)
    assert pbtxt_string('{"a": "b\\c"}') == '{\\"a\\": \\"b\\\\c\\"}'


def test_state_checks_refuse_wrong_shapes_and_non_finite_values():
    shapes = {"keys": (1, 3, 2), "user_bias": (1, 4)}
    good = {"keys": np.zeros((1, 3, 2), np.float32), "user_bias": np.ones((1, 4), np.float32)}
    check_state(good, shapes)
    with pytest.raises(RequestError, match=r"keys must have shape \[1, 3, 2\], got \[2, 3, 2\]"):
        check_state({**good, "keys": np.zeros((2, 3, 2), np.float32)}, shapes)
    bad = good["user_bias"].copy()
    bad[0, 1] = np.nan
    with pytest.raises(RequestError, match="user_bias holds NaN or inf"):
        check_state({**good, "user_bias": bad}, shapes)
