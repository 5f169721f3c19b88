"""asyncio client: `AsyncNannClient` over `tritonclient.grpc.aio.InferenceServerClient`."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, TypeVar

import tritonclient.grpc.aio as aioclient

from nann_client import _common as c
from nann_client.errors import NannError
from nann_client.types import RetrievalResult, ServerInfo

T = TypeVar("T")

__all__ = ["AsyncNannClient"]


class AsyncNannClient:
    """asyncio client of a NANN Serve (Triton) gRPC endpoint; the same API as `NannClient`, awaitable.

    Use ``async with AsyncNannClient(url) as client: ...`` (or ``await client.close()``). The gRPC channel
    is opened on first use inside the running event loop and reused; use one client per event loop.
    Arguments are those of `NannClient`.
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
        self._client_kwargs = dict(ssl=ssl, root_certificates=root_certificates, private_key=private_key,
                                   certificate_chain=certificate_chain, creds=creds,
                                   keepalive_options=keepalive_options, channel_args=channel_args)
        self._client: Optional[aioclient.InferenceServerClient] = None
        self._closed = False

    async def __aenter__(self) -> "AsyncNannClient":
        self._grpc()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (f"AsyncNannClient({self.url!r}, model_name={self.model_name!r}, timeout={self.timeout}, "
                f"retries={self.retries})")

    async def close(self) -> None:
        """Close the gRPC channel. Idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:
                pass

    def _grpc(self) -> aioclient.InferenceServerClient:
        if self._closed:
            raise NannError(f"the client for {self.url} is closed")
        if self._client is None:
            try:
                self._client = aioclient.InferenceServerClient(self.url, **self._client_kwargs)
            except Exception as e:
                raise NannError(f"cannot create a gRPC client for {self.url}: {c.one_line(str(e))}") from e
        return self._client

    async def _call(self, fn: Callable[[float], Awaitable[T]], timeout: Optional[float]) -> T:
        budget = self.timeout if timeout is None else float(timeout)
        if budget <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        deadline = time.monotonic() + budget
        delays = c.backoff_delays(self.retries, self.backoff)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn(max(deadline - time.monotonic(), 1e-3))
            except NannError:
                raise
            except Exception as e:
                if c.is_transient(e) and attempt <= len(delays):
                    delay = delays[attempt - 1]
                    if deadline - time.monotonic() > delay:
                        await asyncio.sleep(delay)
                        continue
                raise c.translate(e, url=self.url, attempts=attempt, timeout=budget) from e

    async def _infer(self, inputs, timeout: Optional[float]) -> RetrievalResult:
        client = self._grpc()
        result = await self._call(lambda t: client.infer(self.model_name, inputs, client_timeout=t,
                                                         headers=self._headers), timeout)
        return c.parse_result(result)

    async def retrieve(self, history: Sequence[int], k: Optional[int] = None, *, timeout: Optional[float] = None,
                       **search: Any) -> RetrievalResult:
        """Top-k items for one user; see `NannClient.retrieve` (the same search options)."""
        return await self._infer(c.build_request(history, k=k, **search), timeout)

    async def retrieve_many(self, histories: Sequence[Sequence[int]], k: Optional[int] = None, *,
                            timeout: Optional[float] = None, max_concurrency: int = 32,
                            **search: Any) -> List[RetrievalResult]:
        """Top-k items for many users, at most `max_concurrency` requests in flight; results in input order.

        Every history is validated before anything is sent. On the first failed request the others still
        running or waiting are cancelled (and awaited), then that failure is raised.
        """
        c.check_options(self.timeout, self.retries, self.backoff, max_concurrency)
        requests = c.build_requests(histories, k=k, **search)
        if not requests:
            return []
        sem = asyncio.Semaphore(max_concurrency)

        async def one(req) -> RetrievalResult:
            async with sem:
                return await self._infer(req, timeout)

        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:  # the caller was cancelled: cancel ours too
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failed = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
        if failed:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise failed[0].exception()
        return [t.result() for t in tasks]

    async def ready(self, timeout: Optional[float] = None) -> bool:
        """True when the server is live and the model is ready. Never raises."""
        t = self.timeout if timeout is None else float(timeout)
        try:
            client = self._grpc()
            return bool(await client.is_server_live(headers=self._headers, client_timeout=t)
                        and await client.is_model_ready(self.model_name, headers=self._headers, client_timeout=t))
        except Exception:
            return False

    async def info(self, timeout: Optional[float] = None) -> ServerInfo:
        """The served model's `nann_info` and version; see `NannClient.info`."""
        client = self._grpc()
        config = await self._call(lambda t: client.get_model_config(self.model_name, headers=self._headers,
                                                                    as_json=True, client_timeout=t), timeout)
        metadata = await self._call(lambda t: client.get_model_metadata(self.model_name, headers=self._headers,
                                                                        as_json=True, client_timeout=t), timeout)
        return c.parse_info(self.model_name, config, metadata, self.url)
