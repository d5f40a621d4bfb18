"""`wavq info` / `wavq verify` on good, corrupt and truncated files: one-line errors, exit status 1."""

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from wavq.formats import WqFile, quantize, write_wq
from wavq.runtime.cli import main


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 96)).astype(np.float32)
    conv = rng.normal(size=(16, 8, 3)).astype(np.float32)
    tensors = {
        "enc.fc.weight": quantize(w, 4, 32, True)[0],
        "enc.conv.weight": quantize(conv, 3, 0, False)[0],
        "enc.fc.bias": np.zeros(64, np.float32),
        "enc.norm.weight": np.ones(96, np.float16),
    }
    meta = {
        "architecture": "whisper",
        "dims": {"d_model": 96},
        "quantization": {"method": "rtn", "bits": 4, "tensor_bits": {"enc.conv.weight": 3, "enc.fc.weight": 4}},
        "provenance": {"source": "unit-test"},
    }
    path = tmp_path / "m.wq"
    write_wq(path, meta, tensors)
    return path


def test_info_reports_bits_and_breakdown(model_file):
    r = CliRunner().invoke(main, ["info", str(model_file)])
    assert r.exit_code == 0, r.output
    # (64*96*4 + 64*3*16) + (16*24*3 + 16*(3+16)) bits over 64*96 + 16*24 weights
    expected = (64 * 96 * 4 + 64 * 3 * 16 + 16 * 24 * 3 + 16 * 19) / (64 * 96 + 16 * 24)
    assert f"{expected:.3f}" in r.output
    assert "Q4 sym g32" in r.output and "Q3 asym per-channel" in r.output
    assert "convolution" in r.output and "3 bits  enc.conv.weight" in r.output
    assert "source=unit-test" in r.output


def test_info_lists_group_sizes_chosen_by_mixed_precision(tmp_path):
    """With a per-tensor group size in the metadata (--mixed-groups), `wavq info` shows it with the bits, in numeric
    order (group 64 before 128, per channel last)."""
    rng = np.random.default_rng(1)
    shapes = {"a.weight": (8, 256), "b.weight": (8, 256), "c.weight": (8, 256), "d.weight": (8, 256)}
    groups = {"a.weight": 128, "b.weight": 64, "c.weight": 0, "d.weight": 64}
    tensors = {n: quantize(rng.normal(size=s).astype(np.float32), 3, groups[n], False)[0] for n, s in shapes.items()}
    meta = {
        "architecture": "whisper",
        "quantization": {
            "method": "rtn",
            "bits": None,
            "tensor_bits": dict.fromkeys(shapes, 3),
            "tensor_group_size": groups,
        },
    }
    write_wq(tmp_path / "g.wq", meta, tensors)
    r = CliRunner().invoke(main, ["info", str(tmp_path / "g.wq")])
    assert r.exit_code == 0, r.output
    assert (
        "bit allocation: 2 tensors at 3 bits, group 64, 1 tensors at 3 bits, group 128, "
        "1 tensors at 3 bits, per channel"
    ) in r.output
    assert "  3 bits, group 64     b.weight\n" in r.output and "  3 bits, per channel  c.weight\n" in r.output


