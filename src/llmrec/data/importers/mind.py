"""MIND (Microsoft News Dataset): ``news.tsv`` and ``behaviors.tsv`` as released (small or large, train/dev).

Layout (tab-separated, no header; MIND's README):

- ``news.tsv``: news_id, category, subcategory, title, abstract, url, title_entities, abstract_entities.
- ``behaviors.tsv``: impression_id, user_id, time (``11/15/2019 8:55:22 AM``), history (the user's clicked
  news ids before the impression, oldest first, space-separated), impressions (``N1-1 N2-0``: shown news
  with 1 = clicked, 0 = not clicked).

What becomes what:

- Every shown news of an impression is one interaction at the impression's time with ``label`` 1 (clicked)
  or 0 (not clicked), in the order shown: real CTR rows. A CTR history holds only clicks of strictly
  earlier times (``llmrec prepare``'s ``--ctr-history-before time``, this source's default), so every row
  of an impression gets the same history and no click of an impression enters the history of another row
  of it (which would tell the clicked rows apart from the rest: a leak of the label).
- The history column becomes the user's earlier clicks: each news id listed there is one label-1
  interaction, emitted once per user, placed just before the first impression (in time) whose history
  lists it, one second apart in the listed order (MIND gives them no time). So the CTR history of a user's
  first impressions is their MIND history, and those clicks are also positive CTR rows of their own
  (mostly in the training split, being the oldest rows).
- Items: title; category (subcategory in ``extra``); abstract -> description; the article URL in
  ``extra["url"]`` (a web page, not an image). The entity annotations are not kept. MIND ships no
  images: ``--image-dir`` (or an ``images/`` folder inside ``--path``) holding ``<news_id>.jpg`` gives them.

Times are read as UTC. Behaviors without labels (MIND-large's test split) cannot give CTR rows: such a
file is skipped with a warning (and recorded in meta.json's source), or refused when it is the only one.
"""

from __future__ import annotations

import csv
import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.data.importers.registry import ImportSpec, register_importer
from llmrec.data.readers import image_files, located_error, reading_errors, scan_lines, text_lines
from llmrec.data.schema import RawData, make_interactions, make_items
from llmrec.errors import LlmrecError

log = logging.getLogger(__name__)

NEWS_COLUMNS = (
    "news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities",
)  # fmt: skip
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # 11/15/2019 8:55:22 AM
_IMPRESSIONS = r"\s*[^\s-]\S*-[01](?:\s+[^\s-]\S*-[01])*\s*"  # "N1-1 N2-0"
_HINT = "the file looks damaged: download MIND again from https://msnews.github.io/"
_LAYOUT_HINT = (
    "pass --path a MIND folder holding news.tsv and behaviors.tsv, or one whose sub-folders "
    "(MINDsmall_train, MINDsmall_dev, ...) each hold both"
)


# ----------------------------------------------------------------------------- finding the files


def mind_splits(path: Path) -> list[Path]:
    """The folders holding both ``news.tsv`` and ``behaviors.tsv``: ``path`` itself, or its sub-folders."""
    if not path.is_dir():
        raise LlmrecError("MIND folder not found", file=path, hint=_LAYOUT_HINT)

    def complete(folder: Path) -> bool:
        return (folder / "news.tsv").is_file() and (folder / "behaviors.tsv").is_file()

    if complete(path):
        return [path]
    splits = [sub for sub in sorted(path.iterdir()) if sub.is_dir() and complete(sub)]
    if not splits:
        raise LlmrecError(
            "not a MIND folder: no news.tsv and behaviors.tsv side by side, here or in a sub-folder",
            file=path,
            hint=_LAYOUT_HINT,
        )
    return splits


# ----------------------------------------------------------------------------- news.tsv


def read_news(path: Path) -> pd.DataFrame:
    """``news.tsv`` as raw string columns (:data:`NEWS_COLUMNS`); a malformed line is a one-line error."""
    rows: list[list[str]] = []
    for lineno, line in text_lines(path):
        fields = line.split("\t")
        if len(fields) != len(NEWS_COLUMNS):
            raise LlmrecError(
                f"{len(fields)} tab-separated fields where {len(NEWS_COLUMNS)} are expected "
                f"({', '.join(NEWS_COLUMNS)})",
                file=path,
                row=lineno,
                field=NEWS_COLUMNS[len(fields)] if len(fields) < len(NEWS_COLUMNS) else None,
                hint=_HINT,
            )
        if not fields[0].strip():
            raise LlmrecError("empty news id", file=path, row=lineno, field="news_id", hint=_HINT)
        rows.append(fields)
    if not rows:
        raise LlmrecError("no news in the file", file=path, hint=_HINT)
    return pd.DataFrame(rows, columns=list(NEWS_COLUMNS))


