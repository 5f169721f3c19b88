"""nann.latency.alternating_latency: every path answers every query, timed, in alternating blocks."""
import nann.latency as latency


def test_paths_answer_every_query_in_blocks_whose_order_alternates(monkeypatch):
    monkeypatch.setattr(latency, "SETTLE_S", 0.0)
    calls = []
    paths = {name: (lambda q, name=name: calls.append((name, q)) or f"{name}{q}") for name in ("a", "b")}
    measured = latency.alternating_latency(paths, list(range(5)), block=2)
    for name in paths:
        seconds, answers = measured[name]
        assert answers == [f"{name}{q}" for q in range(5)] and len(seconds) == 5 and min(seconds) >= 0
    timed = calls[2 * latency.WARM_UP:]
    # each block: one untimed query, then the block's queries; "a" first in blocks 0 and 2, "b" first in block 1
    assert timed == [("a", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 0), ("b", 1),
                     ("b", 2), ("b", 2), ("b", 3), ("a", 2), ("a", 2), ("a", 3),
                     ("a", 4), ("a", 4), ("b", 4), ("b", 4)]


def test_a_paths_context_is_entered_around_its_timed_blocks_only(monkeypatch):
    from contextlib import contextmanager

    monkeypatch.setattr(latency, "SETTLE_S", 0.0)
    events = []

    @contextmanager
    def window():
        events.append("enter")
        yield
        events.append("exit")

    paths = {"a": lambda q: events.append(("a", q)), "b": lambda q: events.append(("b", q))}
    latency.alternating_latency(paths, list(range(3)), block=2, around={"a": window})
    timed = events[2 * latency.WARM_UP:]
    # block 0: "a" (untimed query, then its window), then "b"; block 1: "b" first, then "a"
    assert timed == [("a", 0), "enter", ("a", 0), ("a", 1), "exit", ("b", 0), ("b", 0), ("b", 1),
                     ("b", 2), ("b", 2), ("a", 2), "enter", ("a", 2), "exit"]
