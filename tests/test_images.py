"""``llmrec images`` against a local HTTP server: statuses, retries, size caps, resume and --missing drop."""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from llmrec.config import from_dict
from llmrec.data import images as images_mod
from llmrec.data.dataset import Dataset
from llmrec.data.images import ImagesConfig, fetch_images, image_paths, load_manifest
from llmrec.data.processing import ProcessConfig, finalize, write_dataset
from llmrec.data.schema import make_interactions, make_items
from llmrec.errors import ConfigError, LlmrecError
from llmrec.utils.io import sha256_file

MAX_BYTES = 50_000
TIMEOUT = 1.0  # the slow endpoint sleeps longer than this (0.4 s timed a fast fetch out with the suite in 2 processes)


def _encode(size: tuple[int, int], fmt: str, noise: bool = False) -> bytes:
    if noise:
        rng = random.Random(0)
        img = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    else:
        img = Image.new("RGB", size, (200, 30, 90))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


PNG = _encode((16, 16), "PNG")
JPEG = _encode((20, 12), "JPEG")
TINY = _encode((4, 4), "PNG")
TRUNCATED = _encode((64, 64), "JPEG", noise=True)[:1500]
CORRUPT = bytes(random.Random(1).randrange(256) for _ in range(3000))
HUGE = b"\xff\xd8\xff" + bytes(MAX_BYTES + 10_000)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 that counts requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

            def _send(self, code: int, body: bytes, ctype: str = "image/png", length: bool = True) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.hits[path] += 1
                    n = server.hits[path]
                try:
                    if path == "/good.png":
                        self._send(200, PNG)
                    elif path == "/good.jpg":
                        self._send(200, JPEG, "image/jpeg")
                    elif path == "/flaky.png":  # 503 once, then the image
                        self._send(503, b"busy", "text/plain") if n == 1 else self._send(200, PNG)
                    elif path == "/down.png":
                        self._send(503, b"busy", "text/plain")
                    elif path == "/slow.jpg":
                        time.sleep(TIMEOUT * 3)
                        self._send(200, JPEG, "image/jpeg")
                    elif path == "/forbidden.jpg":
                        self._send(403, b"no", "text/plain")
                    elif path == "/corrupt.jpg":
                        self._send(200, CORRUPT, "image/jpeg")
                    elif path == "/truncated.jpg":
                        self._send(200, TRUNCATED, "image/jpeg")
                    elif path == "/huge.jpg":  # no Content-Length: the cap must hold while streaming
                        self._send(200, HUGE, "image/jpeg", length=False)
                    elif path == "/huge_cl.jpg":
                        self._send(200, HUGE, "image/jpeg")
                    elif path == "/tiny.png":
                        self._send(200, TINY)
                    else:
                        self._send(404, b"not found", "text/plain")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.hits)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# item_id -> (image reference; "{url}" is the server, expected status)
GOOD = ["i01", "i02", "i03", "i04", "i05", "i06"]
CASES = {
    "i01": ("{url}/good.png", "ok"),
    "i02": ("{url}/good.jpg", "ok"),
    "i03": ("{url}/flaky.png", "ok"),
    "i04": ("{url}/good.png", "ok"),  # same URL as i01: downloaded once
    "i05": ("local/a.png", "ok"),  # relative to the dataset dir
    "i06": ("{url}/never.jpg", "ok"),  # found in image_dir first: the URL is never requested
    "i07": ("{url}/slow.jpg", "timeout"),
    "i08": ("{url}/missing.jpg", "http_404"),
    "i09": ("{url}/forbidden.jpg", "http_403"),
    "i10": ("{url}/corrupt.jpg", "corrupt"),
    "i11": ("{url}/truncated.jpg", "corrupt"),
    "i12": ("{url}/huge.jpg", "too_large"),
    "i13": ("{url}/huge_cl.jpg", "too_large"),
    "i14": ("{url}/tiny.png", "too_small"),
    "i15": ("{url}/down.png", "http_503"),
    "i16": ("", "no_reference"),
    "i17": ("/nonexistent/llmrec/img.jpg", "missing_file"),
    "i18": ("ftp://127.0.0.1/x.jpg", "error"),
    "i19": ("http://127.0.0.1:{port}/x.jpg", "error"),  # connection refused
}
EXPECTED = {i: status for i, (_, status) in CASES.items()}


