"""NANN Serve client SDK: top-k retrieval from a NANN model served on Triton (gRPC). No torch needed.

    from nann_client import NannClient
    with NannClient("127.0.0.1:8001") as client:
        result = client.retrieve([101, 202, 303], k=10)
        print(result.item_ids, result.scores)
"""
from nann_client.aio import AsyncNannClient
from nann_client.client import NannClient
from nann_client.errors import (InvalidRequestError, NannError, OverloadedError, RequestTimeoutError,
                                ServerError, UnavailableError)
from nann_client.types import RetrievalResult, ServerInfo

__version__ = "0.1.0"

__all__ = [
    "NannClient",
    "AsyncNannClient",
    "RetrievalResult",
    "ServerInfo",
    "NannError",
    "InvalidRequestError",
    "UnavailableError",
    "OverloadedError",
    "RequestTimeoutError",
    "ServerError",
    "__version__",
]
