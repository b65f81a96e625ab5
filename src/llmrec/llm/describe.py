"""``llmrec describe``: generate one text per item with any causal LM (batched, cached, resumable).

Two modes, each with its paper's prompt:

summary     I-LLMRec Appendix B (Figure 8), the TRSR-style summary of an item's attributes and description.
from_title  HistLLM Appendix A.2 (Figure 9), the knowledge-enhancement (KE) prompt: a ~20-word description
            written from the title alone, for catalogs without descriptions (MovieLens). The prompt is
            Figure 9's exactly, with the dataset's item noun ("movie" as printed; "news article" on MIND);
            the title carries its year as "Title (1995)" like the paper's examples.
            ``with_genres`` (ours, off by default) adds a " Genres: ..." segment for items that have genres.

Output, in the dataset directory::

    texts/<name>.parquet   item_id, text, prompt_sha256, source_sha256 (dataset item order; only generated
                           items; source_sha256 = sha256 of the filled prompt before any chat wrapping)
    texts/<name>.json      manifest: llm, its weights' dtype, mode, prompt template, chat wrapping, generation
                           settings (greedy, max new tokens), count, created

The LM's weights load in ``dtype``: auto is bfloat16 on a CUDA GPU that supports it (float16 on one that does
not), float32 on the CPU.

Every row is keyed by sha256(exact prompt string, llm, generation parameters, and the dtype unless float32):
a re-run generates only the items whose key changed or that have no row yet, and the table is rewritten
atomically after every batch, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from llmrec.assets import DEFAULT_LLM, load_causal_lm
from llmrec.config import option, to_dict
from llmrec.data.dataset import Dataset
from llmrec.data.importers import DEFAULT_ITEM_NOUN, item_noun
from llmrec.errors import ConfigError, LlmrecError
from llmrec.features.encoders import check_template, dataset_item_fields, item_fields, render_template
from llmrec.placement import device_option, dtype_option
from llmrec.utils.io import read_json, write_json_atomic, write_parquet_atomic
from llmrec.utils.lock import folder_lock

log = logging.getLogger(__name__)

Mode = Literal["summary", "from_title"]

# I-LLMRec Appendix B, Figure 8 (following TRSR), line breaks as in the figure. A "Label: {field}" line
# whose field is empty is left out.
SUMMARY_PROMPT = (
    "Given the item's metadata, including the title, attributes, and description,\n"
    "craft a concise summary:\n"
    "Title: {title}\n"
    "Brand: {brand}\n"
    "Category: {category}\n"
    "Description: {description}\n"
    "Answer:"
)

# HistLLM Appendix A.2, Figure 9, character for character, with the dataset's item noun in {noun} ("movie"
# on movie data, as printed; "news article" on MIND: importers.item_noun). {title_year} is "Title (year)" as
# in the paper's examples (the title alone when the item has no year). "\\n#Answer:" is a backslash and an
# "n", as printed: the same reading as the CTR prompts of A.1/A.3 (llm/prompts.py).
FROM_TITLE_PROMPT = (
    "#Question: Generate a concise {noun} description for the title {title_year} with around 20 words, "
    "highlighting the main theme and unique elements. \\n#Answer:"
)
# ours, only with ``with_genres``: Fig. 9 with a " Genres: ..." segment, which vanishes for an item without genres
FROM_TITLE_GENRES_PROMPT = FROM_TITLE_PROMPT.replace("elements.", "elements. Genres: {genres}")
# the from_title prompt llmrec used before it followed Fig. 9 exactly: texts generated with it are stale
OLD_FROM_TITLE_PROMPTS = (
    "#Question: Generate a concise movie description for the title {title_year} with around 20 words, "
    "highlighting the main theme and unique elements. Genres: {genres}\n#Answer:",
)

PROMPTS: dict[str, str] = {"summary": SUMMARY_PROMPT, "from_title": FROM_TITLE_PROMPT}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class DescribeConfig:
    """Which items to describe, with which LM and prompt, and where the texts go."""

    data: str = option("data/ml-100k", "prepared dataset directory")
    mode: Mode = option("from_title", "summary (I-LLMRec/TRSR) or from_title (HistLLM knowledge enhancement)")
    prompt: str | None = option(
        None, "custom prompt template with {field} placeholders (default: the mode's)"
    )
    llm: str = option(DEFAULT_LLM, "causal LM: alias, local folder, hub id or .gguf file")
    name: str | None = option(None, "output name: texts/<name>.parquet (default: the mode)")
    description_texts: str | None = option(
        None, "fill {description} with earlier generated texts (e.g. summarise from_title descriptions)"
    )
    with_genres: bool = option(
        False,
        "from_title: add ' Genres: ...' to Fig. 9's prompt for items with genres (ours, not the paper's)",
    )
    max_new_tokens: int = option(48, "most tokens generated per item (greedy decoding)")
    batch_size: int = option(16, "prompts per generate() call")
    device: str = device_option()
    dtype: str = dtype_option()
    chat: bool = option(True, "wrap the prompt in the tokenizer's chat template when it has one")
    limit: int | None = option(None, "describe only the first N items (quick runs)")
    force: bool = option(False, "regenerate every item even if a cached text matches")

    def __post_init__(self) -> None:
        if self.mode not in PROMPTS:
            raise ConfigError(f"mode must be one of {sorted(PROMPTS)}, got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 (or unset for all items), got {self.limit}")
        if self.with_genres and (self.mode != "from_title" or self.prompt is not None):
            raise ConfigError("with_genres applies to --mode from_title with its built-in prompt")
        if self.prompt is not None and "{" not in self.prompt:
            raise ConfigError("prompt: a custom template needs at least one {field} placeholder")
        from llmrec.devices import DTYPES

        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        self.name = self.name or self.mode
        if not _NAME.match(self.name):
            raise ConfigError(
                f"name {self.name!r} is not a plain file name", hint="use letters, digits, '.', '_' or '-'"
            )

    @property
    def template(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return FROM_TITLE_GENRES_PROMPT if self.with_genres else PROMPTS[self.mode]

    @property
    def generation(self) -> dict[str, Any]:
        """Everything besides the prompt and the LM that changes the generated text."""
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens}


# ----------------------------------------------------------------------------- prompts


def prompt_fields(row: pd.Series | dict[str, Any], noun: str = DEFAULT_ITEM_NOUN) -> dict[str, str]:
    """:func:`item_fields` plus ``title_year`` ("Toy Story (1995)"), ``genres`` (extra genres, else category)
    and ``noun`` (what the dataset calls an item: :func:`~llmrec.data.importers.item_noun`)."""
    return _with_prompt_fields(item_fields(row), noun)


def _with_prompt_fields(fields: dict[str, str], noun: str) -> dict[str, str]:
    fields.setdefault("noun", noun)
    title = fields.get("title", "").strip()
    year = fields.get("year", "").strip().removesuffix(".0")
    if year.lower() in ("nan", "none", "<na>"):
        year = ""
    has_year = year and not title.endswith(f"({year})")
    fields.setdefault("title_year", f"{title} ({year})" if has_year and title else title)
    if not fields.get("genres"):
        fields["genres"] = fields.get("category", "")
    return fields


def render_prompt(template: str, fields: dict[str, str]) -> str:
    """Fill a template line by line (``render_template`` would fold newlines); a line whose placeholders
    are all empty is dropped, a line without placeholders is kept as written."""
    lines = []
    for line in template.split("\n"):
        if "{" not in line:
            lines.append(line)
            continue
        rendered = render_template(line, fields)
        if rendered:
            lines.append(rendered)
    return "\n".join(lines)


def wrap_chat(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The exact string given to the tokenizer: the prompt as the user turn of the chat template, or as is."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def prompt_key(prompt: str, llm: str, generation: dict[str, Any]) -> str:
    """Cache key of one row: the exact prompt, the LM and the generation parameters."""
    blob = json.dumps({"prompt": prompt, "llm": llm, "generation": generation}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- generation

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_NEW_QUESTION = re.compile(r"\n\s*#")  # a base model that starts its own "#Question:" block


def clean_text(text: str, fallback: str) -> str:
    """Strip and collapse whitespace; drop a trailing unfinished sentence when a finished one precedes it;
    never empty (``fallback``, the title, instead)."""
    text = _NEW_QUESTION.split(text, maxsplit=1)[0]
    text = re.sub(r"\s+", " ", text).strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] < len(text):
        text = text[: ends[-1]]
    return text or fallback.strip() or "item"


def generate_texts(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, chat: bool
) -> list[str]:
    """Greedy continuations of ``prompts`` in one left-padded batch (only the new tokens, decoded raw).

    Decoder-only models continue from the last position, so padding must go on the left; the attention
    mask hides it and ``generate`` derives position ids from the mask.
    """
    import torch

    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B, T + new)
    new = out[:, enc["input_ids"].shape[1] :]  # (B, new)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, and a pad token (= eos) when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LlmrecError("the tokenizer has neither a pad nor an eos token", hint="use another --llm")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------- files


def texts_paths(data_dir: str | Path, name: str) -> tuple[Path, Path]:
    """(texts/<name>.parquet, texts/<name>.json) of a dataset."""
    root = Path(data_dir) / "texts"
    return root / f"{name}.parquet", root / f"{name}.json"


_COLUMNS = ["item_id", "text", "prompt_sha256", "source_sha256"]


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in _COLUMNS})


def _read_rows(path: Path) -> pd.DataFrame:
    """The generated rows of a texts table (none when it does not exist); a damaged one is one line."""
    cols = _COLUMNS
    required = cols[:3]  # tables written before source_sha256 was recorded lack it
    if not path.exists():
        return _no_rows()
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError... on a damaged file
        text = " ".join(str(e).split())[:200] or e.__class__.__name__
        raise LlmrecError(
            f"unreadable texts table ({text})", file=path, hint="re-run 'llmrec describe' with --force"
        ) from None
    missing = set(required) - set(df.columns)
    if missing:
        raise LlmrecError(
            f"not a texts table (columns {sorted(missing)} missing)", file=path, hint="rerun with --force"
        )
    if "source_sha256" not in df.columns:
        df = df.assign(source_sha256="")
    return df[cols].astype({"item_id": str, "source_sha256": str})


def source_key(prompt: str) -> str:
    """sha256 of a filled prompt before chat wrapping: what the item data made of the template."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _item_prompt_fields(ds: Dataset, description_texts: str | None, name: str) -> list[dict[str, str]]:
    """Every item's prompt fields in item order; ``description`` replaced by earlier generated texts."""
    items = ds.items.assign(item_id=ds.items["item_id"].astype(str))
    noun = item_noun(ds.meta)
    fields = [_with_prompt_fields(f, noun) for f in dataset_item_fields(items, ds.root / "items.parquet")]
    if description_texts is not None:
        if description_texts == name:
            raise ConfigError(f"description_texts {name!r} would read the texts this run is writing")
        for f, text in zip(fields, load_texts(ds.root, description_texts)):
            f["description"] = text
    return fields