def test_info_reports_decomposed_tensors(tmp_path):
    """A decomposed tensor is labelled with its offset and float columns, and both count in bits per weight."""
    import dataclasses

    from wavq.formats.constants import Encoding
    from wavq.formats.stats import payload_bits

    rng = np.random.default_rng(1)
    emb, _ = quantize(rng.normal(size=(100, 64)).astype(np.float32), 4, 32, False)
    emb = dataclasses.replace(
        emb,
        offset=rng.normal(size=64).astype(np.float32),
        outlier_columns=np.array([5, 17], np.int64),
        outliers=rng.normal(size=(100, 2)).astype(np.float16),
    )
    fc, _ = quantize(rng.normal(size=(8, 64)).astype(np.float32), 3, 0, True)
    fc0 = dataclasses.replace(
        fc,
        offset=np.zeros(64, np.float32),
        outlier_columns=np.zeros(0, np.int64),
        outliers=np.zeros((8, 0), np.float16),
    )
    path = tmp_path / "d.wq"
    write_wq(path, {"architecture": "whisper"}, {"emb": emb, "fc": fc0, "plain": fc})
    r = CliRunner().invoke(main, ["info", "--tensors", str(path)])
    assert r.exit_code == 0, r.output
    assert "Q4 asym g32 +offset +2 float cols" in r.output
    assert "Q3 sym per-channel +offset" in r.output and "Q3 sym per-channel +offset +" not in r.output
    bits = (
        payload_bits(Encoding.QASYM, (100, 64), 4, 32, 2)
        + payload_bits(Encoding.QSYM, (8, 64), 3, 64, 0)
        + payload_bits(Encoding.QSYM, (8, 64), 3, 64)
    )
    assert bits == (100 * 64 * 4 + 100 * 2 * 20 + 32 * 64 + 16 * 100 * 2) + (8 * 64 * 3 + 8 * 16 + 32 * 64) + (
        8 * 64 * 3 + 8 * 16
    )
    assert f"{bits / (116 * 64):.3f}" in r.output


def test_info_json(model_file):
    import json

    r = CliRunner().invoke(main, ["info", "--json", "--tensors", str(model_file)])
    out = json.loads(r.output)
    assert out["parameters"] == 64 * 96 + 16 * 24 + 64 + 96
    assert out["quantized_parameters"] == 64 * 96 + 16 * 24
    assert {t["name"] for t in out["tensors"]} == {"enc.fc.weight", "enc.conv.weight", "enc.fc.bias", "enc.norm.weight"}


def test_verify_names_corrupt_tensor(model_file, tmp_path):
    f = WqFile(model_file)
    off = f.data_start + f.tensors["enc.conv.weight"].offset + 3
    f.close()
    data = bytearray(model_file.read_bytes())
    data[off] ^= 0x10
    bad = tmp_path / "bad.wq"
    bad.write_bytes(bytes(data))
    ok = CliRunner().invoke(main, ["verify", str(model_file)])
    assert ok.exit_code == 0 and "ok" in ok.output
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 1
    assert "enc.conv.weight" in r.output and "enc.fc.weight" not in r.output


def test_truncated_file_one_line_error_exit_1(model_file, tmp_path):
    cut = tmp_path / "cut.wq"
    cut.write_bytes(model_file.read_bytes()[:-100])
    # a real process: the user sees one line on stderr, no traceback, exit status 1
    p = subprocess.run([sys.executable, "-m", "wavq.runtime.cli", "info", str(cut)], capture_output=True, text=True)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cut.wq" in lines[0] and "Traceback" not in p.stderr
    assert p.stdout == ""


def test_not_a_wq_file(tmp_path):
    junk = tmp_path / "junk.wq"
    junk.write_bytes(b"hello world, definitely not a model")
    r = CliRunner().invoke(main, ["info", str(junk)])
    assert r.exit_code == 1 and "bad magic" in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "missing.wq")])
    assert r.exit_code == 1 and "missing.wq" in r.output


def test_score_normalises_per_architecture_and_skips_empty_references():
    pytest.importorskip("jiwer")
    from wavq.evaluation import score

    refs = ["HELLO, WORLD.", "", "THE CAT SAT"]
    hyps = ["hello world", "words for an empty reference", "the cat"]
    # CTC (LibriSpeech convention): case and punctuation do not count; 1 deletion in 5 reference words
    assert score(refs, hyps, "wav2vec2") == (pytest.approx(0.2), 5)
    pytest.importorskip("whisper_normalizer")
    # Whisper's English normaliser: both sides become "mister smith paid $5"
    assert score(["Mr. Smith paid $5."], ["mister smith paid five dollars"], "whisper") == (0.0, 4)
    wer, words = score([""], ["anything"], "wav2vec2")
    assert np.isnan(wer) and words == 0
