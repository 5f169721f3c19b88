"""Serving logic without a server: request validation, `retrieve`'s encoder, manifests, TensorRT profiles,
config rendering."""
import json

import numpy as np
import pytest

from nann.engine.grid import CandidateGrid
from nann.engine.params import DEFAULT_SEARCH, SearchParams
from nann.errors import UserError
from nann.runtime import ModelRuntime
from nann.scorers.tensorrt import profile_shapes
from nann.serving.export import export_repository, pbtxt_string, search_input_entries, step_map
from nann.serving.repository import ArtifactError, verify_manifest, write_manifest
from nann.serving.requests import REQUEST_INPUT_NAMES, RequestError, ServingLimits, parse_history, parse_search
from nann.serving.services import RequestEncoder, runtime_options
from nann.serving.templates import tensor_entries

try:
    from tests.test_trainer_export import make_run
except ImportError:
    from test_trainer_export import make_run

RAW = np.array([11, 25, 37, 40, 58], dtype=np.int64)


def raw_to_dense(raw):
    pos = np.searchsorted(RAW, raw)
    pos = np.clip(pos, 0, RAW.size - 1)
    return np.where(RAW[pos] == raw, pos, -1)


LIMITS = ServingLimits(max_seq=3, max_history=6,
                       defaults=SearchParams(ef=(4, 5), rounds=(1, 2), top_m=2, frontier=3, seeds=1),
                       maxima={"k": 4, "ef": 10, "rounds": 3, "frontier": 8})
STRICT = ServingLimits(max_seq=3, max_history=6, unknown_ids="refuse")


def test_history_maps_and_keeps_most_recent():
    dense, dropped = parse_history(np.array([[11, 25, 37, 40]]), raw_to_dense, LIMITS)
    assert dense.tolist() == [1, 2, 3] and dropped == 0
    assert parse_history(np.array([58]), raw_to_dense, LIMITS)[0].tolist() == [4]


def test_unknown_ids_are_dropped_and_counted_or_refused():
    # skip (the default): as if the unknown ids had not been sent, also for which behaviours are the most recent
    dense, dropped = parse_history(np.array([11, 25, 12, 37, 2**62, 40]), raw_to_dense, LIMITS)
    assert dense.tolist() == parse_history(np.array([11, 25, 37, 40]), raw_to_dense, LIMITS)[0].tolist() == [1, 2, 3]
    assert dropped == 2
    assert ServingLimits().unknown_ids == "skip"
    with pytest.raises(RequestError, match=r"unknown item ids \(2\): 12, -5"):
        parse_history(np.array([11, 12, -5]), raw_to_dense, STRICT)
    with pytest.raises(ValueError, match="unknown_ids='drop' is not one of skip, refuse"):
        ServingLimits(unknown_ids="drop")


@pytest.mark.parametrize("limits", [LIMITS, STRICT])
def test_a_new_user_is_served_in_both_policies(limits):
    for empty in (np.array([], dtype=np.int64), np.zeros((1, 0), dtype=np.int64)):
        dense, dropped = parse_history(empty, raw_to_dense, limits)
        assert dense.size == 0 and dropped == 0
    if limits.unknown_ids == "skip":  # nothing known: the same cold-start request
        dense, dropped = parse_history(np.array([12, 13]), raw_to_dense, limits)
        assert dense.size == 0 and dropped == 2


@pytest.mark.parametrize("history, message", [
    (np.array([11] * 7), "more than the maximum 6"),
    (np.array([99] * 7), "more than the maximum 6"),  # counted as sent, before unknown ids are dropped
    (np.array([1.5, 2.0]), "integer"),
    (np.zeros((2, 2), dtype=np.int64), "shape"),
])
def test_bad_histories_are_refused_with_a_message(history, message):
    with pytest.raises(RequestError, match=message):
        parse_history(history, raw_to_dense, LIMITS)


