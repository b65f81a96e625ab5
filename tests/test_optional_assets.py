"""The optional offline assets that ship in chunks (Gemma 3 270M, Qwen2.5-Coder-0.5B-Instruct GGUFs; the
all-mpnet-base-v2 zip): joined once into the cache, checked, loadable by alias.

The fast tests join fake chunks; the slow ones load the real models and skip where the asset is not
installed (the default install and CI do not install optional assets)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from llmrec import assets
from llmrec.errors import LlmrecError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blobs: list[bytes], **kw) -> assets.Chunked:
    """A Chunked whose chunk files are ``blobs`` under tmp_path (the distributions' lookup patched)."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    for i, blob in enumerate(blobs):
        (folder / f"c{i}").write_bytes(blob)
    monkeypatch.setattr(assets, "_chunk_path", lambda dist, inner, name: folder / inner)
    chunks = tuple((f"dist-{i}", f"c{i}") for i in range(len(blobs)))
    return assets.Chunked("fake", "fake.gguf", chunks, size=kw.pop("size", sum(map(len, blobs))), **kw)


def test_chunks_join_in_order_once(cache, tmp_path, monkeypatch):
    blobs = [b"GGUF" + bytes(range(200)), b"x" * 5000, b"tail"]
    c = fake_chunks(tmp_path, monkeypatch, blobs, sha256=hashlib.sha256(b"".join(blobs)).hexdigest())
    path = assets.joined(c)
    assert path == cache / "assets" / "fake.gguf" and path.read_bytes() == b"".join(blobs)
    for f in (tmp_path / "site").iterdir():  # the second call reads no chunk
        f.unlink()
    assert assets.joined(c) == path
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no partial file left


def test_a_truncated_joined_file_is_joined_again(cache, tmp_path, monkeypatch):
    c = fake_chunks(tmp_path, monkeypatch, [b"a" * 100, b"b" * 100])
    path = assets.joined(c)
    path.write_bytes(b"a" * 100)  # e.g. a disk that filled up in another run
    assert assets.joined(c).read_bytes() == b"a" * 100 + b"b" * 100


def test_chunks_of_the_wrong_size_are_one_line_naming_the_reinstall(cache, tmp_path, monkeypatch):
    c = fake_chunks(tmp_path, monkeypatch, [b"a" * 100, b"b" * 99], size=200)
    with pytest.raises(
        LlmrecError, match="add up to 199 bytes, not 200.*llmrec assets install --reinstall fake"
    ):
        assets.joined(c)
    assert not (cache / "assets").exists() or not any((cache / "assets").iterdir())


def test_a_checksum_mismatch_writes_nothing(cache, tmp_path, monkeypatch):
    c = fake_chunks(tmp_path, monkeypatch, [b"a" * 10], sha256="0" * 64)
    with pytest.raises(LlmrecError, match="sha256 .* not the published 000000000000"):
        assets.joined(c)
    assert not any((cache / "assets").iterdir())  # neither the file nor a partial one


def test_a_missing_chunk_package_names_the_install(cache, monkeypatch):
    monkeypatch.setattr(assets.importlib.metadata, "distribution", _not_installed)
    with pytest.raises(LlmrecError, match="is not installed; run 'llmrec assets install qwen2.5-coder'$"):
        assets.qwen_coder_gguf()


def _not_installed(name: str):
    raise assets.importlib.metadata.PackageNotFoundError(name)


def _zip_of(folder_files: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in folder_files.items():
            z.writestr(name, blob)
    return buf.getvalue()


def test_mpnet_unzips_once_and_checks_its_weights(cache, tmp_path, monkeypatch):
    blob = _zip_of({"all-mpnet-base-v2/model.safetensors": b"w" * 64, "all-mpnet-base-v2/config.json": b"{}"})
    fake = fake_chunks(tmp_path, monkeypatch, [blob[:50], blob[50:]])
    monkeypatch.setattr(assets, "MPNET_ZIP", fake)
    monkeypatch.setattr(assets, "_MPNET_WEIGHTS", 64)
    folder = assets.mpnet_path()
    assert folder == cache / "models" / "all-mpnet-base-v2" and (folder / "config.json").read_text() == "{}"
    assert not (cache / "assets" / "fake.gguf").exists()  # the zip is removed once unzipped
    assert assets.mpnet_path() == folder  # and not needed again
    monkeypatch.setattr(assets, "_MPNET_WEIGHTS", 65)  # weights of another size: unzipped again, refused
    with pytest.raises(LlmrecError, match="model.safetensors of 64 bytes, not 65"):
        assets.mpnet_path()


def test_a_damaged_mpnet_zip_is_one_line(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "MPNET_ZIP", fake_chunks(tmp_path, monkeypatch, [b"not a zip at all"]))
    with pytest.raises(LlmrecError, match="the joined mpnet zip is damaged.*--reinstall mpnet"):
        assets.mpnet_path()
    assert not (cache / "models" / "all-mpnet-base-v2").exists()


def test_text_encoder_names_resolve_to_the_installed_copy_or_stay_hub_ids(monkeypatch, tmp_path):
    monkeypatch.setattr(
        assets, "TEXT_ENCODER_ALIASES", {**assets.TEXT_ENCODER_ALIASES, "all-mpnet-base-v2": lambda: tmp_path}
    )
    assert assets.resolve_text_encoder("all-mpnet-base-v2") == str(tmp_path)
    monkeypatch.setattr(assets, "_missing", lambda a: False)
    assert assets.resolve_text_encoder("sentence-transformers/all-mpnet-base-v2") == str(tmp_path)
    monkeypatch.setattr(
        assets, "_missing", lambda a: True
    )  # not installed: the hub id, for a connected machine
    assert (
        assets.resolve_text_encoder("sentence-transformers/all-mpnet-base-v2")
        == "sentence-transformers/all-mpnet-base-v2"
    )


def test_llm_aliases_name_their_gguf(monkeypatch, tmp_path):
    gguf = tmp_path / "q.gguf"
    monkeypatch.setattr(
        assets, "LLM_ALIASES", {**assets.LLM_ALIASES, "qwen2.5-coder-0.5b-instruct": lambda: gguf}
    )
    assert assets._split_gguf("qwen2.5-coder-0.5b-instruct") == (str(tmp_path), "q.gguf")
    assert set(assets.LLM_ALIASES) == {"smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"}
    with pytest.raises(LlmrecError, match="aliases: smollm2-135m-instruct, gemma3-270m, qwen2.5-coder"):
        assets.local_model_path("./no/such/model")


def _installed(name: str) -> bool:
    return not assets._missing(assets.asset(name))


@pytest.mark.slow
@pytest.mark.skipif(not _installed("mpnet"), reason="optional asset: llmrec assets install mpnet")
def test_mpnet_encodes_768_d_by_alias_and_by_hub_id():
    from llmrec.features.encoders import SentenceTransformerEncoder

    enc = SentenceTransformerEncoder("sentence-transformers/all-mpnet-base-v2", device="cpu")
    vecs = enc.encode(["A red running shoe", "A blue running shoe", "Organic green tea"])
    assert vecs.shape == (3, 768)
    sim = torch.nn.functional.normalize(torch.as_tensor(vecs), dim=-1)
    sim = sim @ sim.T
    assert sim[0, 1] > 0.7 > 0.2 > sim[0, 2]  # the two shoes, not the tea


@pytest.mark.slow
@pytest.mark.skipif(
    not _installed("qwen2.5-coder"), reason="optional asset: llmrec assets install qwen2.5-coder"
)
def test_qwen_coder_loads_by_alias_without_a_bos():
    model, tok = assets.load_causal_lm(
        "qwen2.5-coder-0.5b-instruct"
    )  # first call dequantises (about a minute)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 896
    assert model.config.num_hidden_layers == 24 and len(tok) >= 151_643
    ids = tok("The capital of France is", return_tensors="pt")
    assert ids["input_ids"][0, 0] != tok.bos_token_id  # no BOS: tokenizer(text) adds none
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])
