"""HNSW graph construction (hnswlib) and its export to the engine's CSR arrays."""

# Build defaults, chosen by measurement (perf/RESULTS.md, "Search quality"): links per node and the build beam width.
GRAPH_M = 32
GRAPH_EF_CONSTRUCTION = 100
# The graph's metric when none is asked for: the score-sensitivity metric (graph_builder.metric) up to this many
# items, plain L2 above. Measured on one model's catalogue and random subsets of it (perf/RESULTS.md, "Graph
# metric by catalogue size", `python -m perf.graph_metric`): the score metric reaches coverage 0.99 with fewer
# items scored at 100k and 300k items, L2 at 600k and 803k; the limit sits between.
SCORE_METRIC_MAX_ITEMS = 400_000


def default_metric(num_items: int) -> str:
    """`nann graph --metric auto`: "score" for a catalogue of up to SCORE_METRIC_MAX_ITEMS items, else "l2"."""
    return "score" if num_items <= SCORE_METRIC_MAX_ITEMS else "l2"
