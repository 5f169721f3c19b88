"""The run directory (`nann train --run RUN`; docs/DESIGN.md, "Run directory" and "Graph"): the one module that names
its files, knows their format versions, checks that a run holds what a step needs, and replaces files by staging and
renaming. Every reader and writer goes through `RunDir` and `GraphDir`: the trainer and its ONNX export, `nann items
add`, the graph builder, the runtime, `nann export` (an exported model version holds the same files, so the served
models read it as a RunDir too), evaluation and the perf tools. Nothing else spells a file name of the run directory
(tests/test_run_dir.py).

Files are replaced, never rewritten: an exported model version hard-links them and keeps serving its own.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from nann.engine.params import SearchParams, default_search
from nann.errors import UserError

CONFIG = "config.json"                 # the model config (nann.model.ModelConfig) plus training settings
WEIGHTS = "model.safetensors"
TRAIN_LOG = "train_log.jsonl"
CHECKPOINT = "checkpoint"              # the resumable training state, a directory (trainer.train)
CHECKPOINT_WEIGHTS, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE = WEIGHTS, "optimizer.safetensors", "state.json"
CHECKPOINT_BEST = "best.safetensors"   # the weights of the epoch with the best validation recall (trainer.train)
BASELINE = "baseline"                  # the two-tower run trained beside the model (`nann train --baseline`), a RunDir
BASELINES = "baselines.json"           # the model's test recall beside popularity and that baseline (nann.baselines)
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_EMBEDDINGS_FP16 = "item_embeddings_fp16.npy"
USER_ENCODER = "user_encoder.onnx"
SCORER = "scorer.onnx"
SCORER_IDS = "scorer_ids.onnx"         # the scorer with the item table inside (TensorRT compiles this one)
ONNX_IO = "onnx_io.json"
ONNX_IO_FORMAT_VERSION = 2             # 2: the scorer takes each user's candidates as one run (owner non-decreasing)
ITEM_PATHS = "item_paths.npy"          # a Deep Retrieval run's item paths
# The vocabulary, copied from the prepared data (nann.data.prepared.Vocabulary reads it from either directory).
ITEMS, ITEM_CATEGORY, CATEGORIES = "items.npy", "item_category.npy", "categories.npy"
VOCABULARY = (ITEMS, ITEM_CATEGORY, CATEGORIES)
GRAPH = "graph"
STAGING = "items_add.staged"           # files being replaced (`nann items add`); COMPLETE inside once all are there
COMPLETE = "COMPLETE"
# What an exported model version of the Python models holds (hard-linked from the run).
SERVED = (CONFIG, ONNX_IO, ITEM_EMBEDDINGS, USER_ENCODER, SCORER, WEIGHTS, *VOCABULARY)
# A trained run's files besides its training state (checkpoint, log) and its graph.
ARTIFACTS = (*SERVED, ITEM_EMBEDDINGS_FP16, SCORER_IDS)


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"the layout's {name}")


class _Layout:
    """A directory of a known layout: its files are class-level `_file` properties."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class GraphDir(_Layout):
    """RUN/graph: the HNSW hierarchy as CSR arrays over dense ids (`nann.engine.graph.HnswGraph` maps them) and hnswlib's
    own index (for `nann items add`; never served)."""

    FORMAT_VERSION = 1
    META = "meta.json"  # written last: its presence marks a complete graph
    META_KEYS = ("num_items", "max_level", "entry_point", "format_version")
    LEVELS = "levels.npy"
    METRIC = "metric.npy"          # the score-sensitivity transform of a graph built with --metric score
    HNSW_INDEX = "hnsw_index.bin"  # hnswlib's save_index format, labels = dense ids
    LAYER_INDPTR, LAYER_INDICES = "layer{}_indptr.npy", "layer{}_indices.npy"  # of each level
    CALIBRATION = "search_calibration"  # the meta's record of the walk `nann graph` chose (nann.calibration)

    meta_file = _file(META)
    levels_file = _file(LEVELS)
    metric_file = _file(METRIC)
    hnsw_index_file = _file(HNSW_INDEX)

    def layer_files(self, level: int) -> tuple[Path, Path]:
        """(indptr int64 [N+1], indices int32) of one layer."""
        return self.path / self.LAYER_INDPTR.format(level), self.path / self.LAYER_INDICES.format(level)

    def exists(self) -> bool:
        return self.meta_file.is_file()

    def read_meta(self) -> dict:
        """The graph's meta, checked: its keys and this code's format version (UserError naming the file otherwise)."""
        if not self.meta_file.is_file():
            raise UserError(f"graph not found: {self.meta_file} is missing (run `nann graph --run RUN_DIR` first)")
        try:
            meta = json.loads(self.meta_file.read_text())
            missing = [k for k in self.META_KEYS if k not in meta]
            if missing:
                raise ValueError(f"missing keys {missing}")
            if int(meta["format_version"]) != self.FORMAT_VERSION:
                raise ValueError(f"format_version {meta['format_version']} (this code reads {self.FORMAT_VERSION})")
        except (ValueError, TypeError) as e:
            raise UserError(f"corrupt graph metadata {self.meta_file}: {e}") from None
        return meta

    def write_meta(self, meta: dict) -> dict:
        """Write the meta (with this format version); call it last, when every array is there."""
        meta = {**meta, "format_version": self.FORMAT_VERSION}
        self.meta_file.write_text(json.dumps(meta, indent=1))
        return meta

    def search_defaults(self) -> SearchParams:
        """THE search defaults of this graph's catalogue: `default_search` at its size, walked as `nann graph`
        calibrated it where it did."""
        meta = self.read_meta()
        return default_search(int(meta["num_items"]), meta.get(self.CALIBRATION))

    def served_files(self) -> list[Path]:
        """Every file of the graph but hnswlib's index."""
        return [p for p in sorted(self.path.iterdir()) if p.name != self.HNSW_INDEX]


