"""The Triton models' `model.py` files and `config.pbtxt` templates: the package data `nann.serving.model_repository`
(the repository's top-level model_repository/ directory, mapped there by pyproject.toml), so an installed copy of the
library exports as a source checkout does."""
from __future__ import annotations

from importlib import resources
from string import Template

TRITON_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def templates():
    """The package data's directory, looked up when something renders: importing the library (its scorers import
    this module) from a source checkout that is not installed, as `python -m perf.gpu_check` does on a GPU host, then
    needs no package mapping."""
    return resources.files("nann.serving.model_repository")


def render(template: str, **values) -> str:
    """A config template (e.g. "retrieve/config.pbtxt.template") with its $fields filled in."""
    return Template(templates().joinpath(template).read_text()).substitute(**values)


def model_file(model: str) -> bytes:
    """The `model.py` of a Python-backend model."""
    return templates().joinpath(model, "model.py").read_bytes()


def tensor_entries(specs: list[dict]) -> str:
    """config.pbtxt input entries of the user-state tensors [{"name", "dtype", "dims"}] (dims without the batch axis) for
    a model without Triton's batching (`max_batch_size: 0`, the `scorer`): a leading -1 axis of rows."""
    lines = []
    for s in specs:
        dims = [-1] + s["dims"]
        lines.append(f'  {{ name: "{s["name"]}" data_type: {TRITON_TYPES[s["dtype"]]} '
                     f'dims: [ {", ".join(str(d) for d in dims)} ] }}')
    return ",\n".join(lines)
