"""`nann query`: ask a running NANN server for one user's top-k, through the client SDK; `--info`: what the server
says about itself, and its blocked set from its metrics."""
from __future__ import annotations

import json
import re
import sys
import urllib.request

from nann.engine.params import TUNABLES
from nann.errors import UserError


def parse_history(text: str) -> list[int]:
    """'1,2, 3' → [1, 2, 3] ('' → [], a new user); anything else → UserError with a one-line message."""
    parts = [p.strip() for p in str(text).split(",")]
    parts = [p for p in parts if p]
    ids = []
    for p in parts:
        try:
            ids.append(int(p))
        except ValueError:
            raise UserError(f"--history: {p!r} is not an integer item id (expected e.g. 101,202,303)") from None
    return ids


def format_table(item_ids, scores) -> str:
    """Rank, item id, score (best first)."""
    rows = [f"{'rank':>4}  {'item_id':>12}  score"]
    for rank, (item, score) in enumerate(zip(item_ids, scores), start=1):
        rows.append(f"{rank:>4}  {int(item):>12}  {float(score):.6f}")
    return "\n".join(rows)


def print_answer(item_ids, scores, dropped: int, as_json: bool) -> None:
    """What `nann query` and `nann retrieve` print: one JSON object, or the table (and a note on stderr when
    history ids the index does not know were dropped)."""
    if as_json:
        print(json.dumps({"item_ids": [int(x) for x in item_ids], "scores": [float(x) for x in scores],
                          "dropped": int(dropped)}))
    else:
        print(format_table(item_ids, scores))
        if dropped:
            print(f"note: {dropped} unknown item id{'s' if dropped != 1 else ''} dropped from the history",
                  file=sys.stderr)
    sys.stdout.flush()


def metric_value(text: str, name: str) -> float | None:
    """The value of Prometheus metric `name` in a /metrics page: its series with the highest `version` label (the
    newest model version while two are loaded); None when absent."""
    values = {}
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            labels, value = line.rsplit(" ", 1)
            version = re.search(r'version="(\d+)"', labels)
            values[int(version.group(1)) if version else 0] = float(value)
    return values[max(values)] if values else None


def blocked_info(metrics_url: str, timeout: float) -> dict | None:
    """{"items", "version"} of the server's blocked set from its gauges (nann.serving.filters.BLOCKED_GAUGES); None
    (and a note on stderr) when the metrics endpoint cannot be read or lacks them."""
    from nann.serving.filters import BLOCKED_GAUGES

    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
            text = r.read().decode()
    except OSError as e:
        print(f"note: no blocked-set count: cannot read {metrics_url}: {e}", file=sys.stderr)
        return None
    found = {field: metric_value(text, name) for name, (_, field) in BLOCKED_GAUGES.items()}
    if None in found.values():
        print(f"note: {metrics_url} has no blocked-set gauges (a server exported before filters existed)",
              file=sys.stderr)
        return None
    return {"items": int(found["count"]), "version": int(found["version"])}


def main(args) -> int:
    from nann_client import (InvalidRequestError, NannClient, NannError, RequestTimeoutError,
                             UnavailableError)

    if args.history is None and not args.info:
        raise UserError("--history is required (or --info)")
    history = None if args.info else parse_history(args.history)
    if args.top_m is not None and args.top_m <= 0:
        raise UserError(f"--k must be a positive integer, got {args.top_m}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout}")
    timeout = 10.0 if args.timeout is None else args.timeout

    def one_line(e: Exception) -> str:
        return " ".join(str(e).split())

    try:
        with NannClient(args.url, timeout=timeout) as client:
            if args.info:
                info = client.info()
                metrics_url = args.metrics_url or f"http://{args.url.rsplit(':', 1)[0]}:8002/metrics"
                print(json.dumps({"model_version": info.model_version, **info.raw,
                                  "blocked": blocked_info(metrics_url, timeout)}, indent=1))
                return 0
            search = {t.name: getattr(args, t.field) for t in TUNABLES}
            result = client.retrieve(history, **search, exclude=args.exclude,
                                     exclude_history=args.exclude_history or None, categories=args.categories)
    except InvalidRequestError as e:
        raise UserError(f"invalid request: {one_line(e)}") from None
    except UnavailableError as e:
        raise UserError(f"{one_line(e)} (is `nann serve` running there?)") from None
    except RequestTimeoutError as e:
        raise UserError(f"{one_line(e)}; try a larger --timeout") from None
    except NannError as e:
        raise UserError(f"server at {args.url}: {one_line(e)}") from None

    print_answer(result.item_ids, result.scores, result.dropped, as_json=args.json)
    return 0
