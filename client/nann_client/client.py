"""Synchronous client: `NannClient` over `tritonclient.grpc.InferenceServerClient` (one gRPC channel)."""
from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

import tritonclient.grpc as grpcclient

from nann_client import _common as c
from nann_client.errors import NannError
from nann_client.types import RetrievalResult, ServerInfo

T = TypeVar("T")

__all__ = ["NannClient"]


class NannClient:
    """Blocking client of a NANN Serve (Triton) gRPC endpoint. Thread-safe; reuses one connection.

    Args:
        url: ``"HOST:PORT"`` of Triton's gRPC endpoint (e.g. ``"127.0.0.1:8001"``).
        model_name: the served ensemble (default ``"nann"``).
        timeout: default end-to-end budget of one call in seconds, retries and backoff included.
        retries: how many times a call is retried after a *transient* failure (gRPC UNAVAILABLE, e.g.
            connection refused). Invalid requests and timeouts are never retried.
        backoff: first retry delay in seconds; doubles on every retry.
        ssl, root_certificates, private_key, certificate_chain, creds, keepalive_options, channel_args:
            passed through to `tritonclient.grpc.InferenceServerClient`.
        headers: extra gRPC metadata sent with every call (e.g. auth tokens).

    Use as a context manager (``with NannClient(url) as client: ...``) or call `close()`.
    """

    def __init__(self, url: str, *, model_name: str = "nann", timeout: float = 10.0, retries: int = 3,
                 backoff: float = 0.1, ssl: bool = False, root_certificates: Optional[str] = None,
                 private_key: Optional[str] = None, certificate_chain: Optional[str] = None, creds: Any = None,
                 keepalive_options: Any = None, channel_args: Optional[List[Any]] = None,
                 headers: Optional[Dict[str, str]] = None) -> None:
        c.check_options(timeout, retries, backoff)
        self.url = url
        self.model_name = model_name
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._headers = dict(headers) if headers else None
        try:
            self._client = grpcclient.InferenceServerClient(
                url, ssl=ssl, root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain, creds=creds, keepalive_options=keepalive_options,
                channel_args=channel_args)
        except Exception as e:  # bad URL, unreadable certificate files, ...
            raise NannError(f"cannot create a gRPC client for {url}: {c.one_line(str(e))}") from e

    # ------------------------------------------------------------------ plumbing
    def __enter__(self) -> "NannClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NannClient({self.url!r}, model_name={self.model_name!r}, timeout={self.timeout}, retries={self.retries})"

    def close(self) -> None:
        """Close the gRPC channel. Idempotent."""
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _grpc(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            raise NannError(f"the client for {self.url} is closed")
        return self._client

    def _call(self, fn: Callable[[float], T], timeout: Optional[float]) -> T:
        """Run `fn(remaining_seconds)` with the retry policy; translate every failure to a NannError."""
        budget = self.timeout if timeout is None else float(timeout)
        if budget <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        deadline = time.monotonic() + budget
        delays = c.backoff_delays(self.retries, self.backoff)
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(max(deadline - time.monotonic(), 1e-3))
            except NannError:
                raise
            except Exception as e:
                if c.is_transient(e) and attempt <= len(delays):
                    delay = delays[attempt - 1]
                    if deadline - time.monotonic() > delay:
                        time.sleep(delay)
                        continue
                raise c.translate(e, url=self.url, attempts=attempt, timeout=budget) from e

    # ------------------------------------------------------------------ API
    def retrieve(self, history: Sequence[int], k: Optional[int] = None, *, timeout: Optional[float] = None,
                 **search: Any) -> RetrievalResult:
        """Top-k items for one user.

        Args:
            history: the user's raw item ids, oldest first (list, tuple or 1-D integer array). Empty (a new user)
                gets the model's cold-start items; ids the server does not know are dropped and counted
                (`RetrievalResult.dropped`) unless it was exported with `--unknown-ids refuse`.
            k: how many items to return (server default if None; the server enforces its `max_k`).
            timeout: budget of this call in seconds (the client's default if None).
            **search: per-request search options, each None = the server's default (`info().defaults`),
                bounded by `info().limits`:
                ef: per-layer beam widths, top layer first.
                rounds: per-layer search rounds, top layer first.
                frontier: at most this many beam-list entries expanded per round, best first; 0 = all of them.
                seeds: the history's most recent distinct items that join the bottom layer as entry points;
                    0 = none.
                patience: the bottom layer's walk stops once this many beam-list entries were expanded since a new
                    item last entered the top k; 0 = off.
            **filters: eligibility filters, each None = not sent (no filter). The walk still passes through the
                items a request may not get, so k eligible items come back whenever the walk meets k.
                exclude: raw item ids the user may not get (e.g. already bought); ids the server does not know
                    are ignored. At most `info().limits["max_exclude"]`.
                exclude_history: True = also exclude every known item of `history`.
                categories: raw category ids the items must belong to (an allow-list); an unknown one is refused.
                    At most `info().limits["max_categories"]`.
            The server's blocked set (`nann items block`) applies to every request.

        Returns:
            RetrievalResult with `item_ids` (int64) and `scores` (float32), best first, and `dropped`.

        Raises:
            InvalidRequestError: bad input (checked locally first, else the server's message verbatim).
            UnavailableError: the server could not be reached after the retries.
            RequestTimeoutError: no answer within `timeout`.
            ServerError: any other server-side failure.
            TypeError: an unknown search option or filter.
        """
        return self._infer(c.build_request(history, k=k, **search), timeout)

    def _infer(self, inputs, timeout: Optional[float]) -> RetrievalResult:
        client = self._grpc()
        result = self._call(lambda t: client.infer(self.model_name, inputs, client_timeout=t, headers=self._headers),
                            timeout)
        return c.parse_result(result)

    def retrieve_many(self, histories: Sequence[Sequence[int]], k: Optional[int] = None, *,
                      timeout: Optional[float] = None, max_concurrency: int = 32, **search: Any) -> List[RetrievalResult]:
        """Top-k items for many users, sent concurrently so the server's dynamic batcher can group them; the
        search options are `retrieve`'s, the same for every user.

        Every history is validated before anything is sent (an invalid one raises InvalidRequestError naming
        its index). At most `max_concurrency` requests are in flight; each has its own `timeout` budget and
        retry policy. Results come back in input order.

        On the first failed request no further requests are started, the ones in flight are allowed to finish
        (each bounded by `timeout`), then that failure is raised (same exception classes as `retrieve`).
        """
        c.check_options(self.timeout, self.retries, self.backoff, max_concurrency)
        requests = c.build_requests(histories, k=k, **search)
        if not requests:
            return []
        workers = min(max_concurrency, len(requests))
        if workers == 1:
            return [self._infer(r, timeout) for r in requests]
        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nann-client")
        try:
            futures = [pool.submit(self._infer, r, timeout) for r in requests]
            done, pending = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                for f in pending:
                    f.cancel()
                cf.wait(pending)
                raise failed[0].exception()
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def ready(self, timeout: Optional[float] = None) -> bool:
        """True when the server is live and the model is ready. Never raises (a down server gives False)."""
        client = self._client
        if client is None:
            return False
        t = self.timeout if timeout is None else float(timeout)
        try:
            return bool(client.is_server_live(headers=self._headers, client_timeout=t)
                        and client.is_model_ready(self.model_name, headers=self._headers, client_timeout=t))
        except Exception:
            return False

    def info(self, timeout: Optional[float] = None) -> ServerInfo:
        """The served model's `nann_info` (sizes, scorer backend, defaults, limits) and version."""
        client = self._grpc()
        config = self._call(lambda t: client.get_model_config(self.model_name, headers=self._headers,
                                                              as_json=True, client_timeout=t), timeout)
        metadata = self._call(lambda t: client.get_model_metadata(self.model_name, headers=self._headers,
                                                                  as_json=True, client_timeout=t), timeout)
        return c.parse_info(self.model_name, config, metadata, self.url)
