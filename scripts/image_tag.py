"""`python3 scripts/image_tag.py vllm|sidecar [--model-id ID --model-revision REV]`: content tags.

An image's tag is a digest of exactly what goes into it, so an unchanged
input never produces a new image (and the ~16 GB model layer is rebuilt only
when the engine's files or the pinned model change):

- `vllm`: every file under `vllm_engine/` (path and bytes) plus the model id
  and its pinned revision (a 40-hex Hugging Face commit; a branch such as
  `main` moves, so it is refused);
- `sidecar`: the files its Dockerfile copies (`pyproject.toml`, `README.md`,
  `lambda/`, `sidecar_audit/`, `central_llm_ops/`), caches and bytecode excluded.

Prints `<kind>-<16 hex>`. Standard library only (runs in CodeBuild before any
venv exists). Exit 2 on a usage error or an unpinned revision.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INPUTS = {
    "vllm": ("vllm_engine",),
    "sidecar": ("pyproject.toml", "README.md", "lambda", "sidecar_audit", "central_llm_ops"),
}
_SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
_PINNED = re.compile(r"^[0-9a-f]{40}$")


def input_files(root: Path, names: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for name in names:
        path = root / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for candidate in candidates:
            relative = candidate.relative_to(root)
            if _SKIPPED_PARTS & set(relative.parts) or candidate.suffix == ".pyc":
                continue
            if any(part.endswith(".egg-info") for part in relative.parts):
                continue
            files.append(relative)
    return sorted(files)


def content_digest(root: Path, files: Iterable[Path], extra: Iterable[str] = ()) -> str:
    digest = hashlib.sha256()
    for relative in files:
        data = (root / relative).read_bytes()
        digest.update(f"{relative.as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    for item in extra:
        digest.update(f"extra\0{item}\0".encode())
    return digest.hexdigest()


def image_tag(kind: str, root: Path = ROOT, model_id: str = "", model_revision: str = "") -> str:
    extra: list[str] = []
    if kind == "vllm":
        if not _PINNED.match(model_revision):
            raise ValueError(
                f"model revision {model_revision!r} is not a pinned commit (40 hex); "
                "set MODEL_REVISION in vllm_engine/model.env (docs/deployment.md, First deploy)"
            )
        extra = [model_id, model_revision]
    return f"{kind}-{content_digest(root, input_files(root, INPUTS[kind]), extra)[:16]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/image_tag.py", description=__doc__)
    parser.add_argument("kind", choices=sorted(INPUTS))
    parser.add_argument("--model-id", default="")
    parser.add_argument("--model-revision", default="")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    try:
        print(image_tag(args.kind, args.root, args.model_id, args.model_revision))
    except ValueError as exc:
        print(f"image_tag: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
