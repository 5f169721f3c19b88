"""The `nann` command line: the app layer above the library (`nann/`), the trainer (`trainer/`), the graph builder
(`graph_builder/`) and the benchmarks (`perf/`). `nann_cli.main` parses the command and dispatches to a handler;
the library never imports this package (tests/test_layering.py)."""