@pytest.fixture
def dataset(tmp_path: Path, server: Server) -> Path:
    """A prepared dataset of 19 items (6 with good images), 6 users; plus an image_dir with i06.png."""
    port = _closed_port()
    refs = {i: ref.format(url=server.url, port=port) for i, (ref, _) in CASES.items()}
    items = make_items([{"item_id": i, "title": f"item {i}", "image": refs[i]} for i in CASES], "test")
    bad = [i for i in CASES if i not in GOOD]
    rows, t = [], 0
    for u in range(6):  # each user skips two good items: 2 negatives before and after dropping the bad ones
        skip = {GOOD[u % 6], GOOD[(u + 1) % 6]}
        for i in bad + [g for g in GOOD if g not in skip]:
            rows.append({"user_id": f"u{u}", "item_id": i, "timestamp": t})
            t += 1
    inter = make_interactions(rows, "test")
    cfg = ProcessConfig(kcore=0, num_negatives=2)
    counts = {"users": 6, "items": len(CASES), "interactions": len(inter)}
    root = tmp_path / "ds"
    write_dataset(finalize(items, inter, cfg, {"name": "synthetic"}, counts, []), root)
    (root / "local").mkdir()
    (root / "local" / "a.png").write_bytes(PNG)
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    (image_dir / "i06.png").write_bytes(JPEG)  # wrong extension on purpose: PIL reads the content
    (image_dir / "notes.txt").write_text("ignored")
    return root


def _cfg(root: Path, **kw: object) -> ImagesConfig:
    base = dict(
        data=str(root),
        image_dir=str(root.parent / "imgs"),
        workers=8,
        timeout=TIMEOUT,
        retries=1,
        backoff=0.01,
        max_bytes=MAX_BYTES,
        min_side=8,
    )
    return ImagesConfig(**{**base, **kw})  # type: ignore[arg-type]


def _statuses(root: Path) -> dict[str, str]:
    m = load_manifest(root)
    return dict(zip(m["item_id"], m["status"]))


def test_statuses_files_and_manifest(dataset: Path, server: Server) -> None:
    summary = fetch_images(_cfg(dataset))
    assert _statuses(dataset) == EXPECTED
    assert summary["n_items"] == 19 and summary["dropped"] == 0 and summary["skipped"] == 0
    assert summary["counts"] == dict(sorted(Counter(EXPECTED.values()).items()))
    assert len(summary["failures"]) == 10
    assert {f["status"] for f in summary["failures"]} <= set(EXPECTED.values()) - {"ok"}

    m = load_manifest(dataset).set_index("item_id")
    assert list(load_manifest(dataset).columns) == images_mod.MANIFEST_COLUMNS
    for i in GOOD:
        row = m.loc[i]
        path = Path(row["path"]) if Path(row["path"]).is_absolute() else dataset / row["path"]
        assert path.is_file() and sha256_file(path) == row["sha256"], i
        assert row["error"] == ""
    assert m.loc["i01", "path"] == m.loc["i04", "path"]  # one download for a shared URL
    assert m.loc["i01", "path"].startswith("images/files/") and m.loc["i01", "path"].endswith(".png")
    assert m.loc["i02", "path"].endswith(".jpg") and (m.loc["i02", "width"], m.loc["i02", "height"]) == (
        20,
        12,
    )
    # A local file elsewhere in the dataset dir is copied under images/: dataset rewrites keep only images/.
    assert (
        m.loc["i05", "path"].startswith("images/files/") and m.loc["i05", "sha256"] == m.loc["i01", "sha256"]
    )
    assert m.loc["i06", "path"] == str((dataset.parent / "imgs" / "i06.png").resolve())
    for i in set(CASES) - set(GOOD):
        assert m.loc[i, "path"] == "" and m.loc[i, "sha256"] == "" and m.loc[i, "error"], i
    # Only good images reached images/files (bad downloads and temp files are removed).
    files = sorted(p.name for p in (dataset / "images" / "files").iterdir())
    assert len(files) == 4 and not any(f.startswith(".") for f in files)

    hits = server.snapshot()
    assert hits["/good.png"] == 1 and hits["/never.jpg"] == 0
    assert hits["/flaky.png"] == 2  # retried after the 503
    assert hits["/down.png"] == 2 and hits["/slow.jpg"] == 2  # retries=1: two attempts
    assert hits["/missing.jpg"] == 1 and hits["/forbidden.jpg"] == 1  # 4xx is not retried
    assert "after 2 attempts" in m.loc["i15", "error"]

    paths = image_paths(Dataset(dataset))
    ids = Dataset(dataset).items["item_id"].tolist()
    assert len(paths) == len(ids)
    for i, p in zip(ids, paths):
        assert (p is not None) == (i in GOOD), i
        assert p is None or (p.is_absolute() and p.is_file())
    assert paths[ids.index("i05")] == (dataset / m.loc["i05", "path"]).resolve()


