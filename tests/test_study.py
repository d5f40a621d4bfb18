"""`wavq sweep` / `wavq report` end to end on a small random Whisper and two samples/ utterances: resume after the
sweep is killed mid-cell, a failing cell recorded, every figure drawn, the same rows with --jobs 2 and on a
local Ray instance, and the CTranslate2 baseline (when installed).

The random model is built once per session and every sweep of the cells shares one conversion cache: the
conversions (each a fresh interpreter importing torch) are most of this file's time."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

# found, not imported: the sweeps import them in their own processes, and the fast tests here need neither
for _module in ("torch", "transformers", "matplotlib", "jiwer"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"could not import {_module!r}", allow_module_level=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from wavq.study import Store, load_grid  # noqa: E402
from wavq.study.cell import CONVERSION_LOG  # noqa: E402
from wavq.study.child import COMPUTE_FIELDS, compute_per_audio_second  # noqa: E402
from wavq.study.report import allocation_grid, pareto, write_report  # noqa: E402
from wavq.study.store import COLUMNS  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
# what must agree between two runs of the same cells (timings, dates and process details may differ)
DETERMINISTIC = ("cell", "status", "label", "model", "kind", "recipe", "bits_per_weight", "file_bytes")
KILL_TIMEOUT_S = 120

GRID = """
[sweep]
models = ["tiny"]
validation = "samples"
budgets = [8.5, 4.5]
max_new_tokens = 6

[sets]
samples = {{ path = "{samples}", limit = 2 }}

[[recipes]]
label = "f32"
method = "none"

[[recipes]]
label = "RTN {{bits}} g{{group_size}}"
method = "rtn"
bits = [4]
group_size = [32]

[[recipes]]
label = "mixed {{target_bpw}}"
method = "rtn"
target_bpw = 5.0
group_size = 32

[[recipes]]
label = "GPTQ 4 without calibration audio"  # fails: GPTQ needs calibration audio and the grid gives none
method = "gptq"
bits = 4

[[baselines]]
kind = "torch-int8"
"""

CT2_GRID = """
[sweep]
models = ["tiny"]
max_new_tokens = 6

[sets]
samples = {{ path = "{samples}", limit = 2 }}

[[baselines]]
kind = "ctranslate2-int8"
"""


def _compute_reported() -> bool:
    """Whether the evaluation result carries compute accounting (then every wavq row has the columns)."""
    from wavq.evaluation import EvalResult

    fields = {f.name for f in dataclasses.fields(EvalResult)}
    return all(k in fields or hasattr(EvalResult, k) for k in COMPUTE_FIELDS)


def _tiny_whisper(path: str) -> None:
    import torch
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    try:
        tok = AutoTokenizer.from_pretrained("openai/whisper-tiny.en")
        gen = GenerationConfig.from_pretrained("openai/whisper-tiny.en")
    except OSError:
        pytest.skip("openai/whisper-tiny.en is not in the Hugging Face cache (../shared/models/install-whisper.sh)")
    config = WhisperConfig(
        vocab_size=len(tok),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        decoder_start_token_id=gen.decoder_start_token_id,
        eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    gen.save_pretrained(path)


@pytest.fixture(scope="session")
def study_root(tmp_path_factory):
    """The random model and the grids, built once per session."""
    root = tmp_path_factory.mktemp("study")
    _tiny_whisper(str(root / "tiny"))
    (root / "grid.toml").write_text(GRID.format(samples=SAMPLES))
    (root / "ct2.toml").write_text(CT2_GRID.format(samples=SAMPLES))
    return root


@pytest.fixture(scope="session")
def grid(study_root):
    return str(study_root / "grid.toml")


@pytest.fixture(scope="session")
def cache(study_root):
    """The conversion cache every sweep of GRID's cells shares (filled by the killed and resumed sweep)."""
    return str(study_root / "cache")


