"""The Triton models' `model.py` files and `config.pbtxt` templates, shipped with the library as the package
`nann.serving.model_repository` (pyproject.toml maps this directory there), which `nann export` renders from."""