def test_rerun_skips_ok_items_and_refetches_changed_files(dataset: Path, server: Server) -> None:
    fetch_images(_cfg(dataset))
    first = server.snapshot()
    summary = fetch_images(_cfg(dataset))
    second = server.snapshot()
    assert summary["skipped"] == len(GOOD) and _statuses(dataset) == EXPECTED
    for path in ("/good.png", "/good.jpg", "/flaky.png"):
        assert second[path] == first[path], path  # nothing good is downloaded again
    assert second["/missing.jpg"] == first["/missing.jpg"] + 1  # failures are tried again

    m = load_manifest(dataset).set_index("item_id")
    (dataset / m.loc["i02", "path"]).unlink()  # a deleted file is fetched again...
    (dataset / m.loc["i01", "path"]).write_bytes(JPEG)  # ...and so is one whose bytes changed
    summary = fetch_images(_cfg(dataset))
    third = server.snapshot()
    assert third["/good.jpg"] == second["/good.jpg"] + 1
    assert third["/good.png"] == second["/good.png"] + 1  # i01 and i04 share it: still one request
    assert third["/flaky.png"] == second["/flaky.png"]
    assert summary["skipped"] == len(GOOD) - 3 and _statuses(dataset) == EXPECTED
    m = load_manifest(dataset).set_index("item_id")
    assert sha256_file(dataset / m.loc["i01", "path"]) == m.loc["i01", "sha256"]

    # Without the image folder, i06 falls back to its URL (a 404 here): a changed reference is re-checked.
    fetch_images(_cfg(dataset, image_dir=None))
    assert _statuses(dataset)["i06"] == "http_404" and server.snapshot()["/never.jpg"] == 1


def test_missing_drop_removes_bad_items_and_keeps_their_record(dataset: Path, server: Server) -> None:
    summary = fetch_images(_cfg(dataset, missing="drop"))
    assert summary["dropped"] == len(CASES) - len(GOOD) and summary["n_items_after"] == len(GOOD)
    ds = Dataset(dataset)
    assert ds.items["item_id"].tolist() == GOOD
    assert set(pd.read_parquet(dataset / "items.parquet")["item_id"]) == set(GOOD)
    assert _statuses(dataset) == EXPECTED  # the manifest survives the rewrite and records every item
    assert any("image missing or unreadable" in f["step"] for f in ds.meta["filters"])
    paths = image_paths(ds)
    assert len(paths) == len(GOOD) and all(p is not None and p.is_file() for p in paths)
    m = load_manifest(dataset).set_index("item_id")
    assert [sha256_file(p) for p in paths] == [m.loc[i, "sha256"] for i in GOOD]  # aligned by item_id
    # A second run over the smaller dataset downloads nothing.
    before = server.snapshot()
    again = fetch_images(_cfg(dataset, missing="drop"))
    assert again["dropped"] == 0 and again["skipped"] == len(GOOD) and server.snapshot() == before