def test_search_defaults_and_overrides():
    p = parse_search(LIMITS)
    assert (p.ef, p.rounds, p.top_m, p.frontier, p.seeds) == ((4, 5), (1, 2), 2, 3, 1)
    p = parse_search(LIMITS, k=np.array([[3]], dtype=np.int32), ef=np.array([[2, 9]]), rounds=np.array([[3, 3]]))
    assert (p.ef, p.rounds, p.top_m) == ((2, 9), (3, 3), 3)
    # a k above the last layer's ef is a request as sent: the engine's last list grows to k (SearchParams.walk_ef)
    p = parse_search(LIMITS, k=np.array([4]), ef=np.array([2, 2]))
    assert p.ef == (2, 2) and p.walk_ef == (2, 4)
    # offline callers may pass plain ints and sequences
    assert parse_search(LIMITS, k=3, rounds=(2, 2)) == parse_search(LIMITS, k=np.array([3]), rounds=np.array([2, 2]))
    with pytest.raises(TypeError, match=r"unexpected search inputs \['sedes'\]"):
        parse_search(LIMITS, sedes=np.array([1]))


def test_search_frontier_and_seeds():
    for name in ("frontier", "seeds"):
        default = LIMITS.default(name)
        assert getattr(parse_search(LIMITS), name) == default
        assert getattr(parse_search(LIMITS, **{name: np.array([], dtype=np.int32)}), name) == default
        assert getattr(parse_search(ServingLimits()), name) == ServingLimits().default(name)
        assert getattr(parse_search(LIMITS, **{name: np.array([0])}), name) == 0  # unlimited / none
    p = parse_search(LIMITS, k=np.array([3]), frontier=np.array([[5]], dtype=np.int32), seeds=np.array([[2]]))
    assert (p.top_m, p.frontier, p.seeds) == (3, 5, 2)
    assert parse_search(LIMITS, frontier=np.array([8])).frontier == 8
    assert LIMITS.maximum("seeds") == LIMITS.max_seq == 3 and parse_search(LIMITS, seeds=np.array([3])).seeds == 3
    with pytest.raises(ValueError, match=r"default_frontier: frontier=9 is outside \[0, 8\]"):
        ServingLimits(defaults=SearchParams(frontier=9), maxima={"frontier": 8})
    with pytest.raises(ValueError, match=r"default_seeds: seeds=4 is outside \[0, 3\]"):
        ServingLimits(max_seq=3, defaults=SearchParams(seeds=4))


@pytest.mark.parametrize("inputs, message", [
    ({"frontier": np.array([-1])}, r"frontier=-1 is outside \[0, 8\] \(0 = unlimited\)"),
    ({"frontier": np.array([9])}, r"frontier=9 is outside \[0, 8\]"),
    ({"frontier": np.array([1, 2])}, "frontier must be a single value, got 2"),
    ({"frontier": np.array([1.5])}, "frontier must be an integer tensor"),
    ({"seeds": np.array([-1])}, r"seeds=-1 is outside \[0, 3\] \(0 = none\)"),
    ({"seeds": np.array([4])}, r"seeds=4 is outside \[0, 3\]"),
    ({"seeds": np.array([1, 1])}, "seeds must be a single value, got 2"),
    ({"seeds": np.array([True])}, "seeds must be an integer tensor"),
    ({"patience": np.array([-1])}, r"patience=-1 is outside \[0, 4096\] \(0 = off\)"),
    ({"patience": np.array([4097])}, r"patience=4097 is outside \[0, 4096\]"),
    ({"k": np.array([0])}, r"k=0 is outside \[1, 4\]"),
    ({"k": np.array([5])}, r"k=5 is outside"),
    ({"k": np.array([1, 2])}, "single value"),
    ({"ef": np.array([1])}, r"ef and rounds need one value per layer each, got 1 and 2 \(send both"),
    ({"ef": np.ones(9, np.int32)}, r"ef needs 1 to 8 values \(one per layer, top first\), got 9"),
    ({"ef": np.array([0, 3])}, r"ef=\[0, 3\] is outside \[1, 10\]"),
    ({"rounds": np.array([1, 4])}, r"rounds=\[1, 4\] is outside \[1, 3\]"),
    ({"rounds": np.zeros((2, 2), np.int32)}, r"rounds must have shape \[n\] or \[1, n\]"),
])
def test_bad_search_parameters_are_refused(inputs, message):
    with pytest.raises(RequestError, match=message):
        parse_search(LIMITS, **inputs)


