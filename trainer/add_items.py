"""`nann items add`: new items in a trained run, without retraining.

The input is an items file as `nann data prepare --items` reads it (`nann.data.items`; by default a CSV of
``item_id,category_id``, raw int64 ids, an optional header line). Per new item:

* **e_v** from the item network through the model's category-only path (``NANNModel.item_embed_new``: a zero id
  embedding, since the new id has no trained row). A category the model does not know refuses the whole file:
  the category embedding is all a new item's e_v is made of, so an unknown one would leave it no content, and the
  model's category table cannot grow without training.
* **dense id** N, N+1, ... in file order: old ids keep theirs, so the run's items are no longer sorted (``Vocabulary``
  looks up through a permutation).
* **graph**: inserted into the hnswlib index kept beside the CSR arrays (``graph_builder.build.extend_graph``),
  whose arrays are then exported again (old nodes' lists change where hnswlib relinks them to new items).

Items already in the vocabulary, and repeats of an id within the file (the first wins), are skipped and counted;
malformed lines are counted by kind with their line numbers, as `nann data prepare` does.

The run's files are replaced, never rewritten (the vocabulary, the item embeddings + fp16, the scorer with the item
table inside, grown, its ONNX description, the graph): an exported model version hard-links them and keeps serving its
own. Everything is staged first (``RunDir.begin_staging``) and marked complete, then moved in; an interrupted move is
finished by the next `nann items add`. The weights and the config stay as trained (the config's num_items counts the
trained items). `nann export` then publishes a new version.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from graph_builder.build import extend_graph
from nann.data.items import read_items
from nann.data.prepared import Vocabulary
from nann.errors import UserError
from nann.model import ARCHS, load_model
from nann.run_dir import ITEM_EMBEDDINGS, ITEM_EMBEDDINGS_FP16, RunDir
from trainer.export import write_scorer_ids_table

EMBEDDING_FILES = {ITEM_EMBEDDINGS: np.float32, ITEM_EMBEDDINGS_FP16: np.float16}
SHOWN = 5  # ids named in a message


def _named(ids) -> str:
    ids = list(ids)
    return ", ".join(str(i) for i in ids[:SHOWN]) + (", …" if len(ids) > SHOWN else "")


def new_items(vocab: Vocabulary, raw: np.ndarray, raw_cats: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(raw ids, dense categories) of the distinct items `raw` that the vocabulary lacks, in order, and how many it
    has. Raises UserError naming categories the model does not know."""
    known = vocab.raw_to_dense(raw) >= 0
    cats = vocab.category_to_dense(raw_cats[~known])
    unknown = np.flatnonzero(cats < 0)
    if unknown.size:
        raise UserError(f"{unknown.size} new items have categories the model was not trained on (raw category ids "
                        f"{_named(np.unique(raw_cats[~known][unknown]))}): a new item's e_v comes from its category "
                        f"alone, so give them a known category or retrain; nothing was added")
    return raw[~known], cats, int(known.sum())


def _check_run(run: RunDir) -> None:
    run.require([run.config_file, run.weights_file, *run.vocabulary_files(), run.scorer_ids_file, run.onnx_io_file,
                 run.item_embeddings_file, run.item_embeddings_fp16_file, run.graph.meta_file],
                "`nann items add` needs a trained run with a graph (`nann train`, `nann graph`)")
    arch = run.read_config().get("arch")
    if arch not in ARCHS:
        raise UserError(f"{run.path} is a {arch} run: `nann items add` extends the item network's runs "
                        f"({', '.join(ARCHS)})")


def _stage(run: RunDir, staged: RunDir, vocab: Vocabulary, raw: np.ndarray, cats: np.ndarray, emb: np.ndarray,
           threads: int, progress: bool) -> dict:
    """Write the grown run's files into `staged` (graph included); returns the graph's new meta."""
    staged.write_vocabulary(np.concatenate([vocab.items, raw]),
                            np.concatenate([vocab.item_category, cats.astype(np.int32)]))
    for name, dtype in EMBEDDING_FILES.items():
        np.save(staged.path / name, np.concatenate([np.load(run.path / name, mmap_mode="r"), emb.astype(dtype)]))
    table = staged.item_embeddings()
    write_scorer_ids_table(str(run.scorer_ids_file), str(staged.scorer_ids_file), table)
    staged.write_onnx_io({**run.read_onnx_io(), "num_items": int(table.shape[0])})
    return extend_graph(run.graph.path, emb, staged.graph.path, threads=threads, progress=progress)


def add_items(run_dir, csv_path, threads: int = 0, max_malformed: float = 0.01, progress: bool = True,
              **items_file) -> dict:
    """Add the items file's new items to the run (module doc); returns counts and seconds per phase. `items_file`:
    how to read it (nann.data.items.read_items: columns, delimiter, encoding, no_header, separator)."""
    run = RunDir(run_dir)
    _check_run(run)
    if run.finish_staging():
        print(f"finished an interrupted `nann items add` of {run.path}", file=sys.stderr)
    t0 = time.perf_counter()
    items_file.setdefault("columns", "item=1,category=2")
    read = read_items(str(csv_path), max_malformed=max_malformed, **items_file)
    if read.report:
        print(read.report, file=sys.stderr)
    vocab = run.vocabulary()
    raw, cats, known = new_items(vocab, read.item, read.category)
    summary = {"first_dense_id": vocab.num_items, "added": int(raw.shape[0]), "known": known,
               "repeated": read.repeated, "seconds": {}}
    if not raw.shape[0]:
        return summary
    t1 = time.perf_counter()
    emb = load_model(str(run.path)).new_item_embeddings(cats).cpu().numpy().astype(np.float32)
    t2 = time.perf_counter()
    meta = _stage(run, run.begin_staging(), vocab, raw, cats, emb, threads, progress)
    run.commit_staging()
    t3 = time.perf_counter()
    summary["seconds"] = {"read": t1 - t0, "embed": t2 - t1, "insert": meta["insert_seconds"],
                          "files_and_export": t3 - t2 - meta["insert_seconds"], "total": t3 - t0}
    return summary


def main(args) -> int:
    if not 0.0 <= args.max_malformed <= 1.0:
        raise UserError(f"--max-malformed is a share in [0, 1], got {args.max_malformed}")
    s = add_items(args.run, args.csv, threads=args.threads, max_malformed=args.max_malformed, columns=args.item_columns,
                  delimiter=args.delimiter, encoding=args.encoding, no_header=args.no_header,
                  separator=args.category_separator)
    skipped = f"skipped {s['known']} already in the vocabulary, {s['repeated']} repeated in the file"
    if not s["added"]:
        print(f"nothing to add to {args.run} ({skipped})")
        return 0
    sec, a = s["seconds"], s["added"]
    print(f"added {a:,} items to {args.run} as dense ids {s['first_dense_id']:,}..{s['first_dense_id'] + a - 1:,} "
          f"({skipped}) in {sec['total']:.1f} s: e_v {sec['embed']:.1f} s, graph insertion {sec['insert']:.1f} s "
          f"({a / max(sec['insert'], 1e-9):,.0f} items/s), files and graph export {sec['files_and_export']:.1f} s")
    print(f"publish them with `nann export --run {args.run} --repo REPO`")
    return 0
