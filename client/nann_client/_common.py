"""Pieces shared by the sync and asyncio clients: input validation, request building, result parsing,
error translation and the retry schedule. Private: the public API is in `client.py` / `aio.py`."""
from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional

import numpy as np
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from nann_client.errors import (InvalidRequestError, NannError, OverloadedError, RequestTimeoutError, ServerError,
                                UnavailableError)
from nann_client.types import RetrievalResult, ServerInfo

HISTORY = "history"
ITEM_IDS, SCORES, DROPPED = "item_ids", "scores", "dropped_ids"
INFO_PARAMETER = "nann_info"
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE"})
# Triton's messages (with status UNAVAILABLE) when a dynamic batcher's bounded queue refuses a request
OVERLOAD_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")

_INT64_MAX = np.iinfo(np.int64).max
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


# ---------------------------------------------------------------- validation

def id_list(name: str, ids: Any, what: str = "item ids") -> np.ndarray:
    """A 1-D integer sequence of raw ids → int64 array of shape [1, L] (the wire shape); empty is fine."""
    if isinstance(ids, (str, bytes)):
        raise InvalidRequestError(f"{name} must be a 1-D sequence of integer {what}, got {type(ids).__name__}")
    try:
        arr = np.asarray(ids)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidRequestError(f"{name} must be a 1-D sequence of integer {what}: {e}") from e
    if arr.ndim != 1:
        raise InvalidRequestError(f"{name} must be a 1-D sequence of integer {what}, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros((1, 0), dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidRequestError(f"{name} must hold integer {what}, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and int(arr.max()) > _INT64_MAX:
        raise InvalidRequestError(f"{name} holds {what} that do not fit in int64")
    return arr.astype(np.int64, copy=False).reshape(1, -1)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _single(low: int, note: str = "") -> Callable[[str, Any], np.ndarray]:
    """Check of a one-int option (at least `low`; `note` says what the low end means) → int32 [1, 1]."""
    note = f" ({note})" if note else ""

    def check(name: str, value: Any) -> np.ndarray:
        if not _is_int(value):
            kind = "positive" if low > 0 else "non-negative"
            raise InvalidRequestError(f"{name} must be a {kind} integer{note}, got {value!r}")
        if value < low:
            raise InvalidRequestError(f"{name}={int(value)} must be >= {low}{note}")
        if value > np.iinfo(np.int32).max:
            raise InvalidRequestError(f"{name}={int(value)} is too large")
        return np.array([[value]], dtype=np.int32)
    return check


def _per_layer(name: str, values: Any) -> np.ndarray:
    """Check of a per-layer option (`ef`, `rounds`): a non-empty 1-D sequence of positive ints → int32 [1, n]."""
    if _is_int(values):
        values = [values]
    if isinstance(values, (str, bytes)):
        raise InvalidRequestError(f"{name} must be a sequence of positive integers, got {type(values).__name__}")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as e:
        raise InvalidRequestError(f"{name} must be a sequence of positive integers: {e}") from e
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise InvalidRequestError(f"{name} must be a non-empty 1-D sequence of positive integers, got {values!r}")
    if (arr <= 0).any() or (arr > np.iinfo(np.int32).max).any():
        raise InvalidRequestError(f"{name} values must be positive 32-bit integers, got {arr.tolist()}")
    return arr.astype(np.int32).reshape(1, -1)


def _flag(name: str, value: Any) -> np.ndarray:
    """Check of a boolean option → bool [1, 1]."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidRequestError(f"{name} must be True or False, got {value!r}")
    return np.array([[value]], dtype=bool)


@dataclass(frozen=True)
class Option:
    """An optional per-request input of the `nann` model; None = not sent (the server's default applies)."""

    name: str
    check: Callable[[str, Any], np.ndarray]  # (name, value) → the wire array [1, n]; InvalidRequestError if bad
    datatype: str = "INT32"
    dims: int = 1  # the input's dims in the model config: 1 = one value, -1 = a list


# The server's twin (nann.serving.requests.REQUEST_INPUTS: its search tunables, then its filters), kept here so that
# the SDK installs without the server package; the server's tests tie the two (names, datatypes, dims, lower bounds).
OPTIONS = (
    Option("k", _single(1)),
    Option("ef", _per_layer, dims=-1),
    Option("rounds", _per_layer, dims=-1),
    Option("frontier", _single(0, "0 = unlimited")),
    Option("seeds", _single(0, "0 = none")),
    Option("patience", _single(0, "0 = off")),
    Option("exclude", id_list, "INT64", dims=-1),
    Option("exclude_history", _flag, "BOOL"),
    Option("categories", lambda name, ids: id_list(name, ids, "category ids"), "INT64", dims=-1),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)


# ---------------------------------------------------------------- request / response

def _tensor(name: str, arr: np.ndarray, datatype: str) -> InferInput:
    tensor = InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def build_request(history: Any, **options: Any) -> List[InferInput]:
    """Validate and build the Triton inputs of one retrieval request (`OPTIONS` by name; None = not sent).

    No outputs are named, so the server sends all of its outputs (`dropped_ids` only where it has it)."""
    unexpected = sorted(set(options) - set(OPTION_NAMES))
    if unexpected:
        raise TypeError(f"unexpected search option {', '.join(unexpected)} (known: {', '.join(OPTION_NAMES)})")
    inputs = [_tensor(HISTORY, id_list(HISTORY, history), "INT64")]  # empty: a new user, answered cold-start
    for option in OPTIONS:
        value = options.get(option.name)
        if value is not None:
            inputs.append(_tensor(option.name, option.check(option.name, value), option.datatype))
    return inputs


def build_requests(histories: Any, **options: Any) -> List[List[InferInput]]:
    """`build_request` for every history (all validated before anything is sent; an invalid one named by index)."""
    requests = []
    for i, history in enumerate(histories):
        try:
            requests.append(build_request(history, **options))
        except InvalidRequestError as e:
            raise InvalidRequestError(f"histories[{i}]: {e.message}") from e
    return requests


def parse_result(result: Any) -> RetrievalResult:
    """tritonclient InferResult → RetrievalResult (arrays copied, flattened from the wire shape [1, k]; `dropped`
    0 from a server without the `dropped_ids` output)."""
    ids = result.as_numpy(ITEM_IDS)
    scores = result.as_numpy(SCORES)
    if ids is None or scores is None:
        raise ServerError(f"the server's response lacks the {ITEM_IDS!r} or {SCORES!r} output")
    ids = np.array(ids, dtype=np.int64).reshape(-1)
    scores = np.array(scores, dtype=np.float32).reshape(-1)
    if ids.shape != scores.shape:
        raise ServerError(f"the server returned {ids.size} item ids but {scores.size} scores")
    dropped = result.as_numpy(DROPPED)
    return RetrievalResult(item_ids=ids, scores=scores, dropped=0 if dropped is None else int(dropped.reshape(-1)[0]))


def parse_info(model_name: str, config: dict, metadata: dict, url: str) -> ServerInfo:
    """Build ServerInfo from `get_model_config(as_json=True)` and `get_model_metadata(as_json=True)`."""
    cfg = config.get("config", config)
    param = (cfg.get("parameters") or {}).get(INFO_PARAMETER) or {}
    text = param.get("string_value")
    if not text:
        raise ServerError(f"model {model_name!r} at {url} has no {INFO_PARAMETER!r} parameter in its config")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise ServerError(f"model {model_name!r} at {url}: {INFO_PARAMETER!r} is not a JSON object: {e}") from e
    versions = [str(v) for v in metadata.get("versions") or []]
    version = max(versions, key=lambda v: (int(v) if v.isdigit() else -1, v)) if versions else ""
    try:
        return ServerInfo(
            model_name=model_name,
            model_version=version,
            num_items=int(raw.get("num_items", 0)),
            emb_dim=int(raw.get("emb_dim", 0)),
            scorer_backend=str(raw.get("scorer_backend", "")),
            defaults=dict(raw.get("defaults") or {}),
            limits=dict(raw.get("limits") or {}),
            max_batch_size=int(cfg.get("max_batch_size", 0) or 0),
            raw=raw,
        )
    except (TypeError, ValueError) as e:
        raise ServerError(f"model {model_name!r} at {url}: malformed {INFO_PARAMETER!r}: {e}") from e


# ---------------------------------------------------------------- errors and retries

def status_name(exc: BaseException) -> Optional[str]:
    """'StatusCode.INVALID_ARGUMENT' → 'INVALID_ARGUMENT' (None when there is no status)."""
    status = exc.status() if isinstance(exc, InferenceServerException) else None
    if not status:
        return None
    return str(status).rsplit(".", 1)[-1]


def error_message(exc: BaseException) -> str:
    """The server's message, without Triton's "in ensemble 'nann', " wrapper of an ensemble step's error."""
    if isinstance(exc, InferenceServerException):
        msg = exc.message()
        msg = str(msg) if msg is not None else str(exc)
        return _ENSEMBLE_PREFIX.sub("", msg, count=1)
    return str(exc)


def raw_message(exc: BaseException) -> Optional[str]:
    if isinstance(exc, InferenceServerException) and exc.message() is not None:
        return str(exc.message())
    return None


def is_overload(exc: BaseException) -> bool:
    """gRPC UNAVAILABLE from a full (or timed-out) queue of the server: it is up, past its capacity."""
    return (isinstance(exc, InferenceServerException) and status_name(exc) == "UNAVAILABLE"
            and any(m in error_message(exc) for m in OVERLOAD_MESSAGES))


def is_transient(exc: BaseException) -> bool:
    """Only gRPC UNAVAILABLE (which includes 'connection refused') and plain connection errors are retried; not an
    overloaded server's refusal."""
    if isinstance(exc, InferenceServerException):
        return status_name(exc) in TRANSIENT_STATUSES and not is_overload(exc)
    return isinstance(exc, ConnectionError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def translate(exc: BaseException, *, url: str, attempts: int = 1, timeout: Optional[float] = None) -> NannError:
    """Map a tritonclient/gRPC exception to the SDK hierarchy (the caller raises it `from exc`)."""
    if isinstance(exc, NannError):
        return exc
    err = _translate(exc, url=url, attempts=attempts, timeout=timeout)
    err.server_message = raw_message(exc)
    return err


def _translate(exc: BaseException, *, url: str, attempts: int, timeout: Optional[float]) -> NannError:
    status = status_name(exc)
    msg = error_message(exc)
    if status == "INVALID_ARGUMENT":
        return InvalidRequestError(msg, status=status)
    if is_overload(exc):
        return OverloadedError(f"NANN server at {url} is overloaded and refused the request: {one_line(msg)}",
                               url=url, attempts=attempts, status=status)
    if is_transient(exc):
        return UnavailableError(
            f"NANN server at {url} is unavailable after {attempts} attempt{'s' if attempts != 1 else ''}: "
            f"{one_line(msg)}", url=url, attempts=attempts, status=status)
    if status == "DEADLINE_EXCEEDED":
        limit = f" of {timeout:g} s" if timeout is not None else ""
        return RequestTimeoutError(f"request to NANN server at {url} exceeded its timeout{limit}", status=status)
    if status is None and not isinstance(exc, InferenceServerException):
        return NannError(f"request to NANN server at {url} failed: {type(exc).__name__}: {one_line(msg)}")
    return ServerError(msg, status=status)


def backoff_delays(retries: int, backoff: float) -> Iterable[float]:
    """Exponential backoff: backoff, 2*backoff, 4*backoff, ... (`retries` values)."""
    return [backoff * (2 ** i) for i in range(max(0, retries))]


def check_options(timeout: float, retries: int, backoff: float, max_concurrency: Optional[int] = None) -> None:
    if not (timeout is None or timeout > 0):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries!r}")
    if backoff < 0:
        raise ValueError(f"backoff must be >= 0, got {backoff!r}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
