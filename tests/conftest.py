"""Shared fixtures: pinned torch threads (2-core CI), small synthetic datasets with known answers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import pytest
import torch

torch.set_num_threads(1)


def synthetic_tables(
    n_users: int = 30, n_items: int = 40, per_user: int = 12, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Canonical items/interactions: users walk the catalog in order (item i -> i+1), ratings alternate 5/2."""
    from llmrec.data.schema import make_interactions, make_items

    rng = np.random.default_rng(seed)
    items = make_items(
        [
            {
                "item_id": f"i{i:03d}",
                "title": f"Item <b>{i}</b>",
                "brand": f"brand{i % 3}",
                "category": "cat" + str(i % 4),
                "description": f"desc {i}",
            }
            for i in range(n_items)
        ],
        source="synthetic",
    )
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        for t in range(per_user):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{(start + t) % n_items:03d}",
                    "timestamp": 1000 + 10 * t + u,
                    "rating": 5.0 if t % 2 == 0 else 2.0,
                }
            )
    return items, make_interactions(rows, source="synthetic")


def one_error_line(capsys, command: str) -> str:
    """The single stderr line of a refused command (exit 2 checked by the caller): the CLI's prefix, no
    traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"llmrec {command}: error: "), lines[0]
    return lines[0]


def file_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (a refused command must leave them all as they were)."""
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def visual_rule_dataset(root, item_records, rows, n_classes: int, rng: np.random.Generator):
    """Write a dataset whose only visual signal is each item's class (item number mod ``n_classes``): its
    "image" feature is the class one-hot plus a little noise. Returns (Dataset, class per item)."""
    from llmrec.data.dataset import Dataset
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.data.schema import make_interactions, make_items
    from llmrec.features.store import ids_checksum, save_feature

    items, inter = make_items(item_records, source="t"), make_interactions(rows, source="t")
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=5), {}, {}, []), root)
    ds = Dataset(root)
    classes = ds.items["item_id"].str[1:].astype(int).to_numpy() % n_classes
    noise = 0.05 * rng.normal(size=(ds.n_items, n_classes)).astype(np.float32)
    image = np.eye(n_classes, dtype=np.float32)[classes] + noise
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    save_feature(ds.features_dir, "image", image, spec)
    return ds, classes


@pytest.fixture
def synthetic_dataset(tmp_path):
    """A prepared synthetic dataset directory (no k-core: every user has 12 items)."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.data.schema import RawData

    items, inter = synthetic_tables()
    raw = RawData(items=items, interactions=inter, source={"name": "synthetic"})
    cfg = ProcessConfig(kcore=0, num_negatives=10, seed=3)
    tables = finalize(
        raw.items, raw.interactions, cfg, raw.source, {"users": 30, "items": 40, "interactions": 360}, []
    )
    out = tmp_path / "synthetic"
    write_dataset(tables, out)
    return out


@pytest.fixture
def image_feature_dataset(synthetic_dataset):
    """The synthetic dataset with an 8-d 'image' feature (items 0 and 5 missing) in its store, nothing else:
    what the graph models (BM3, LGMRec) read."""
    from llmrec.data.dataset import Dataset
    from llmrec.features.store import ids_checksum, save_feature

    ds = Dataset(synthetic_dataset)
    rng = np.random.default_rng(0)
    spec = {"kind": "item", "encoder": "test", "ids_sha256": ids_checksum(ds.items["item_id"].tolist())}
    missing = np.zeros(ds.n_items, dtype=bool)
    missing[[0, 5]] = True
    save_feature(ds.features_dir, "image", rng.normal(size=(ds.n_items, 8)).astype(np.float32), spec, missing)
    return ds


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _chatml_tokenizer(corpus: list[str], extra_special: list[str] | None = None):
    """A byte-level BPE tokenizer (400 tokens) trained on ``corpus`` with ChatML's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(extra_special or [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """A random 2-layer Llama (hidden 32) with a byte-level BPE tokenizer and a ChatML template, saved as a folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llm")
    fast = _chatml_tokenizer(
        [
            "Your job is to recommend a suitable next item based on a user's interacted items.",
            "Title: Item Brand: Category: Description: Visual representation: The brand of the next item is",
            "Please conduct an analysis of user preferences and generate a recommendation token.",
        ]
    )
    fast.chat_template = CHATML
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.3,  # larger than the 0.02 default: attention must carry signal in a random model
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


VLM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """A random LLaVA (CLIP vision tower: 32 px images, 8 px patches -> 16 image tokens; 2-layer Llama,
    hidden 32) with a byte-level BPE tokenizer, a ChatML template taking images, and a CLIP image processor
    (PIL backend), saved as a folder that AutoModelForImageTextToText / AutoProcessor load offline."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-vlm")
    fast = _chatml_tokenizer(
        [
            "A user has given high ratings to the following movies: Item Title Brand Category Yes No",
            "Describe what the pictures show and summarise the user's preferences. Will the user enjoy it?",
            "Your job is to recommend a suitable next item based on a user's interacted items. [REC]",
        ],
        extra_special=["<image>"],
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=fast,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=VLM_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.3,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=fast.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def add_item_images(root, missing=(3, 17, 29)) -> list[int]:
    """Give every item of the dataset at ``root`` a small picture (its colour follows its number), except
    the item rows in ``missing``, through 'llmrec images' (a manifest); returns the image-less rows."""
    from PIL import Image

    from llmrec.data.dataset import Dataset
    from llmrec.data.images import ImagesConfig, fetch_images

    ds = Dataset(root)
    folder = root.parent / (root.name + "-pictures")
    folder.mkdir(exist_ok=True)
    for row, item_id in enumerate(ds.items["item_id"]):
        if row not in missing:
            n = int(str(item_id)[1:])
            Image.new("RGB", (36, 40), (40 + 5 * n % 200, 200 - 4 * n % 180, 90)).save(
                folder / f"{item_id}.png"
            )
    fetch_images(ImagesConfig(data=str(root), image_dir=str(folder)))
    return list(missing)


def pictured_dataset(root) -> tuple:
    """The synthetic dataset at ``root/ds`` with a picture per item (in ``root/ds-pictures``) and an "image"
    feature from a tiny random ViT saved at ``root/vit`` (a real encoder folder: new pictures are encoded by
    the same one) -> (dataset folder, pictures folder, encoder folder)."""
    from llmrec.data.processing import ProcessConfig, finalize, write_dataset
    from llmrec.features.build import FeaturesConfig, build_features
    from test_features_build import _tiny_vit

    items, inter = synthetic_tables()
    ds = root / "ds"
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=10, seed=3), {}, {}, []), ds)
    add_item_images(ds, missing=())
    vit = _tiny_vit(root / "vit", pooler=True)
    build_features(FeaturesConfig(data=str(ds), text=False, image=True, image_encoder=vit))
    return ds, root / "ds-pictures", vit
