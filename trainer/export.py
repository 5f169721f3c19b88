"""ONNX export of the serving split into a run directory (the files: ``nann.run_dir``): the user encoder, the scorer,
the scorer with the item table inside, and their description (onnx_io).

* user encoder: ``hist_emb`` float32 [B,L,D], ``hist_mask`` float32 [B,L] -> state tensors (leading axis B).
* scorer: state tensors (leading axis R), ``cand_emb`` float32 [C,D], ``owner`` int64 [C] -> ``scores`` [C];
  ``owner`` must be non-decreasing (each user's candidates one contiguous run: ``nann.model_split.Scorer``).
* scorer with ids: like the scorer but ``cand_ids`` int64 [C] instead of ``cand_emb``; the item table (the run's item
  embeddings) is an initializer and a Gather picks the rows (for hosts that keep the table on the GPU).

``scores`` is the raw logit s_u(e_v) - the same number the trainer uses as its logit and brute force ranks by.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from nann.model import NANNModel
from nann.model_split import build_split, state_names, state_shapes
from nann.run_dir import RunDir

OPSET = 17
ITEM_TABLE = "item_table"  # the initializer of scorer_ids.onnx holding the item table


class _ScorerIds(nn.Module):
    def __init__(self, scorer, table: torch.Tensor):
        super().__init__()
        self.scorer = scorer
        self.n_state = scorer.n_state
        self.register_buffer(ITEM_TABLE, table)

    def forward(self, *args):
        state, ids, owner = args[:self.n_state], args[self.n_state], args[self.n_state + 1]
        return self.scorer(*state, getattr(self, ITEM_TABLE)[ids], owner)


def _export(module, args, path, input_names, output_names, dynamic_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)


def _io(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def export_onnx(model: NANNModel, run_dir: str, item_embeddings: np.ndarray) -> dict:
    """Writes the three ONNX files and their description (onnx_io) into run_dir; returns the description."""
    run = RunDir(run_dir)
    cfg = model.cfg
    model = model.cpu().eval()
    enc, sc = build_split(model)
    names = state_names(cfg)
    shapes = state_shapes(cfg)
    D = cfg.emb_dim
    B, L, C = 2, 7, 5
    hist = torch.randn(B, L, D)
    mask = torch.ones(B, L)
    mask[1, 4:] = 0
    with torch.no_grad():
        state = enc(hist, mask)

    enc_dyn = {"hist_emb": {0: "B", 1: "L"}, "hist_mask": {0: "B", 1: "L"}}
    for n in names:
        enc_dyn[n] = {i: s for i, s in enumerate(shapes[n]) if isinstance(s, str)}
    _export(enc, (hist, mask), run.user_encoder_file, ["hist_emb", "hist_mask"], names, enc_dyn)

    sc_dyn = {}
    for n in names:
        sc_dyn[n] = {i: ("R" if s == "B" else s) for i, s in enumerate(shapes[n]) if isinstance(s, str)}
    cand = torch.randn(C, D)
    owner = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int64)  # non-decreasing: the scorer's contract
    _export(sc, (*state, cand, owner), run.scorer_file, names + ["cand_emb", "owner"],
            ["scores"], {**sc_dyn, "cand_emb": {0: "C"}, "owner": {0: "C"}, "scores": {0: "C"}})

    table = torch.from_numpy(np.ascontiguousarray(item_embeddings, dtype=np.float32))
    ids = torch.tensor([0, 1, 2, 0, 1], dtype=torch.int64) % table.shape[0]
    _export(_ScorerIds(sc, table), (*state, ids, owner), run.scorer_ids_file,
            names + ["cand_ids", "owner"], ["scores"],
            {**sc_dyn, "cand_ids": {0: "C"}, "owner": {0: "C"}, "scores": {0: "C"}})

    state_io = [_io(n, "float32", shapes[n]) for n in names]
    scorer_state = [_io(n, "float32", ["R" if s == "B" else s for s in shapes[n]]) for n in names]
    io = {
        "owner_order": "non-decreasing",
        "arch": cfg.arch,
        "emb_dim": D,
        "max_seq": cfg.max_seq,
        "num_items": int(item_embeddings.shape[0]),  # rows of scorer_ids.onnx's table
        "opset": OPSET,
        "score": "raw logit s_u(e_v) (higher is better; no sigmoid, no NCE correction)",
        "state": state_io,
        "user_encoder": {"file": run.user_encoder_file.name,
                         "inputs": [_io("hist_emb", "float32", ["B", "L", D]), _io("hist_mask", "float32", ["B", "L"])],
                         "outputs": state_io},
        "scorer": {"file": run.scorer_file.name,
                   "inputs": scorer_state + [_io("cand_emb", "float32", ["C", D]), _io("owner", "int64", ["C"])],
                   "outputs": [_io("scores", "float32", ["C"])]},
        "scorer_ids": {"file": run.scorer_ids_file.name,
                       "inputs": scorer_state + [_io("cand_ids", "int64", ["C"]), _io("owner", "int64", ["C"])],
                       "outputs": [_io("scores", "float32", ["C"])]},
    }
    run.write_onnx_io(io)
    return run.read_onnx_io()


def write_scorer_ids_table(src: str, dst: str, table: np.ndarray) -> None:
    """Copy scorer_ids.onnx from src to dst with its item table replaced by ``table`` [N', D] (``nann items add``:
    the same scorer over a grown catalogue)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(src)
    inits = model.graph.initializer
    (i,) = [k for k, init in enumerate(inits) if init.name == ITEM_TABLE]
    if list(inits[i].dims[1:]) != [table.shape[1]]:
        raise ValueError(f"{src}'s {ITEM_TABLE} has shape {list(inits[i].dims)}, the new table {list(table.shape)}")
    inits[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table, dtype=np.float32), ITEM_TABLE))
    onnx.save(model, dst)


def write_run_artifacts(model: NANNModel, run_dir: str, config: dict | None = None,
                        added_categories: np.ndarray | None = None) -> torch.Tensor:
    """The weights, the item embeddings (+ fp16), the ONNX files and their description (and the config when given or
    absent). ``added_categories``: the dense categories of the items added after training (``nann items add``), whose
    e_v follow the trained items'. Returns the item embeddings (torch, on the model's device)."""
    from safetensors.torch import save_file

    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    model.eval()
    if config is not None or not run.config_file.exists():
        run.write_config(config if config is not None else model.cfg.to_dict())
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, run.weights_file)
    E = model.all_item_embeddings()
    if added_categories is not None and len(added_categories):
        E = torch.cat([E, model.new_item_embeddings(added_categories)])
    emb = E.detach().cpu().numpy().astype(np.float32)
    np.save(run.item_embeddings_file, emb)
    np.save(run.item_embeddings_fp16_file, emb.astype(np.float16))
    export_onnx(model, run_dir, emb)
    return E