class RunDir(_Layout):
    """A run directory, or a directory of the same layout: an exported model version, a staging directory."""

    # the model and its training
    config_file, weights_file = _file(CONFIG), _file(WEIGHTS)
    train_log_file, checkpoint_dir = _file(TRAIN_LOG), _file(CHECKPOINT)
    # the serving split: the item table (e_v of every item), the two halves, the scorer with the table inside
    item_embeddings_file, item_embeddings_fp16_file = _file(ITEM_EMBEDDINGS), _file(ITEM_EMBEDDINGS_FP16)
    user_encoder_file, scorer_file, scorer_ids_file = _file(USER_ENCODER), _file(SCORER), _file(SCORER_IDS)
    onnx_io_file = _file(ONNX_IO)
    # raw item ids (the vocabulary's first file); a Deep Retrieval run's item paths
    items_file, item_paths_file = _file(ITEMS), _file(ITEM_PATHS)
    baselines_file = _file(BASELINES)

    @property
    def baseline(self) -> "RunDir":
        """The two-tower run trained beside this one (it may not exist: `nann train --baseline none`)."""
        return RunDir(self.path / BASELINE)

    @property
    def graph(self) -> GraphDir:
        return GraphDir(self.path / GRAPH)

    def checkpoint_file(self, name: str) -> Path:
        """A file of the checkpoint (CHECKPOINT_WEIGHTS, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE, CHECKPOINT_BEST)."""
        return self.path / CHECKPOINT / name

    # ---- checks ------------------------------------------------------------------------------------------------
    def require(self, files, then: str) -> None:
        """UserError naming the `files` of this run that are missing, and `then`: what to run first."""
        missing = [str(path.relative_to(self.path)) for path in files if not path.is_file()]
        if missing:
            raise UserError(f"{self.path} lacks {', '.join(missing)}: {then}")

    def served_files(self) -> list[Path]:
        """The files an exported model version of the Python models holds (hard-linked from the run)."""
        return [self.path / name for name in SERVED]

    def artifact_files(self) -> list[Path]:
        """The trained run's files besides its training state (checkpoint, log) and its graph."""
        return [self.path / name for name in ARTIFACTS]

    def check_trained(self) -> None:
        """A finished training run's serving split: its ONNX io description and item embeddings."""
        for path in (self.onnx_io_file, self.item_embeddings_file):
            if not path.is_file():
                raise UserError(f"{path} not found: is {self.path} a finished training run (nann train --run)?")

    def check_servable(self) -> None:
        """What `nann export` publishes: the served files and a graph, all over the same items (a run whose `nann items
        add` was interrupted, or whose graph predates its items, is not)."""
        self.require(self.served_files(), f"run `nann train --run {self.path}` first")
        if not (self.graph.meta_file.is_file() and self.graph.levels_file.is_file()):
            raise UserError(f"run {self.path} has no graph: run `nann graph --run {self.path}` first")
        counts = {ITEMS: self.vocabulary_size(), ITEM_EMBEDDINGS: self.item_embeddings().shape[0],
                  GRAPH: self.graph.read_meta()["num_items"]}
        if len(set(counts.values())) > 1:
            raise UserError(f"run {self.path} is inconsistent (" + ", ".join(f"{k}: {v} items" for k, v in counts.items())
                            + f"): rebuild the graph with `nann graph --run {self.path}`, or repeat an interrupted "
                              f"`nann items add`")

    # ---- readers -----------------------------------------------------------------------------------------------
    def read_config(self) -> dict:
        if not self.config_file.is_file():
            raise UserError(f"{self.config_file} not found: is {self.path} a finished training run?")
        return json.loads(self.config_file.read_text())

    def read_onnx_io(self) -> dict:
        """The serving split's description (trainer.export): state tensors, ONNX files, max_seq, emb_dim, num_items."""
        return json.loads(self.onnx_io_file.read_text())

    def item_embeddings(self, mmap: bool = True) -> np.ndarray:
        """e_v of every item, float32 [N, D] (memory-mapped by default)."""
        return np.load(self.item_embeddings_file, mmap_mode="r" if mmap else None, allow_pickle=False)

    def vocabulary_files(self) -> list[Path]:
        return [self.path / name for name in VOCABULARY]

    def vocabulary_size(self) -> int:
        """Items of the run's vocabulary (added ones included)."""
        return int(np.load(self.items_file, mmap_mode="r", allow_pickle=False).shape[0])

    def search_defaults(self) -> SearchParams:
        """The search defaults of the run's catalogue: its graph's (`GraphDir.search_defaults`), the size rule's
        (`default_search`) while it has none."""
        return self.graph.search_defaults() if self.graph.exists() else default_search(self.vocabulary_size())

    def vocabulary(self):
        """The run's nann.data.prepared.Vocabulary."""
        from nann.data.prepared import Vocabulary

        return Vocabulary.load(str(self.path))

    # ---- writers -----------------------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        self.config_file.write_text(json.dumps(config, indent=1))

    def write_onnx_io(self, io: dict) -> None:
        """The serving split's description, with its format version."""
        self.onnx_io_file.write_text(json.dumps({"format_version": ONNX_IO_FORMAT_VERSION, **io}, indent=1))

    def write_vocabulary(self, items: np.ndarray, item_category: np.ndarray) -> None:
        """The run's raw item ids and their dense categories (`nann items add` appends to both; the categories stay:
        a new item must have a category the model knows)."""
        np.save(self.path / ITEMS, items)
        np.save(self.path / ITEM_CATEGORY, item_category)

    def copy_vocabulary(self, data_dir) -> None:
        """The prepared data's vocabulary files into the run (raw ids travel with the run)."""
        for name in VOCABULARY:
            src = Path(data_dir) / name
            if src.exists():
                shutil.copyfile(src, self.path / name)

    # ---- staged replacement ------------------------------------------------------------------------------------
    def new_graph(self) -> GraphDir:
        """An empty RUN/graph.new to build a graph into; `replace_graph` puts it in place."""
        staged = GraphDir(self.path / f"{GRAPH}.new")
        shutil.rmtree(staged.path, ignore_errors=True)
        return staged

    def replace_graph(self, staged: GraphDir) -> None:
        """Put the complete graph directory `staged` in the place of RUN/graph (two renames). The old files are
        unlinked, never rewritten: an exported model version hard-links them and keeps serving them unchanged."""
        graph, old = self.graph.path, self.path / f"{GRAPH}.old"
        shutil.rmtree(old, ignore_errors=True)
        if graph.exists():
            graph.rename(old)
        staged.path.rename(graph)
        shutil.rmtree(old, ignore_errors=True)

    def begin_staging(self) -> "RunDir":
        """A new, empty staging directory of this run's layout (RUN/items_add.staged): write the replacing files there
        (a graph into its `graph`), then `commit_staging`."""
        staged = RunDir(self.path / STAGING)
        staged.path.mkdir()
        return staged

    def commit_staging(self) -> None:
        """Mark the staging directory complete, then move its files in by renames (the graph by `replace_graph`); a
        move interrupted after the mark is finished by `finish_staging`."""
        (self.path / STAGING / COMPLETE).touch()
        self._move_in()

    def finish_staging(self) -> bool:
        """Finish the move of a complete staging directory left by an interrupted command (True), or drop an incomplete
        one, nothing of which was moved (False)."""
        staged = self.path / STAGING
        if (staged / COMPLETE).is_file():
            self._move_in()
            return True
        shutil.rmtree(staged, ignore_errors=True)
        return False

    def _move_in(self) -> None:
        staged = RunDir(self.path / STAGING)
        for path in sorted(staged.path.iterdir()):
            if path.is_file() and path.name != COMPLETE:
                os.replace(path, self.path / path.name)
        if staged.graph.path.is_dir():
            self.replace_graph(staged.graph)
        shutil.rmtree(staged.path)
