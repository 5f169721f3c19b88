"""NANN Serve: approximate nearest-neighbour retrieval under a neural similarity metric, served on Triton."""

__version__ = "0.1.0"