def news_items(news: pd.DataFrame, images: dict[str, Path], source: Path) -> pd.DataFrame:
    """The canonical item table of the news (the first line of a news id wins, as across splits)."""
    ids = news["news_id"].str.strip()
    return make_items(
        pd.DataFrame(
            {
                "item_id": ids,
                "title": news["title"],
                "category": news["category"],
                "description": news["abstract"],
                "image": [str(images[i]) if i in images else "" for i in ids],
                "subcategory": news["subcategory"],
                "url": news["url"].str.strip(),
            }
        ),
        source=str(source),
    )


# ----------------------------------------------------------------------------- behaviors.tsv


def _token_problem(token: str) -> str | None:
    news_id, sep, label = token.rpartition("-")
    if not sep or not news_id:
        return (
            f"impression {token!r} has no click label (expected <news_id>-1 or <news_id>-0; "
            "MIND's test split has none and cannot give CTR rows)"
        )
    if label not in ("0", "1"):
        return f"impression {token!r}: click label {label!r} is neither 1 nor 0"
    return None


def _behavior_line_problem(line: str) -> tuple[str | None, str] | None:
    """What is wrong with one behaviors.tsv line, as (field, message), or None."""
    if not line.strip():
        return None
    fields = line.split("\t")
    if len(fields) != len(BEHAVIOR_COLUMNS):
        short = len(fields) < len(BEHAVIOR_COLUMNS)
        return (
            BEHAVIOR_COLUMNS[len(fields)] if short else None,
            f"{len(fields)} tab-separated fields where {len(BEHAVIOR_COLUMNS)} are expected "
            f"({', '.join(BEHAVIOR_COLUMNS)})",
        )
    _, user, time, _, impressions = fields
    if not user.strip():
        return "user_id", "empty user id"
    if pd.isna(pd.to_datetime(time, format=TIME_FORMAT, errors="coerce")):
        return "time", f"{time!r} is not a MIND time like '11/15/2019 8:55:22 AM'"
    if not impressions.split():
        return "impressions", "no impressions"
    for token in impressions.split():
        if (problem := _token_problem(token)) is not None:
            return "impressions", problem
    return None


