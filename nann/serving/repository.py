"""Checksummed manifests of exported model versions, written at export and verified at load.

Each model version directory holds `manifest.json` = {"files": {relative path: {"sha256", "bytes"}}}.
A missing, truncated or altered file fails verification with a message naming it, so Triton refuses to
load the model and `nann serve` refuses to start instead of serving a broken index.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nann.errors import UserError

MANIFEST = "manifest.json"
CHUNK = 1 << 22


class ArtifactError(UserError):
    """An exported artifact is missing, truncated or does not match its checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(version_dir: Path, extra: dict | None = None) -> dict:
    """Checksum every file under version_dir (model.py included) into version_dir/manifest.json."""
    files = {}
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file() and p.name != MANIFEST
                       and "__pycache__" not in p.parts):
        files[str(path.relative_to(version_dir))] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    manifest = {"format_version": 1, "files": files, **(extra or {})}
    (version_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify_manifest(version_dir: Path) -> dict:
    """Check every listed file exists with its size and checksum; raise ArtifactError naming the first bad one."""
    manifest_path = version_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} is missing: re-export the repository with `nann export`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"{manifest_path} is not a valid manifest ({e})") from None
    for rel, expected in files.items():
        path = version_dir / rel
        if not path.is_file():
            raise ArtifactError(f"artifact {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise ArtifactError(f"artifact {path} has {size} bytes, expected {expected['bytes']} (truncated?)")
        if sha256_of(path) != expected["sha256"]:
            raise ArtifactError(f"artifact {path} does not match its sha256 checksum")
    return manifest


def model_versions(model_dir: Path) -> list[Path]:
    return sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def verify_repository(repo: Path) -> None:
    """Verify the newest version of every model holding files (the ensemble's are empty); `nann` must exist."""
    if not (repo / "nann" / "config.pbtxt").is_file():
        raise UserError(f"{repo} is not an exported NANN repository (no nann/config.pbtxt): run `nann export`")
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        versions = model_versions(model_dir)
        if versions and any(versions[-1].iterdir()):
            verify_manifest(versions[-1])
