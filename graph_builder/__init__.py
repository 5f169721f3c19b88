"""HNSW graph construction (hnswlib) and its export to the engine's CSR arrays."""

# Build defaults, chosen by measurement (perf/RESULTS.md, "Graph"): links per node and the build beam width.
GRAPH_M = 32
GRAPH_EF_CONSTRUCTION = 100