def load_texts(data_dir: str | Path, name: str) -> list[str]:
    """The generated text of every item, in the dataset's item order."""
    path, _ = texts_paths(data_dir, name)
    hint = f"run 'llmrec describe --data {data_dir} --name {name}' (see --mode)"
    if not path.exists():
        raise LlmrecError("generated item texts not found", file=path, hint=hint)
    rows = _read_rows(path)
    by_id = dict(zip(rows["item_id"], rows["text"]))
    ds = Dataset(data_dir)
    ids = ds.items["item_id"].astype(str).tolist()
    absent = [i for i in ids if i not in by_id]
    if absent:
        raise LlmrecError(
            f"{len(absent)} of {len(ids)} items have no text (first missing item_id: {absent[0]!r})",
            file=path,
            hint=hint + " without --limit to finish it",
        )
    _check_prompt(ds.root, name, hint)
    _check_sources(ds, name, rows, path, hint)
    return [by_id[i] for i in ids]


def _check_prompt(data_dir: Path, name: str, hint: str) -> None:
    """Refuse from_title texts generated with llmrec's earlier KE prompt (Fig. 9 with a "Genres:" line):
    the default is Fig. 9 exactly now, and a text is only as good as the prompt it answered."""
    manifest_path = texts_paths(data_dir, name)[1]
    if not manifest_path.exists():
        return
    manifest = read_json(manifest_path)
    if isinstance(manifest, dict) and manifest.get("prompt_template") in OLD_FROM_TITLE_PROMPTS:
        raise LlmrecError(
            "these texts were generated with llmrec's earlier KE prompt (Fig. 9 plus a 'Genres:' line), not "
            "the paper's Fig. 9 prompt that 'llmrec describe --mode from_title' uses now",
            file=manifest_path,
            hint=f"re-run 'llmrec describe --data {data_dir} --mode from_title --name {name}' (only the stale "
            "texts are regenerated; add --with-genres to keep a genre segment)",
        )