def read_behaviors(path: Path) -> pd.DataFrame | None:
    """``behaviors.tsv`` as one row per impression: line (1-based), user_id, timestamp (unix seconds, UTC),
    history (text), impressions (text). None for a file without click labels (MIND's test split)."""
    locate = functools.partial(scan_lines, path, _behavior_line_problem)
    with reading_errors(path, _HINT, locate):
        df = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=[*BEHAVIOR_COLUMNS, "_extra"],  # a line with too many fields fills _extra
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=False,  # row i is line i + 1, for the error messages
            index_col=False,
        )
    df["line"] = np.arange(1, len(df) + 1)
    df = df.loc[(df.drop(columns="line") != "").any(axis=1)]  # blank lines
    if df.empty:
        raise LlmrecError("no impressions in the file", file=path, hint=_HINT)
    labelled = df["impressions"].str.contains(r"-[01](?:\s|$)", regex=True)
    if not labelled.any():
        return None
    times = pd.to_datetime(df["time"], format=TIME_FORMAT, errors="coerce")
    bad = times.isna() | (df["user_id"].str.strip() == "") | (df["_extra"] != "")
    bad |= ~df["impressions"].str.fullmatch(_IMPRESSIONS)  # every token <id>-1 or <id>-0
    if bad.any():
        raise located_error(path, locate(), f"data line {int(df.loc[bad, 'line'].iloc[0])}", _HINT)
    seconds = (times - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    return pd.DataFrame(
        {
            "line": df["line"].to_numpy(),
            "user_id": df["user_id"].str.strip().to_numpy(),
            "timestamp": seconds.astype("int64").to_numpy(),
            "history": df["history"].to_numpy(),
            "impressions": df["impressions"].to_numpy(),
        }
    )


def impression_rows(behaviors: pd.DataFrame) -> pd.DataFrame:
    """One row per shown news: user_id, item_id, timestamp, label, in the order shown."""
    shown = behaviors[["user_id", "timestamp"]].assign(token=behaviors["impressions"].str.split())
    shown = shown.explode("token", ignore_index=True)
    parts = shown["token"].str.rpartition("-")
    shown["item_id"] = parts[0]
    shown["label"] = parts[2].astype("float64")
    return shown[["user_id", "item_id", "timestamp", "label"]].reset_index(drop=True)


def history_rows(behaviors: pd.DataFrame) -> pd.DataFrame:
    """The history column as label-1 rows: each news id once per user, at the first impression (in time)
    whose history lists it, placed before it one second apart in the listed order."""
    # Impressions of one user repeat the same history: expand each distinct one once, at its earliest time.
    first = (
        behaviors.assign(order=np.arange(len(behaviors)))
        .sort_values(["user_id", "timestamp", "order"], kind="stable")
        .drop_duplicates(["user_id", "history"], keep="first")
    )
    listed = first[["user_id", "timestamp", "order"]].assign(item_id=first["history"].str.split())
    listed = listed.explode("item_id", ignore_index=True).dropna(subset=["item_id"])
    listed = listed.drop_duplicates(["user_id", "item_id"], keep="first")  # the first listing in time wins
    position = listed.groupby("order", sort=False).cumcount()
    count = listed.groupby("order", sort=False)["item_id"].transform("size")
    listed["timestamp"] = listed["timestamp"] - (count - position)
    listed["label"] = 1.0
    return listed[["user_id", "item_id", "timestamp", "label"]].reset_index(drop=True)


# ----------------------------------------------------------------------------- the importer


@register_importer("mind", defaults={"ctr_history_len": 10, "ctr_history_before": "time"})
def import_mind(spec: ImportSpec) -> RawData:
    """MIND from ``spec.path``: a folder with ``news.tsv`` + ``behaviors.tsv``, or one whose sub-folders (train,
    dev) each hold both; all are read together. See the module docstring for labels, history and images.
    The CTR history length defaults to 10 (HistLLM's news setting), histories to the clicks of earlier times;
    the prompts call an item a news article."""
    if not spec.path:
        raise LlmrecError("no MIND folder given", hint=_LAYOUT_HINT)
    root = Path(spec.path).expanduser()
    images = image_files(spec.image_dir, root / "images")
    behaviors, news, labelled, unlabelled, skipped = [], [], [], [], []
    for folder in mind_splits(root):
        table = read_behaviors(folder / "behaviors.tsv")
        if table is None:
            log.warning("%s has no click labels (a test split?): skipped", folder / "behaviors.tsv")
            skipped.append(str(folder / "behaviors.tsv"))
            unlabelled.append(folder)
        else:
            behaviors.append(table)
            labelled.append(folder)
        news.append(read_news(folder / "news.tsv"))  # a test split's news still describe items
    if not behaviors:
        raise LlmrecError(
            "no click labels (<news_id>-1 / <news_id>-0) in the impressions",
            file=skipped[0],
            hint="MIND's test split has none: pass its train or dev folder",
        )
    # per split its behaviors then its news: the interactions file first, its items file second (what
    # prepare's messages name)
    files = [str(f / name) for f in labelled for name in ("behaviors.tsv", "news.tsv")]
    files += [str(f / "news.tsv") for f in unlabelled]
    all_behaviors = pd.concat(behaviors, ignore_index=True)
    hist = history_rows(all_behaviors)
    shown = impression_rows(all_behaviors)
    interactions = make_interactions(pd.concat([hist, shown], ignore_index=True), source=files[0])
    items = news_items(pd.concat(news, ignore_index=True), images, Path(files[1]))
    log.info(
        "mind: %d impressions -> %d shown news (%d clicked) and %d history clicks; %d news, %d with an image",
        len(all_behaviors), len(shown), int(shown["label"].sum()), len(hist), len(items),
        int((items["image"] != "").sum()),
    )  # fmt: skip
    source = {
        "name": "mind",
        "files": files,
        "item_noun": "news article",
        "history": "each history news id: one label-1 interaction before the first impression listing it",
        "history_clicks": len(hist),
        "impression_rows": len(shown),
    }
    if skipped:
        source["skipped_unlabelled"] = skipped
    return RawData(items=items, interactions=interactions, source=source)