def _wavq(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wavq.runtime.cli", *args], capture_output=True, text=True, timeout=600, **kw
    )


def _rows(results: str) -> dict[str, dict]:
    return {r["cell"]: r for r in Store(results).rows()}


def _same(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for cell in a:
        assert {k: a[cell].get(k) for k in DETERMINISTIC} == {k: b[cell].get(k) for k in DETERMINISTIC}
        assert a[cell].get("sets") is not None or a[cell]["status"] == "error"
        for name, s in (a[cell].get("sets") or {}).items():
            t = b[cell]["sets"][name]
            assert (s["wer"], s["n_words"], s["n_utterances"]) == (t["wer"], t["n_words"], t["n_utterances"])


@pytest.fixture(scope="session")
def swept(grid, cache, tmp_path_factory):
    """A sweep killed (SIGKILL, with its children) in its second cell, then resumed."""
    out = str(tmp_path_factory.mktemp("results"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "wavq.runtime.cli", "sweep", grid, "-o", out, "--cache", cache],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not (os.path.exists(os.path.join(out, "results.jsonl")) and len(Store(out).rows()) >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep stored no row"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the conversion it has started
    proc.wait()
    before = _rows(out)
    with open(os.path.join(cache, CONVERSION_LOG)) as f:
        converted_before = f.read().splitlines()
    r = _wavq("sweep", grid, "-o", out, "--cache", cache)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, before, converted_before


def test_resumes_without_redoing_finished_cells(swept, grid, cache):
    out, before, converted_before = swept
    after = _rows(out)
    cells = load_grid(grid).cells
    assert set(after) == {c.id for c in cells}
    for cell, row in before.items():  # rows stored before the kill are kept as they were, not measured again
        assert after[cell] == row
    with open(os.path.join(cache, CONVERSION_LOG)) as f:
        converted = [line.split()[1] for line in f.read().splitlines()]
    assert len(converted) == len(set(converted))  # no conversion ran twice
    finished = {r["conversion_key"] for r in before.values() if r.get("conversion_key")}
    assert finished <= {line.split()[1] for line in converted_before}
    ok = [r for r in after.values() if r["status"] == "ok"]
    assert len(ok) == 4
    f32 = next(r for r in ok if r["label"] == "f32")
    rtn4 = next(r for r in ok if r["label"] == "RTN 4 g32")
    mixed = next(r for r in ok if r["label"] == "mixed 5.0")
    # the random model's small width makes the decomposed embedding's float columns a large share of its bits
    assert f32["bits_per_weight"] == 32.0 and 4 < rtn4["bits_per_weight"] < 8 and mixed["bits_per_weight"] <= 5.0
    assert len(set(mixed["tensor_bits"].values())) > 1
    int8 = next(r for r in ok if r["kind"] == "torch-int8")
    assert int8["bits_per_weight"] == 8.0 and int8["sets"]["samples"]["n_words"] == f32["sets"]["samples"]["n_words"]
    assert rtn4["file_bytes"] < f32["file_bytes"]
    for r in ok:
        s = r["sets"]["samples"]
        assert s["n_utterances"] == 2 and s["n_words"] > 0 and s["wer"] >= 0
        assert r["peak_rss_mib"] > 0
        assert r["kind"] != "wavq" or (r["convert_seconds"] > 0 and r["convert_peak_rss_mib"] > 0)
        if r["kind"] == "wavq":  # the columns hold what the evaluation reports, and stay null while it reports none
            for k in COMPUTE_FIELDS:
                assert (r[k] is not None and r[k] > 0) if _compute_reported() else r[k] is None
    lines = open(os.path.join(out, "results.csv")).read().splitlines()
    assert len(lines) == 1 + len(cells) and "wer_samples" in lines[0]


def test_failing_cell_is_recorded(swept):
    out, _, _ = swept
    failed = [r for r in _rows(out).values() if r["status"] == "error"]
    assert [r["label"] for r in failed] == ["GPTQ 4 without calibration audio"]
    assert "calibration audio" in failed[0]["error"]
    r = _wavq("sweep", out + "/../grid-none.toml", "-o", out)
    assert r.returncode != 0 and "Traceback" not in r.stderr


def test_report_draws_every_figure(swept, tmp_path):
    out, _, _ = swept
    r = _wavq("report", out, "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    from matplotlib.image import imread

    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    kinds = {p.split("_")[0] + "_" + p.split("_")[1] if p.startswith("wer") else p.split("_")[0] for p in pngs}
    drawn_bitops = {"wer_bitops"} if _compute_reported() else set()
    assert kinds == {"wer_bpw", "wer_size", "costs", "bits"} | drawn_bitops, pngs
    for p in pngs:
        assert os.path.getsize(tmp_path / p) > 5_000
        pixels = imread(tmp_path / p)
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # not a blank canvas
    md = (tmp_path / "report.md").read_text()
    assert "Recipes chosen on samples" in md and "≤ 8.5 bits/weight: **" in md
    assert "GPTQ 4 without calibration audio" in md
    assert ("bit-operations per second of audio on samples: no row" in md) != _compute_reported()


def test_same_rows_with_two_jobs(swept, grid, cache, tmp_path):
    out, _, _ = swept
    r = _wavq("sweep", grid, "-o", str(tmp_path), "--jobs", "2", "--cache", cache)
    assert r.returncode == 0, r.stderr[-2000:]
    _same(_rows(out), _rows(str(tmp_path)))


@pytest.mark.slow
def test_same_rows_on_local_ray(swept, grid, cache, tmp_path):
    pytest.importorskip("ray", reason="Ray is the sweep extra: pip install 'wavq[sweep]'")
    out, _, _ = swept
    r = _wavq(
        "sweep",
        grid,
        "-o",
        str(tmp_path),
        "--ray",
        "local",
        "--task-memory",
        "512",
        "--cache",
        cache,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    _same(_rows(out), _rows(str(tmp_path)))


def test_ctranslate2_baseline(swept, study_root, tmp_path):
    """CTranslate2 int8 measured like the cells: converted (timed, cached) in its own stage, scored by the same
    evaluation on the same utterances."""
    pytest.importorskip(
        "ctranslate2", reason="the ctranslate2-int8 baseline needs the extra: pip install 'wavq[ctranslate2]'"
    )
    out = str(tmp_path)
    r = _wavq("sweep", str(study_root / "ct2.toml"), "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(out).values()
    assert row["status"] == "ok", row["error"]
    assert row["kind"] == "ctranslate2-int8" and row["bits_per_weight"] == 8.0
    f32 = next(r for r in _rows(swept[0]).values() if r["label"] == "f32")
    assert 0 < row["file_bytes"] < f32["file_bytes"]  # int8 weights against the float file of the same model
    assert row["convert_seconds"] > 0 and row["convert_peak_rss_mib"] > 0 and row["peak_rss_mib"] > 0
    s, t = row["sets"]["samples"], f32["sets"]["samples"]
    assert (s["n_utterances"], s["n_words"]) == (t["n_utterances"], t["n_words"]) and s["wer"] >= 0 and row["rtf"] > 0
    model_dir = os.path.join(out, "cache", row["conversion_key"] + ".ct2")
    assert os.path.exists(os.path.join(model_dir, "model.bin")) and not os.path.exists(model_dir + ".partial")


def test_compute_columns_come_from_the_evaluation_result():
    """The sweep's compute columns are the evaluation result's attributes of the same names, weighted by audio."""
    a = SimpleNamespace(audio_seconds=1.0, macs_per_audio_second=10.0, bitops_per_audio_second=100.0)
    b = SimpleNamespace(audio_seconds=3.0, macs_per_audio_second=20.0, bitops_per_audio_second=300.0)
    assert compute_per_audio_second([a, b]) == {"macs_per_audio_second": 17.5, "bitops_per_audio_second": 250.0}
    assert compute_per_audio_second([SimpleNamespace(audio_seconds=1.0)]) == {}
    assert set(COMPUTE_FIELDS) <= set(COLUMNS)  # the columns results.csv flattens


def test_report_draws_wer_against_bitops(tmp_path):
    """Rows with compute accounting (a synthetic results.jsonl) get the WER-against-bit-operations figure."""
    store = Store(tmp_path / "results")
    for i, (label, bits, wer) in enumerate([("f32", 32.0, 0.05), ("RTN 8", 8.5, 0.051), ("RTN 4", 4.5, 0.07)]):
        macs = 2.0e9
        store.append(
            dict(
                cell=f"c{i}",
                status="ok",
                label=label,
                model="m",
                kind="wavq",
                recipe=None if label == "f32" else {"method": "rtn", "bits": int(bits)},
                bits_per_weight=bits,
                file_bytes=int(bits * 1e6),
                sets={"dev": {"wer": wer, "n_words": 100, "n_utterances": 3}},
                macs_per_audio_second=macs,
                bitops_per_audio_second=macs * bits * 32,
                provenance={"source": "sweep"},
            )
        )
    assert "bitops_per_audio_second" in open(tmp_path / "results" / "results.csv").readline()
    out = tmp_path / "report"
    files = write_report(store.rows(), str(out), "dev", (8.5,))
    assert "wer_bitops_m_dev.png" in files
    assert os.path.getsize(out / "wer_bitops_m_dev.png") > 5_000
    md = (out / "report.md").read_text()
    assert "![WER against bit-operations per second of audio, m, dev](wer_bitops_m_dev.png)" in md
    assert "no row has it yet" not in md and "≤ 8.5 bits/weight: **RTN 8**" in md


def test_pareto_front_and_allocation_grid():
    pts = [dict(bits_per_weight=b, wer_pct=w, k=i) for i, (b, w) in enumerate([(4, 10), (3, 20), (5, 12), (8, 5)])]
    assert [p["k"] for p in pareto(pts, "bits_per_weight")] == [1, 0, 3]
    layers, kinds, cells = allocation_grid(
        {"model.encoder.layers.1.fc1.weight": 3, "model.encoder.layers.0.fc1.weight": 4, "proj.weight": 8}
    )
    assert layers == ["encoder 00", "encoder 01", "other"] and kinds == ["fc1", "proj"]
    assert cells == [[4, None], [3, None], [None, 8]]


def test_committed_example_rows_are_the_benchmark_tables():
    """benchmarks/study/results holds the quant tables' rows, imported (not retyped), with their provenance."""
    root = os.path.join(os.path.dirname(SAMPLES), "benchmarks")
    rows = Store(os.path.join(root, "study", "results")).rows()
    for model in ("tiny.en", "base"):
        with open(os.path.join(root, "results", f"quant_table_whisper-{model}.json")) as f:
            table = {r["label"]: r for r in json.load(f)}
        mine = [r for r in rows if r["model"] == f"openai/whisper-{model}"]
        imported = [r for r in mine if r["provenance"]["source"] == "imported"]
        assert {r["label"] for r in imported} == set(table)
        for r in mine:  # the rest: validation rows measured by `wavq sweep` on the validation grid's set only
            assert r in imported or (r["provenance"]["source"] == "sweep" and set(r["sets"]) == {"train-heldout"})
            assert r["label"] in table
        for r in imported:
            t = table[r["label"]]
            assert r["provenance"]["source"] == "imported" and r["provenance"]["command"].startswith("`python")
            assert r["sets"]["test-clean"]["wer"] * 100 == pytest.approx(t["wer_clean"], rel=1e-12)
            assert r["sets"]["test-other"]["n_words"] == t["words_other"] and r["bits_per_weight"] == t["bpw"]