def _check_sources(ds: Dataset, name: str, rows: pd.DataFrame, path: Path, hint: str) -> None:
    """Refuse texts generated from other item data (e.g. titles changed by a re-prepare since)."""
    recorded = dict(zip(rows["item_id"], rows["source_sha256"]))
    if not any(recorded.values()):
        return  # written before sources were recorded: nothing to compare
    manifest = read_json(texts_paths(ds.root, name)[1])
    config = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(config, dict) or not isinstance(manifest.get("prompt_template"), str):
        raise LlmrecError("not a texts manifest", file=texts_paths(ds.root, name)[1], hint=hint)
    fields = _item_prompt_fields(ds, config.get("description_texts"), name)
    ids = ds.items["item_id"].astype(str).tolist()
    stale = [
        i
        for i, f in zip(ids, fields)
        if recorded.get(i) and recorded[i] != source_key(render_prompt(manifest["prompt_template"], f))
    ]
    if stale:
        raise LlmrecError(
            f"{len(stale)} of {len(ids)} texts were generated from other item data than the dataset's now "
            f"(first: item_id {stale[0]!r})",
            file=path,
            hint=hint.replace("run '", "re-run '"),
        )


# ----------------------------------------------------------------------------- the command


def _pick(values: list[str], index: list[int]) -> list[str]:
    return [values[j] for j in index]


