"""A synthetic image catalog whose sequential signal lives only in the pictures.

No real item images are reachable where llmrec's tests run, yet I-LLMRec's claim is that one projected
image token carries what the LLM needs to know about an item. This module builds a catalog in which that
claim can be checked end to end: every item is a coloured shape on a light background, and

* the item's **shape** is its hidden "category" and its **colour** its hidden "brand";
* users move through shapes in a fixed visual order (circle -> square -> triangle -> ...) and mostly pick
  their favourite colour, so the next item is predictable from the *last item's picture* plus the user's
  colour preference;
* the **title** is an opaque code (``"Item QX7-41B"``, consonants and digits only, so it cannot spell a
  colour or shape word) and item ids are assigned in a seeded random order, so neither reveals anything;
* ``brand``/``category``/``description`` do name the colour and shape: text-based model variants can see
  the attributes, and an image-only variant (title + image token) must get them from the pixels.

A model that beats an ID/title-only baseline on this catalog with the image token, and loses that edge
when the token is removed, has shown that visual information crosses the projector into the LLM.

Layout written by :func:`generate_catalog` into ``cfg.out``::

    images/<item_id>.png    RGB, size x size, drawn deterministically from the seed
    items.parquet           canonical items (image = ABSOLUTE path of the png: prepared datasets live elsewhere)
    interactions.parquet    canonical interactions (rating 5)
    truth.json              the generating rule, palette, counts, measured rule rates, favourites, config

Same config -> byte-identical files. The catalog is written into a temp folder beside ``cfg.out`` and
renamed into place, so an interrupted run never leaves a half catalog; a complete catalog for the same
config is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from llmrec.config import option, to_dict
from llmrec.data.schema import make_interactions, make_items
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import disk_errors, partial_dir, replace_dir, write_json_atomic
from llmrec.utils.lock import folder_lock

log = logging.getLogger(__name__)

#: Bumped whenever the drawing or the sequence rule changes, so old catalogs are regenerated.
GENERATOR_VERSION = 1
#: Hidden "category" in visual-successor order: a user who just saw SHAPES[k] next sees SHAPES[k+1].
SHAPES = ["circle", "square", "triangle", "star", "cross", "hexagon", "heart", "arrow", "crescent", "ring"]
#: Hidden "brand": well-separated named colours, all dark or saturated enough to stand out on light grey.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 75, 215),
    "green": (40, 155, 55),
    "yellow": (235, 190, 0),
    "purple": (125, 45, 170),
    "orange": (245, 120, 20),
    "pink": (235, 95, 175),
    "brown": (120, 75, 35),
    "teal": (0, 140, 140),
    "black": (30, 30, 30),
}
FAVOURITE_PROB = 0.8  # a rule step keeps the user's favourite colour with this probability
RULE = (
    "Each user has a favourite colour and a start shape. Step 0: the start shape. Step t >= 1: with "
    "probability `noise` a uniformly random item; otherwise shape = (shape of the previous item + 1) mod "
    "n_shapes in the order of `shapes`. A rule step (step 0 included) has the favourite colour with "
    f"probability {FAVOURITE_PROB}, else a uniformly random other colour; the variant is uniform. Every "
    "draw prefers items the user has not seen yet, and never repeats the previous item. Titles are "
    "opaque codes; the shape and colour are visible in the image (and named in category/brand/description)."
)
_CODE_CHARS = "BCDFGHJKLMNPQRSTVWXZ23456789"  # no vowels: a code can never spell a colour or shape name
_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"
_T0 = 1_600_000_000  # first timestamp (2020-09-13), seconds


@dataclass
class SyntheticConfig:
    """``generate_catalog``: catalog size, user sequences and image rendering of the synthetic dataset."""

    out: str = option(help="folder the catalog is written to (images/, items.parquet, interactions.parquet)")
    n_shapes: int = option(6, f"number of shapes (hidden category), taken in order from {SHAPES}")
    n_colours: int = option(6, f"number of colours (hidden brand), taken in order from {list(COLOURS)}")
    variants: int = option(10, "items per (shape, colour): position/size/rotation/background jitter")
    n_users: int = option(600, "number of users (one sequence each)")
    seq_len_min: int = option(8, "shortest user sequence (>= 3 for leave-one-out)")
    seq_len_max: int = option(20, "longest user sequence")
    noise: float = option(0.1, "probability that a step (after the first) is a uniformly random item")
    size: int = option(224, "image side in pixels")
    seed: int = option(0, "seed for ids, titles, sequences and drawing")

    def __post_init__(self) -> None:
        if not str(self.out):
            raise ConfigError("SyntheticConfig.out: give the folder to write the catalog to")
        if not 2 <= self.n_shapes <= len(SHAPES):
            raise ConfigError(f"n_shapes must be in [2, {len(SHAPES)}], got {self.n_shapes}")
        if not 2 <= self.n_colours <= len(COLOURS):
            raise ConfigError(f"n_colours must be in [2, {len(COLOURS)}], got {self.n_colours}")
        if self.variants < 1:
            raise ConfigError(f"variants must be >= 1, got {self.variants}")
        if self.n_users < 1:
            raise ConfigError(f"n_users must be >= 1, got {self.n_users}")
        if self.seq_len_min < 3 or self.seq_len_max < self.seq_len_min:
            raise ConfigError(
                f"need 3 <= seq_len_min <= seq_len_max, got {self.seq_len_min} and {self.seq_len_max}"
            )
        if not 0.0 <= self.noise <= 1.0:
            raise ConfigError(f"noise must be a probability in [0, 1], got {self.noise}")
        if self.size < 16:
            raise ConfigError(f"size must be >= 16 pixels, got {self.size}")

    @property
    def n_items(self) -> int:
        return self.n_shapes * self.n_colours * self.variants


# ----------------------------------------------------------------------------- shapes


def _regular(n: int, phase: float = math.pi / 2, radius: float = 1.0) -> np.ndarray:
    """Vertices of a regular n-gon, first vertex pointing up (image y grows downwards)."""
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), -radius * np.sin(a)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    outer = _regular(2 * points)
    outer[1::2] *= inner
    return outer


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, -y], axis=1)


_CROSS = np.array(
    [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1)]
    + [(-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    dtype=float,
)
_ARROW = np.array(
    [(-1, -0.22), (0.15, -0.22), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.22), (-1, 0.22)], dtype=float
)


def _normalised(poly: np.ndarray) -> np.ndarray:
    """Centre on the bounding box and scale so the farthest vertex is at radius 1 (shapes get equal room)."""
    poly = poly - (poly.min(0) + poly.max(0)) / 2
    return poly / np.sqrt((poly**2).sum(1)).max()


# Each shape is a list of (polygon in unit coordinates, layer): "fg" painted in the item colour, "bg" in
# the background colour on top (holes: the ring's middle, the crescent's bite).
_LAYERS: dict[str, list[tuple[np.ndarray, str]]] = {
    "circle": [(_regular(96), "fg")],
    "square": [(_regular(4, phase=math.pi / 4), "fg")],
    "triangle": [(_regular(3), "fg")],
    "star": [(_star(), "fg")],
    "cross": [(_normalised(_CROSS), "fg")],
    "hexagon": [(_regular(6, phase=0.0), "fg")],
    "heart": [(_normalised(_heart()), "fg")],
    "arrow": [(_normalised(_ARROW), "fg")],
    "crescent": [(_regular(96), "fg"), (_regular(96, radius=0.85) + [0.45, -0.2], "bg")],
    "ring": [(_regular(96), "fg"), (_regular(96, radius=0.55), "bg")],
}
assert list(_LAYERS) == SHAPES


def draw_item(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """One item picture: ``shape`` in (a jittered) ``colour`` on a light background, drawn 2x and downsampled.

    Jitter (from ``rng``): background grey level and tint, colour brightness, shape radius (22-36% of the
    side), centre (the shape always fits), rotation (within +-20 degrees, so a square never becomes a
    diamond and an arrow keeps pointing right). The shape and colour stay recognisable at a glance.
    """
    grey = rng.uniform(222, 250)
    bg = tuple(int(round(np.clip(grey + rng.uniform(-8, 8), 0, 255))) for _ in range(3))
    bright = rng.uniform(0.88, 1.06)
    fg = tuple(int(round(np.clip(c * bright, 0, 255))) for c in colour)
    radius = size * rng.uniform(0.22, 0.36)
    margin = radius * 1.04 + 1
    cx, cy = rng.uniform(margin, size - margin, size=2)
    theta = math.radians(rng.uniform(-20, 20))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    scale = 2  # supersampling: smooth edges without relying on PIL's (version-dependent) polygon antialiasing
    img = Image.new("RGB", (size * scale, size * scale), bg)
    draw = ImageDraw.Draw(img)
    for poly, layer in _LAYERS[shape]:
        pts = (poly @ rot.T * radius + [cx, cy]) * scale  # (V, 2) pixel coordinates
        draw.polygon([tuple(p) for p in pts.round(2).tolist()], fill=fg if layer == "fg" else bg)
    return img.resize((size, size), Image.Resampling.LANCZOS)


# ----------------------------------------------------------------------------- catalog and sequences


def _title_codes(n: int, seed: int) -> list[str]:
    """Unique opaque titles "Item QX7-41B" from a seeded hash (same scheme for every item)."""
    codes: list[str] = []
    seen: set[str] = set()
    for i in range(n):
        salt = 0
        while True:
            h = hashlib.sha256(f"llmrec-synthetic:{seed}:{i}:{salt}".encode()).digest()
            code = (
                "".join(_CODE_CHARS[b % len(_CODE_CHARS)] for b in h[:3])
                + f"-{h[3] % 10}{h[4] % 10}"
                + _CODE_LETTERS[h[5] % len(_CODE_LETTERS)]
            )
            if code not in seen:
                break
            salt += 1
        seen.add(code)
        codes.append(f"Item {code}")
    return codes


def _catalog(cfg: SyntheticConfig) -> pd.DataFrame:
    """One row per (shape, colour, variant) with a seeded-random item id, so the id order reveals nothing."""
    grid = [(s, c, v) for s in range(cfg.n_shapes) for c in range(cfg.n_colours) for v in range(cfg.variants)]
    perm = np.random.default_rng([cfg.seed, 0]).permutation(len(grid))
    width = max(4, len(str(len(grid) - 1)))
    colours = list(COLOURS)
    rows = []
    for g, (s, c, v) in enumerate(grid):
        rows.append(
            {
                "item_id": f"s{int(perm[g]):0{width}d}",
                "shape": s,
                "colour": c,
                "variant": v,
                "shape_name": SHAPES[s],
                "colour_name": colours[c],
            }
        )
    df = pd.DataFrame(rows).sort_values("item_id", kind="stable").reset_index(drop=True)
    df["title"] = _title_codes(len(df), cfg.seed)
    return df


def _sequences(cfg: SyntheticConfig, cat: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """User sequences following :data:`RULE`; returns the interaction rows and the per-user truth."""
    rng = np.random.default_rng([cfg.seed, 1])
    index = {
        (s, c): np.flatnonzero((cat["shape"].to_numpy() == s) & (cat["colour"].to_numpy() == c))
        for s in range(cfg.n_shapes)
        for c in range(cfg.n_colours)
    }
    shape_of = cat["shape"].to_numpy()
    item_ids = cat["item_id"].tolist()
    n_items = len(cat)
    width = max(4, len(str(cfg.n_users - 1)))
    users, items, times = [], [], []
    favourites: dict[str, str] = {}
    steps = {"rule": 0, "noise": 0, "repeats": 0}
    colours = list(COLOURS)

    def pick(pool: np.ndarray, seen: set[int], prev: int) -> int:
        fresh = [int(i) for i in pool if i not in seen]
        if not fresh:  # every candidate already seen: a repeat (never of the previous item, if avoidable)
            fresh = [int(i) for i in pool if i != prev] or [int(i) for i in pool]
            steps["repeats"] += 1
        return fresh[int(rng.integers(len(fresh)))]

    for u in range(cfg.n_users):
        uid = f"u{u:0{width}d}"
        fav = int(rng.integers(cfg.n_colours))
        shape = int(rng.integers(cfg.n_shapes))
        length = int(rng.integers(cfg.seq_len_min, cfg.seq_len_max + 1))
        t = _T0 + int(rng.integers(0, 30 * 86400))
        favourites[uid] = colours[fav]
        seen: set[int] = set()
        prev = -1
        for step in range(length):
            if step > 0 and rng.random() < cfg.noise:
                item = pick(np.arange(n_items), seen, prev)
                steps["noise"] += 1
            else:
                if step > 0:
                    shape = (int(shape_of[prev]) + 1) % cfg.n_shapes
                colour = fav
                if rng.random() >= FAVOURITE_PROB:
                    colour = int(rng.integers(cfg.n_colours - 1))
                    colour += colour >= fav  # a uniformly random *other* colour
                item = pick(index[(shape, colour)], seen, prev)
                steps["rule"] += 1
            seen.add(item)
            prev = item
            t += 600 + int(rng.integers(0, 3 * 86400))  # strictly increasing per user
            users.append(uid)
            items.append(item_ids[item])
            times.append(t)
    inter = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times, "rating": 5.0})
    return inter, {"favourite_colour": favourites, "steps": steps}


def rule_rates(
    inter: pd.DataFrame, items: pd.DataFrame, favourites: dict[str, str], n_shapes: int
) -> dict[str, float]:
    """Measured share of steps following the shape-successor rule, and of items in the favourite colour.

    Works on any table with ``user_id``/``item_id``/``timestamp`` (raw or prepared), so tests can check
    that the rule survives processing. Items carry the shape in ``category`` and the colour in ``brand``.
    """
    shapes = {s: k for k, s in enumerate(SHAPES)}
    shape = inter["item_id"].map(dict(zip(items["item_id"], items["category"].map(shapes))))
    colour = inter["item_id"].map(dict(zip(items["item_id"], items["brand"])))
    df = pd.DataFrame({"u": inter["user_id"], "ts": inter["timestamp"], "s": shape, "c": colour})
    df = df.sort_values(["u", "ts"], kind="stable")
    prev = df.groupby("u", sort=False)["s"].shift(1)
    has_prev = prev.notna()
    succ = (df["s"][has_prev] == (prev[has_prev].astype(int) + 1) % n_shapes).mean()
    fav = (df["c"] == df["u"].map(favourites)).mean()
    return {"successor_share": float(succ), "favourite_colour_share": float(fav)}


def _is_complete(out: Path, config: dict[str, Any]) -> bool:
    """``out`` holds a finished catalog written for exactly ``config`` (whose images are all still there)."""
    try:
        truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
        if truth.get("version") != GENERATOR_VERSION or truth.get("config") != config:
            return False
        images = pd.read_parquet(out / "items.parquet", columns=["image"])["image"]
        pd.read_parquet(out / "interactions.parquet", columns=["item_id"])
    except (OSError, ValueError, KeyError):  # missing or unreadable: not complete
        return False
    return len(images) == truth["counts"]["items"] and all(Path(p).is_file() for p in images)


def generate_catalog(cfg: SyntheticConfig) -> Path:
    """Write the synthetic catalog described by ``cfg`` into ``cfg.out`` (see the module docstring).

    Returns the absolute catalog folder. Reuses a complete catalog written for the same config (and the
    same folder: image paths are absolute); replaces an older catalog of a different config; refuses to
    touch a non-empty folder that is not a catalog. One process writes it at a time (a second one is
    refused at once, naming the first).
    """
    out = Path(cfg.out).expanduser().resolve()
    config = {**to_dict(cfg), "out": str(out)}
    if _is_complete(out, config):
        log.info("synthetic catalog %s is up to date", out)
        return out
    with folder_lock(
        out, "synthetic catalog", create=True
    ):  # one writer; the lock sits beside the folder it replaces
        if _is_complete(out, config):  # written by the process that held the lock before
            return out
        return _generate_locked(cfg, out, config)


def _generate_locked(cfg: SyntheticConfig, out: Path, config: dict[str, Any]) -> Path:
    from tqdm.auto import tqdm

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "truth.json").exists())):
        raise LlmrecError(
            "exists and is not a synthetic catalog (no truth.json); refusing to overwrite it",
            file=out,
            hint="pass a new or empty folder",
        )
    cat = _catalog(cfg)
    inter, users_truth = _sequences(cfg, cat)
    colours = list(COLOURS)
    image_paths = [str(out / "images" / f"{i}.png") for i in cat["item_id"]]
    items = make_items(
        pd.DataFrame(
            {
                "item_id": cat["item_id"],
                "title": cat["title"],
                "brand": cat["colour_name"],
                "category": cat["shape_name"],
                "description": [
                    f"A {c} {s} on a light background." for c, s in zip(cat["colour_name"], cat["shape_name"])
                ],
                "image": image_paths,
                "variant": cat["variant"],
            }
        ),
        source="synthetic catalog",
    )
    interactions = make_interactions(inter, source="synthetic catalog")
    truth = {
        "version": GENERATOR_VERSION,
        "rule": RULE,
        "favourite_prob": FAVOURITE_PROB,
        "shapes": SHAPES[: cfg.n_shapes],
        "colours": {c: list(COLOURS[c]) for c in colours[: cfg.n_colours]},
        "counts": {
            "items": len(items),
            "users": cfg.n_users,
            "interactions": len(interactions),
            "rule_steps": users_truth["steps"]["rule"],
            "noise_steps": users_truth["steps"]["noise"],
            "repeated_picks": users_truth["steps"]["repeats"],
        },
        "measured": rule_rates(interactions, items, users_truth["favourite_colour"], cfg.n_shapes),
        "config": config,
        "favourite_colour": users_truth["favourite_colour"],
    }

    tmp = partial_dir(out.parent, out.name)  # follows the umask, names its process (stale ones are removable)
    try:
        with disk_errors(out, temp=tmp):  # PIL and pyarrow name no file on a full disk
            (tmp / "images").mkdir()
            for k, row in enumerate(
                tqdm(cat.itertuples(), total=len(cat), desc="synthetic images", disable=None)
            ):
                rng = np.random.default_rng([cfg.seed, 2, k])  # per item: pictures do not depend on n_users
                img = draw_item(row.shape_name, COLOURS[row.colour_name], cfg.size, rng)
                img.save(tmp / "images" / f"{row.item_id}.png", format="PNG", compress_level=6)
            items.to_parquet(tmp / "items.parquet", index=False)
            interactions.to_parquet(tmp / "interactions.parquet", index=False)
            write_json_atomic(tmp / "truth.json", truth)  # written last: it marks a finished catalog
            replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote synthetic catalog %s: %s", out, truth["counts"])
    return out
