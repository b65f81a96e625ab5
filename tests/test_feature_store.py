import numpy as np
import pytest

from llmrec.errors import LlmrecError
from llmrec.features.encoders import check_template, item_fields, render_template
from llmrec.features.store import compute_feature, ids_checksum, is_current, load_feature, save_feature

SPEC = {"kind": "item", "encoder": "fake", "ids_sha256": ids_checksum(["a", "b"])}


def _encode_rows(idx):
    vals = np.stack([np.full(4, float(i)) for i in idx])
    return vals, (idx % 5 == 0)


def test_compute_load_roundtrip(tmp_path):
    f = compute_feature(tmp_path, "x", 23, 4, _encode_rows, SPEC, batch_size=5)
    assert f.values.shape == (23, 4) and isinstance(f.values, np.memmap)
    loaded = load_feature(tmp_path, "x")
    # missing rows are zero and flagged
    assert loaded.missing.tolist() == [i % 5 == 0 for i in range(23)]
    expected = np.array([[0.0] * 4 if i % 5 == 0 else [float(i)] * 4 for i in range(23)])
    np.testing.assert_array_equal(loaded.values, expected)
    assert loaded.manifest["missing"] == 5 and loaded.manifest["encoder"] == "fake"
    assert is_current(tmp_path, "x", SPEC) and not is_current(tmp_path, "x", {**SPEC, "encoder": "other"})


class Interrupted(Exception):
    """Stands in for a kill in the middle of a run."""


def test_interrupted_run_never_loads_and_resumes(tmp_path):
    calls = []
    state = {"fail_at": 10}

    def flaky(idx):
        calls.append(int(idx[0]))
        if idx[0] == state["fail_at"]:
            state["fail_at"] = -1  # fail once, like a killed process
            raise Interrupted
        return _encode_rows(idx)

    with pytest.raises(Interrupted):
        compute_feature(tmp_path, "x", 23, 4, flaky, SPEC, batch_size=5)
    with pytest.raises(LlmrecError, match="not found.*resumes"):
        load_feature(tmp_path, "x")
    calls.clear()
    f = compute_feature(tmp_path, "x", 23, 4, flaky, SPEC, batch_size=5)
    assert calls[0] == 10  # resumed after the two completed batches, not from row 0
    reference = compute_feature(tmp_path / "ref", "x", 23, 4, _encode_rows, SPEC, batch_size=5)
    np.testing.assert_array_equal(f.values, reference.values)
    assert f.manifest["sha256"] == reference.manifest["sha256"]
    assert not list(tmp_path.glob(".x.*"))


def test_changed_spec_does_not_resume(tmp_path):
    def fail_third(idx):
        if idx[0] == 10:
            raise RuntimeError("boom")
        return _encode_rows(idx)

    with pytest.raises(RuntimeError):
        compute_feature(tmp_path, "x", 23, 4, fail_third, SPEC, batch_size=5)
    seen = []

    def record(idx):
        seen.append(int(idx[0]))
        return _encode_rows(idx)

    compute_feature(tmp_path, "x", 23, 4, record, {**SPEC, "encoder": "new"}, batch_size=5)
    assert seen[0] == 0


def test_tampered_file_and_wrong_order_are_rejected(tmp_path):
    save_feature(tmp_path, "cf", np.ones((2, 3), dtype=np.float32), SPEC)
    assert load_feature(tmp_path, "cf", expect_ids=["a", "b"]).dim == 3
    with pytest.raises(LlmrecError, match="order"):
        load_feature(tmp_path, "cf", expect_ids=["b", "a"])
    with open(tmp_path / "cf.npy", "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x01")
    with pytest.raises(LlmrecError, match="checksum"):
        load_feature(tmp_path, "cf")


def test_encoder_nan_is_an_error(tmp_path):
    with pytest.raises(LlmrecError, match="NaN"):
        compute_feature(
            tmp_path, "x", 3, 2, lambda idx: (np.full((len(idx), 2), np.nan), np.zeros(len(idx), bool)), SPEC
        )


def test_template_rendering():
    row = {
        "item_id": "1",
        "title": "Toy Story",
        "brand": "",
        "category": "Animation",
        "description": "",
        "extra": '{"year": "1995", "feature": ["a", "b"]}',
    }
    fields = item_fields(row)
    t = "Title: {title} Brand: {brand} Category: {category} Description: {description}"
    assert render_template(t, fields) == "Title: Toy Story Category: Animation"
    assert (
        render_template(t, fields, drop_empty=False)
        == "Title: Toy Story Brand: Category: Animation Description:"
    )
    assert render_template("{title} ({year}) Feature: {feature}", fields) == "Toy Story (1995) Feature: a, b"
    with pytest.raises(LlmrecError, match="unknown field"):
        check_template("Title: {titel}", set(fields))