NOTE_EVERY_S = 60.0  # seconds between progress lines in the log


def describe_dtype(spec: str, device: str, bf16_supported: bool | None = None) -> str:
    """The describing LM's weights dtype on ``device``: ``auto`` is bfloat16 on a CUDA GPU that supports it
    (``bf16_supported``; asked of torch when None), float16 on an older one, float32 elsewhere (on a CPU
    without bf16 matrix units fp32 is the faster); an explicit dtype is kept."""
    from llmrec.devices import resolve_dtype

    dtype = resolve_dtype(spec, device)
    if spec == "auto" and dtype == "bfloat16":
        if bf16_supported is None:
            import torch

            bf16_supported = torch.cuda.is_bf16_supported()
        return "bfloat16" if bf16_supported else "float16"
    return dtype


def run_describe(cfg: DescribeConfig) -> dict[str, Any]:
    """Generate the texts that are missing or stale; return a summary (counts, seconds, items/s, paths)."""
    from llmrec.devices import resolve_device

    device = resolve_device(cfg.device)  # a device torch cannot use here is one line, before any work
    dtype = describe_dtype(cfg.dtype, device)
    with folder_lock(cfg.data, "dataset"):  # one writer of the dataset at a time
        return _describe_locked(cfg, device, dtype)


def _describe_locked(cfg: DescribeConfig, device: str, dtype: str) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    ds = Dataset(cfg.data)
    name = cfg.name or cfg.mode
    path, manifest_path = texts_paths(ds.root, name)
    for written in (path, manifest_path):  # temp files of a write cut short by a kill
        for leftover in written.parent.glob(f".{written.name}.*.partial"):
            leftover.unlink(missing_ok=True)
    items = ds.items.assign(item_id=ds.items["item_id"].astype(str))
    fields = _item_prompt_fields(ds, cfg.description_texts, name)
    check_template(cfg.template, set().union(*(f.keys() for f in fields)) if fields else set())

    model, tokenizer = load_causal_lm(cfg.llm, dtype=getattr(torch, dtype), device=device)
    model.eval()
    prepare_tokenizer(tokenizer)
    chat = bool(cfg.chat and getattr(tokenizer, "chat_template", None))
    filled = [render_prompt(cfg.template, f) for f in fields]
    sources = [source_key(p) for p in filled]
    prompts = [wrap_chat(tokenizer, p, chat) for p in filled]
    # reduced precision changes the text: such rows are keyed by it too (fp32 keys as they always were)
    generation = cfg.generation if dtype == "float32" else {**cfg.generation, "dtype": dtype}
    keys = [prompt_key(p, cfg.llm, generation) for p in prompts]
    ids = items["item_id"].tolist()

    done, stale = _reusable_rows(cfg, path, ids, keys, sources)
    selected = range(len(ids) if cfg.limit is None else min(cfg.limit, len(ids)))
    todo = [j for j in selected if ids[j] not in done]
    reused = len(selected) - len(todo)
    # longest first: less padding per batch, and an out-of-memory error shows up at once
    if todo:
        lengths = tokenizer(_pick(prompts, todo), add_special_tokens=not chat)["input_ids"]
        todo = [j for _, j in sorted(zip(map(len, lengths), todo), key=lambda t: -t[0])]
    texts = _TextsFiles(path, manifest_path, cfg, name, chat, ids, dtype)

    log.info("describe '%s': %d items to generate, %d cached", name, len(todo), reused)
    t0 = last_note = time.perf_counter()
    generated = 0  # counted here: a disabled bar (not a terminal) counts nothing
    with tqdm(total=len(todo), desc=f"describe {name}", unit="item", disable=None) as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start : start + cfg.batch_size]
            raw = generate_texts(model, tokenizer, _pick(prompts, batch), cfg.max_new_tokens, chat)
            for j, text in zip(batch, raw):
                fallback = fields[j].get("title") or ids[j]
                done[ids[j]] = (clean_text(text, fallback), keys[j], sources[j])
            texts.checkpoint(done)
            bar.update(len(batch))
            generated += len(batch)
            if (
                time.perf_counter() - last_note > NOTE_EVERY_S
            ):  # the log (and a non-terminal) still sees progress
                rate = generated / (time.perf_counter() - t0)
                log.info("describe '%s': %d/%d items, %.2f items/s", name, generated, len(todo), rate)
                last_note = time.perf_counter()
    if not todo and (stale or not path.exists() or not texts.manifest_is_current(done)):
        texts.checkpoint(
            done
        )  # nothing generated, but stale rows were dropped or the files are new or behind
    seconds = time.perf_counter() - t0
    return {
        "name": name,
        "path": str(path),
        "items": len(selected),
        "generated": len(todo),
        "cached": reused,
        "seconds": round(seconds, 3),
        "items_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "complete": len(done) == len(ids),
    }