def test_limits_json_round_trip_and_published_info():
    assert ServingLimits.from_json(json.loads(json.dumps(LIMITS.to_json()))) == LIMITS
    assert ServingLimits.from_json(json.loads(json.dumps(STRICT.to_json()))).unknown_ids == "refuse"
    # a repository exported before frontier / seeds / unknown_ids existed: its limits lack the keys
    old = {key: value for key, value in LIMITS.to_json().items()
           if not any(new in key for new in ("frontier", "seeds", "patience", "unknown_ids"))}
    assert ServingLimits.from_json(old).default("frontier") == ServingLimits().default("frontier")
    assert ServingLimits.from_json(old).default("seeds") == min(ServingLimits().default("seeds"), LIMITS.max_seq)
    # the search default seeds from at most the behaviours a model keeps
    assert ServingLimits(max_seq=3).default("seeds") == 3
    assert ServingLimits(max_seq=500).default("seeds") == DEFAULT_SEARCH.seeds
    assert ServingLimits.from_json(old).unknown_ids == "skip"
    assert ServingLimits.from_json(old).default("patience") == DEFAULT_SEARCH.patience
    published = LIMITS.published()
    assert published["defaults"] == {"k": 2, "ef": [4, 5], "rounds": [1, 2], "frontier": 3, "seeds": 1,
                                    "patience": 0}
    assert published["limits"] == {"max_history": 6, "max_k": 4, "max_ef": 10, "max_rounds": 3, "max_frontier": 8,
                                   "max_seeds": 3, "max_patience": 4096, "max_exclude": 10_000, "max_categories": 1_000}
    assert published["unknown_ids"] == "skip" and STRICT.published()["unknown_ids"] == "refuse"


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
    with pytest.raises(UserError, match="needs a padded candidate grid"):
        profile_shapes(specs, CandidateGrid.unpadded(), max_batch=64)


def test_config_rendering_helpers():
    specs = [{"name": "keys", "dtype": "float32", "dims": [50, 64]}]
    assert tensor_entries(specs) == '  { name: "keys" data_type: TYPE_FP32 dims: [ -1, 50, 64 ] }'
    assert pbtxt_string('{"a": "b\\c"}') == '{\\"a\\": \\"b\\\\c\\"}'
    # the optional inputs come from two tables (search parameters, filters): the ensemble's, retrieve's (ragged) and
    # the step's map
    entries = search_input_entries(ragged=False).splitlines()
    assert [line.split('"')[1] for line in entries] == list(REQUEST_INPUT_NAMES)
    assert entries[4] == '  { name: "seeds" data_type: TYPE_INT32 dims: [ 1 ] optional: true },'
    assert entries[5] == '  { name: "patience" data_type: TYPE_INT32 dims: [ 1 ] optional: true },'
    assert entries[7] == '  { name: "exclude_history" data_type: TYPE_BOOL dims: [ 1 ] optional: true },'
    assert entries[-1] == '  { name: "categories" data_type: TYPE_INT64 dims: [ -1 ] optional: true }'
    assert all(line.endswith("allow_ragged_batch: true },") or line.endswith("allow_ragged_batch: true }")
               for line in search_input_entries(ragged=True).splitlines())
    assert '{ name: "ef" data_type: TYPE_INT32 dims: [ -1 ] optional: true }' in entries[1]
    assert step_map("input_map", ["k", "seeds"]).splitlines() == [
        '      input_map { key: "k" value: "k" }', '      input_map { key: "seeds" value: "seeds" }']


