"""What the rest of the system knows of a scorer runtime (`ScorerRuntime`); one module per runtime subclasses it."""
from __future__ import annotations

from typing import Callable, Sequence

from nann.engine.grid import CandidateGrid

PARTS = ("encoder", "scorer")  # the halves of the serving split a runtime loads
# A loaded half: the encoder (hist_emb float32 [B,L,D], hist_mask float32 [B,L]) -> the state tensors in the run's
# order; the scorer (state tensors [R,...], cand_emb float32 [C,D], owner int64 [C], non-decreasing) -> float32 [C].
Part = Callable[..., object]


class ScorerRuntime:
    """A runtime the model's serving split can run in.

    The class attributes say what the engine, `nann export` and the command line need to know; `load` runs the split
    in this process (offline, and inside the Python-backend Triton models); `export_scorer` writes the repository's
    `scorer` model. A runtime is one module with a subclass and its instance registered in `nann.scorers.RUNTIMES`."""

    name: str
    summary: str                # what it is, for --help
    in_python: bool = True      # `load` runs it in a Python process (`nann evaluate --backend`, the Python models)
    gpu: bool = False           # needs a GPU host; `nann export --scorer auto` takes an available one first
    padded_grid: bool = False   # the engine pads every scoring round to the candidate grid's fixed sizes (compiled
    #                             shapes, e.g. TensorRT's optimization profiles); False: rounds go unpadded, any size
    in_process: bool = True     # served inside `retrieve`'s process, called each round (a runtime that runs in Python);
    #                             False: behind BLS, as the repository's `scorer` model (a runtime of another backend)
    scores_ids: bool = False    # its scorer takes candidate ids and holds the item table itself (on its device);
    #                             False: the caller gathers the candidates' embeddings
    process_threads: bool = False  # its thread settings are the process's (torch.set_num_threads), not per session
    encoder: str = ""           # the runtime `retrieve`'s encoder runs where this one scores, when not this one
    needs: str = ""             # what a host must have for it, when not every host has it

    def available(self) -> bool:
        """Whether this host can run it."""
        return True

    def grid(self) -> CandidateGrid:
        """The candidate grid the engine pads this runtime's scorer calls to."""
        return CandidateGrid() if self.padded_grid else CandidateGrid.unpadded()

    @property
    def encoder_runtime(self) -> str:
        return self.encoder or self.name

    def load(self, run, io: dict, parts: Sequence[str], threads: int | None, spinning: bool) -> dict[str, Part]:
        """The `parts` of a run's serving split (`nann.run_dir.RunDir`; `io`: its ONNX description) as callables.
        threads: intra-op threads (None: the runtime's default); spinning: whether idle runtime threads spin."""
        raise NotImplementedError

    def export_scorer(self, export) -> None:
        """Write the repository's `scorer` model, the BLS target of a scorer served outside `retrieve` (`export`: a
        `nann.serving.export.RepositoryExport`): by default the Python-backend model that loads this runtime (the
        config's `backend` parameter), which `nann export` writes only when asked to serve a Python runtime behind BLS
        (`in_process=False`, for comparison)."""
        export.python_model("scorer")