def _reusable_rows(
    cfg: DescribeConfig, path: Path, ids: list[str], keys: list[str], sources: list[str]
) -> tuple[dict[str, tuple[str, str, str]], int]:
    """The texts of an earlier run still valid for this config, item_id -> (text, key, source), and how many
    stale rows are dropped (with --force every row is: 1 if a table exists)."""
    # rows still valid for this config (any item, also beyond --limit) are kept; stale ones are dropped
    done: dict[str, tuple[str, str, str]] = {}  # item_id -> (text, key, source)
    if not cfg.force:
        try:
            old = _read_rows(path)
        except LlmrecError as e:  # a damaged cache is regenerated, never trusted
            log.warning("ignoring the generated texts and starting over: %s", e)
            old = _no_rows()
        key_of, source_of = dict(zip(ids, keys)), dict(zip(ids, sources))
        done = {i: (t, k, source_of[i]) for i, t, k, _ in old.itertuples(index=False) if key_of.get(i) == k}
        stale = len(old) - len(done)
    else:
        stale = int(path.exists())
    return done, stale


@dataclass
class _TextsFiles:
    """The texts table and its manifest, as one run of ``llmrec describe`` writes them after each batch."""

    path: Path
    manifest_path: Path
    cfg: DescribeConfig
    name: str
    chat: bool  # the prompts went through the tokenizer's chat template
    ids: list[str]  # every item of the dataset, in item order
    dtype: str  # the LM's weights, as resolved on this device

    def checkpoint(self, done: dict[str, tuple[str, str, str]]) -> None:
        order = [i for i in self.ids if i in done]
        table = pd.DataFrame(
            {
                "item_id": order,
                "text": [done[i][0] for i in order],
                "prompt_sha256": [done[i][1] for i in order],
                "source_sha256": [done[i][2] for i in order],
            }
        )
        write_parquet_atomic(table, self.path)
        write_json_atomic(self.manifest_path, self.manifest(len(order)))

    def manifest(self, count: int) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "name": self.name,
            "llm": cfg.llm,
            "dtype": self.dtype,
            "mode": cfg.mode,
            "prompt_template": cfg.template,
            "chat_template": self.chat,
            "generation": {**cfg.generation, "decoding": "greedy", "num_beams": 1},
            "count": count,
            "n_items": len(self.ids),
            "complete": count == len(self.ids),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": to_dict(cfg),
        }

    def manifest_is_current(self, done: dict[str, tuple[str, str, str]]) -> bool:
        """The manifest on disk describes the table (a kill between the two writes leaves an older one)."""
        try:
            on_disk = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        want = json.loads(json.dumps(self.manifest(len(done)), default=str))
        return isinstance(on_disk, dict) and {**on_disk, "created": None} == {**want, "created": None}