# ---------------------------------------------------------------- `retrieve`'s encoder

ENCODER_RAW = 1000 + 7 * np.arange(200, dtype=np.int64)  # raw id of each dense item of `encoder_run`


@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory):
    """A random attention model's run artifacts (200 items, max_seq 10) with a vocabulary."""
    d = tmp_path_factory.mktemp("encoder_run")
    make_run(d, "attention", n_items=200, max_seq=10)
    np.save(d / "items.npy", ENCODER_RAW)
    np.save(d / "item_category.npy", np.zeros(200, np.int32))
    return d


def test_request_encoder_gives_retrieve_the_state_the_kept_ids_and_the_dropped_count(encoder_run):
    served = RequestEncoder(encoder_run, ServingLimits(max_seq=10), threads=1, spinning=False)  # as the stub runs it
    library = ModelRuntime.load(encoder_run)  # default threads and spinning, as OfflineRetriever runs it
    history = np.concatenate([ENCODER_RAW[[3, 5]], [999_999], ENCODER_RAW[20:32]])
    got = served.encode(history.reshape(1, -1))
    assert got.hist_ids.tolist() == list(range(22, 32)) and got.dropped == 1  # the most recent 10 known ids
    assert set(got.state) == set(library.state_names) and got.hist_ids.dtype == np.int64
    want = library.encode([np.arange(22, 32)])
    assert all(np.array_equal(got.state[name], want[name]) for name in library.state_names)  # bitwise
    short = served.encode(ENCODER_RAW[[4, 9]])  # the state's history axis padded to max_seq
    assert short.hist_ids.tolist() == [4, 9] and short.state["keys"].shape == (1, 10, 64)
    want = library.encode([[4, 9]], length=10)
    assert all(np.array_equal(short.state[name], want[name]) for name in library.state_names)
    with pytest.raises(RuntimeError, match="without its scorer"):  # the encoder loads no scorer session
        served.runtime.score(got.state, np.zeros(1, np.int64), np.zeros(1, np.int64))


def test_request_encoder_serves_new_users_and_refuses_in_strict_mode(encoder_run):
    encoder = RequestEncoder(encoder_run, ServingLimits(max_seq=10))
    empty, unknown = encoder.encode(np.zeros(0, np.int64)), encoder.encode(np.array([5, 999_999]))
    assert (empty.dropped, unknown.dropped) == (0, 2)
    assert empty.hist_ids.tolist() == unknown.hist_ids.tolist() == []
    assert all(np.array_equal(empty.state[name], unknown.state[name]) and np.isfinite(empty.state[name]).all()
               for name in empty.state)
    strict = RequestEncoder(encoder_run, ServingLimits(max_seq=10, unknown_ids="refuse"))
    with pytest.raises(RequestError, match=r"unknown item ids \(1\): 999999"):
        strict.encode(np.array([ENCODER_RAW[0], 999_999]))
    with pytest.raises(RequestError, match=r"history must have shape \[n\] or \[1, n\], got \[2, 2\]"):
        encoder.encode(np.stack([ENCODER_RAW[:2], ENCODER_RAW[2:4]]))


def test_runtime_options_from_config_parameters():
    assert runtime_options({"backend": "torch", "intra_op_threads": "0", "spinning": "false"}) == {
        "backend": "torch", "threads": None, "spinning": False}
    assert runtime_options({"encoder_backend": "torch", "encoder_intra_op_threads": "1", "encoder_spinning": "false",
                            "backend": "onnxruntime"}, "encoder_") == {"backend": "torch", "threads": 1, "spinning": False}
    assert runtime_options({"backend": "onnxruntime", "intra_op_threads": "1", "spinning": "true"}) == {
        "backend": "onnxruntime", "threads": 1, "spinning": True}