def test_interrupted_run_resumes_from_checkpoint(
    dataset: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images_mod, "CHECKPOINT_EVERY", 1)
    real_run_job = images_mod._run_job
    calls = []

    def interrupted(job, *args):  # type: ignore[no-untyped-def]
        calls.append(job.ref)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_job(job, *args)

    monkeypatch.setattr(images_mod, "_run_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_images(_cfg(dataset, workers=1))
    statuses = _statuses(dataset)
    # The jobs before the interrupt finished (later ones may have too, the pool runs ahead); i03 did not.
    assert [statuses[i] for i in ("i01", "i02", "i04")] == ["ok", "ok", "ok"]
    assert statuses["i03"] == "error"
    assert "not fetched yet" in load_manifest(dataset).set_index("item_id").loc["i03", "error"]
    n_ok = sum(s == "ok" for s in statuses.values())

    monkeypatch.setattr(images_mod, "_run_job", real_run_job)
    writes = []
    real_write = images_mod._write_manifest
    monkeypatch.setattr(images_mod, "_write_manifest", lambda *a: (writes.append(1), real_write(*a)))
    before = server.snapshot()
    summary = fetch_images(_cfg(dataset))
    assert len(writes) > 2  # checkpoints along the way (every item here), then the final write
    assert summary["skipped"] == n_ok and _statuses(dataset) == EXPECTED
    after = server.snapshot()
    assert after["/good.png"] == before["/good.png"] and after["/good.jpg"] == before["/good.jpg"]


def test_image_paths_without_manifest_uses_existing_local_files(dataset: Path) -> None:
    ds = Dataset(dataset)
    paths = dict(zip(ds.items["item_id"], image_paths(ds)))
    assert paths["i05"] == (dataset / "local" / "a.png").resolve()
    assert all(p is None for i, p in paths.items() if i != "i05")  # URLs and missing files: unknown yet
    assert image_paths(str(dataset)) == list(paths.values())


def test_image_paths_reports_a_vanished_file_or_a_stale_manifest(dataset: Path) -> None:
    fetch_images(_cfg(dataset))
    manifest = load_manifest(dataset)
    manifest.loc[manifest["item_id"] != "i03"].to_parquet(dataset / "images" / "manifest.parquet")
    with pytest.raises(LlmrecError, match=r"row 3: item 'i03' is not in the image manifest"):
        image_paths(Dataset(dataset))
    manifest.to_parquet(dataset / "images" / "manifest.parquet")
    (dataset / load_manifest(dataset).set_index("item_id").loc["i02", "path"]).unlink()
    with pytest.raises(
        LlmrecError, match=r"row 2, field 'image': image file missing \(images/files/.*llmrec images"
    ):
        image_paths(Dataset(dataset))


def test_config_and_input_errors(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match="required"):
        ImagesConfig()
    with pytest.raises(ConfigError, match="workers"):
        ImagesConfig(data="x", workers=0)
    with pytest.raises(ConfigError, match="missing"):
        from_dict(ImagesConfig, {"data": "x", "missing": "skip"})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ImagesConfig, {"data": "x", "retry": 2})
    with pytest.raises(LlmrecError, match="dataset directory not found.*llmrec prepare"):
        fetch_images(ImagesConfig(data=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmrecError, match="meta.json missing"):
        fetch_images(ImagesConfig(data=str(tmp_path / "empty")))
    with pytest.raises(LlmrecError, match="image folder not found"):
        fetch_images(ImagesConfig(data=str(dataset), image_dir=str(tmp_path / "no-images")))
    with pytest.raises(LlmrecError, match="no image manifest"):
        load_manifest(dataset)


def test_a_symlink_loop_is_unreadable_not_without_reference(tmp_path: Path) -> None:
    """Regression: an image path that is a symlink loop (a -> b -> a) crashed the command, and one in
    --image-dir was skipped, the item recorded ``no_reference`` although a file is there. Both are
    ``unreadable`` with the reason; a dangling link stays ``missing_file`` and a good file ``ok``."""
    root, links = tmp_path / "ds", tmp_path / "links"
    refs = {
        "i1": str(links / "a.png"),
        "i2": "",
        "i3": str(links / "gone.png"),
        "i4": "good.png",
        "i5": "sub",
    }
    items = make_items([{"item_id": i, "title": i, "image": ref} for i, ref in refs.items()], "test")
    pairs = [(u, i) for u in range(5) for i in refs if i != f"i{u + 1}"]  # each user skips one: 1 negative
    inter = make_interactions(
        [{"user_id": f"u{u}", "item_id": i, "timestamp": t} for t, (u, i) in enumerate(pairs)], "test"
    )
    write_dataset(finalize(items, inter, ProcessConfig(kcore=0, num_negatives=1), {}, {}, []), root)
    (root / "good.png").write_bytes(PNG)
    (root / "sub").mkdir()
    links.mkdir()
    (links / "a.png").symlink_to(links / "b.png")
    (links / "b.png").symlink_to(links / "a.png")
    (links / "gone.png").symlink_to(links / "nothing.png")
    image_dir = tmp_path / "imgs"  # i2 (no reference of its own) is found here: a loop too
    image_dir.mkdir()
    (image_dir / "i2.png").symlink_to(image_dir / "i2.jpg")
    (image_dir / "i2.jpg").symlink_to(image_dir / "i2.png")
    summary = fetch_images(ImagesConfig(data=str(root), image_dir=str(image_dir), workers=1))
    rows = load_manifest(root).set_index("item_id")
    assert rows["status"].to_dict() == {
        "i1": "unreadable",
        "i2": "unreadable",
        "i3": "missing_file",
        "i4": "ok",
        "i5": "unreadable",
    }
    assert rows.loc["i1", "error"].startswith(f"symlink loop: {links / 'a.png'} (")
    assert rows.loc["i2", "error"].startswith(f"symlink loop: {image_dir / 'i2.jpg'} (")
    assert rows.loc["i3", "error"] == f"file not found: {links / 'nothing.png'}"  # where the link points
    assert rows.loc["i5", "error"] == f"not a regular file: {(root / 'sub').resolve()}"
    assert summary["counts"] == {"missing_file": 1, "ok": 1, "unreadable": 3}
    assert set(rows["status"]) <= set(images_mod.STATUSES)