@pytest.mark.parametrize("model", ["user_encoder", "encode"])
def test_export_refuses_a_repository_of_an_older_layout(tmp_path, model):
    (tmp_path / "repo" / model / "1").mkdir(parents=True)
    with pytest.raises(UserError, match=f"holds {model} of an older layout .* export into a fresh repository"):
        export_repository(tmp_path / "run", tmp_path / "repo")


def test_scorer_auto_times_both_runtimes_at_the_walks_call_sizes(encoder_run, monkeypatch):
    """`--scorer auto` decides on round-sized calls (ROUND_SHAPES: one owner run per user, in order), not on one
    big batch: the call size decides which runtime is faster."""
    from nann.serving.export import ROUND_SHAPES, measure_cpu_backends

    seen = []
    score = ModelRuntime.score

    def recording(self, state, owner, ids):
        seen.append((self.backend, len(next(iter(state.values()))), np.bincount(owner).tolist(),
                     bool((np.diff(owner) >= 0).all())))
        return score(self, state, owner, ids)

    monkeypatch.setattr(ModelRuntime, "score", recording)
    speeds = measure_cpu_backends(encoder_run, calls=2, repeats=2)
    assert set(speeds) == {"onnxruntime", "torch"} and all(v > 0 for v in speeds.values())
    for backend in speeds:
        shapes = {(users, tuple(counts), ordered) for b, users, counts, ordered in seen if b == backend}
        assert shapes == {(users, (per_user,) * users, True) for users, per_user in ROUND_SHAPES}


def test_load_failure_is_read_from_tritonservers_log():
    """The first failed model load names the model and Triton's error up to its traceback (a literal \\n in the log);
    without one, a failed server creation; else nothing (e.g. a load still in progress)."""
    from nann.serving.server import load_failure

    loading = ('I1206 04:06:05.490783 8505 model_lifecycle.cc:472] "loading: scorer:1"\n'
               'I1206 04:06:09.807497 8505 model_lifecycle.cc:839] "successfully loaded \'retrieve\'"\n')
    failed = ('E1206 04:06:10.044377 8505 model_lifecycle.cc:642] "failed to load \'scorer\' version 1: Internal: '
              'ArtifactError: artifact /r/scorer/1/scorer.onnx does not match its sha256 checksum\\n\\nAt:\\n  '
              '/r/scorer/1/model.py(10): initialize\\n"\n'
              'I1206 04:06:10.044394 8505 model_lifecycle.cc:777] "failed to load \'scorer\'"\n')
    fatal = "error: creating server: Internal - failed to load all models\n"
    assert load_failure(loading) is None
    assert load_failure(loading + failed + fatal) == (
        "scorer", "Internal: ArtifactError: artifact /r/scorer/1/scorer.onnx does not match its sha256 checksum")
    assert load_failure('E1206 04:06:10.1 1 model_lifecycle.cc:642] "failed to load \'encode\' version 2: '
                        'Invalid argument: bad config"\n') == ("encode", "Invalid argument: bad config")
    assert load_failure(loading + fatal) == (None, "Internal - failed to load all models")


def test_free_ports_are_distinct_and_skip_the_taken_ones():
    from nann.serving.server import free_ports

    first = free_ports(1)[0]
    ports = free_ports(40, taken={first})
    assert len(set(ports)) == 40 and first not in ports


def test_wait_for_group_exit_returns_once_the_killed_group_is_gone():
    """`TritonServer.stop` waits for its SIGKILLed process group (the server's stubs) to be gone; zombies do not count."""
    import os
    import signal
    import subprocess

    from nann.serving.server import live_group_members, wait_for_group_exit

    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert live_group_members(proc.pid) == [proc.pid]
        os.killpg(proc.pid, signal.SIGKILL)
        wait_for_group_exit(proc.pid)
        assert live_group_members(proc.pid) == []  # dead; a zombie until waited for, which does not count
    finally:
        proc.kill()
        proc.wait()
