"""Calibrated quantization of a tiny random Whisper: the block runner, AWQ folding, GPTQ vs RTN, mixed precision,
determinism, and the output contract of quantize_tensors."""

from __future__ import annotations

import copy
import dataclasses
import importlib

import msgpack
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from quant_helpers import apply_to_model, run_awq_with_random_scales, same_bytes  # noqa: E402

from wavq.converter.calib_whisper import WhisperCalibration, sentence_case  # noqa: E402
from wavq.converter.calibrate import CalibItem  # noqa: E402
from wavq.converter.quant import pipeline  # noqa: E402
from wavq.converter.quant.mixed import bits_per_weight  # noqa: E402
from wavq.converter.quant.recipe import Recipe  # noqa: E402
from wavq.converter.whisper import WhisperExporter  # noqa: E402
from wavq.formats import QuantizedTensor, dequantize  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE  # noqa: E402

SOT, EOT, VOCAB = 90, 91, 96
SR = SAMPLE_RATE


class CharTokenizer:
    """Stands in for the Whisper tokenizer in teacher forcing: one token per character."""

    unk_token_id = None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 80 for c in text]

    def convert_tokens_to_ids(self, token):
        return None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=16,
        encoder_layers=2,
        decoder_layers=2,
        d_model=64,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=50,
        max_target_positions=24,
        decoder_start_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        bos_token_id=EOT,
    )
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # LayerNorms start at 1 / 0: make them (and the folding into them) matter
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    fe = transformers.WhisperFeatureExtractor(feature_size=16, chunk_length=1)  # 1 s windows = 100 frames
    exporter = WhisperExporter(model, "tiny", fe, None, None)
    rng = np.random.default_rng(0)
    t = np.arange(12000) / SR
    items = [
        CalibItem(
            id=f"u{i}",
            audio=(0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(
                np.float32
            ),
        )
        for i in range(6)
    ]
    return model, exporter, list(exporter.tensors()), items


def _calibration(exporter, tensors, items, split_attention=True):
    return exporter.calibration(items, tensors, split_attention)


def _teacher_forced_logits(model, cal):
    out = []
    with torch.no_grad():
        for b in cal.batches:
            for j, toks in enumerate(b.tokens):
                out.append(model(input_features=b.x[j : j + 1], decoder_input_ids=torch.tensor([toks])).logits[0])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("split_attention", [True, False])
def test_block_runner_reproduces_transformers(tiny, split_attention):
    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items, split_attention)
    batches = cal.batches
    for block in cal.blocks[:-1]:
        batches = [block.forward(b) for b in batches]
    with torch.no_grad():
        mine = [cal.blocks[-1].forward(b) for b in batches]
    ref = _teacher_forced_logits(model, cal)
    k = 0
    for m, b in zip(mine, cal.batches):
        for j, toks in enumerate(b.tokens):
            assert (m[j, : len(toks)] - ref[k]).abs().max() < 1e-4
            k += 1


@pytest.mark.slow
def test_awq_folding_leaves_the_float_model_unchanged(tiny, monkeypatch):
    """Random scales folded everywhere AWQ can fold (LayerNorms, v_proj rows) or attached as input scales:
    the torch model's outputs do not move."""
    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items, split_attention=False)  # as AWQ runs it
    before = _teacher_forced_logits(model, cal)
    q = run_awq_with_random_scales(cal, monkeypatch, seed=1)
    assert any("layer_norm" in n for n in q.modified) and any("v_proj" in n for n in q.modified)
    assert any(n.endswith("fc2.input_scale") for n in q.input_scales)
    assert any("encoder_attn.k_proj" in n for n in q.input_scales)
    after = _teacher_forced_logits(cal.model, cal)
    for a, b in zip(before, after):
        assert (a - b).abs().max() < 1e-4 * max(1.0, float(a.abs().max()))


def _quantized_logits_error(model, cal, out) -> float:
    qmodel = copy.deepcopy(model)
    apply_to_model(qmodel, out)
    ref, got = _teacher_forced_logits(model, cal), _teacher_forced_logits(qmodel, cal)
    return float(sum(((a - b) ** 2).mean() for a, b in zip(ref, got)))


@pytest.mark.slow
def test_gptq_beats_rtn_and_awq_output_is_consistent(tiny):
    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items)
    errs = {}
    for method in ("rtn", "gptq", "awq+clip+gptq"):
        out, info = pipeline.quantize_tensors(exporter, tensors, Recipe(method=method, bits=3, group_size=32), items)
        errs[method] = _quantized_logits_error(model, cal, out)
    assert errs["gptq"] < errs["rtn"]
    assert errs["awq+clip+gptq"] < errs["rtn"]


@pytest.mark.slow
def test_output_contract(tiny):
    model, exporter, tensors, items = tiny
    before = {t.name: t.array.copy() for t in tensors}
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="awq+gptq", bits=4, group_size=32, act_order=True), items
    )
    names = [t.name for t in tensors]
    assert [n for n in out if not n.endswith(".input_scale")] == names
    for n in out:
        if n.endswith(".input_scale"):
            prev = list(out)[list(out).index(n) - 1]
            assert prev == n.replace(".input_scale", ".weight")
            assert out[n].dtype == np.float32 and out[n].shape == (out[prev].shape[1],)
            assert np.array_equal(out[n], out[n].astype(np.float16).astype(np.float32))  # survives f16 files
    for t in tensors:
        assert isinstance(out[t.name], QuantizedTensor) == t.quantizable
    folded = [t.name for t in tensors if not t.quantizable and not np.array_equal(out[t.name], t.array)]
    assert folded and all("layer_norm" in n or "v_proj.bias" in n for n in folded)  # AWQ's folds, nothing else
    assert all(
        out[t.name].shape == t.array.shape and out[t.name].dtype == np.float32 for t in tensors if t.name in folded
    )
    assert info["method"] == "awq+gptq" and info["calibration"]["samples"] == len(items)
    assert info["calibration"]["decoder_inputs"] == {"transcripts": 0, "greedy": len(items)}
    assert set(info["tensor_bits"]) == {t.name for t in tensors if t.quantizable}
    assert "model.decoder.embed_tokens.weight" in info["relative_output_error"]  # quantized as the output head
    assert msgpack.unpackb(msgpack.packb(info)) == info
    for t in tensors:  # the exporter's arrays are never modified in place (AWQ's folds return new arrays)
        assert t.array.flags.c_contiguous and np.array_equal(t.array, before[t.name]), t.name


@pytest.mark.slow
def test_same_inputs_give_identical_bytes(tiny):
    _, exporter, tensors, items = tiny
    recipe = Recipe(method="awq+clip+gptq", bits=3, group_size=32, act_order=True)
    a, ia = pipeline.quantize_tensors(exporter, tensors, recipe, items)
    b, ib = pipeline.quantize_tensors(exporter, tensors, recipe, items)
    assert same_bytes(a, b) and ia == ib


@pytest.mark.slow
def test_mixed_precision_with_calibration_meets_target(tiny, tmp_path):
    """The allocation meets the target as `wavq info` counts it on the written file (decomposed embedding's
    offset row and float columns included)."""
    from wavq.formats import WqFile, write_wq
    from wavq.runtime.info import summarize

    _, exporter, tensors, items = tiny
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="gptq", bits=None, target_bpw=3.6, group_size=32), items
    )
    bpw = bits_per_weight(v for v in out.values() if isinstance(v, QuantizedTensor))
    assert 3.45 < bpw <= 3.6 and info["bits_per_weight"] == pytest.approx(bpw, rel=1e-5)
    assert len(set(info["tensor_bits"].values())) > 1
    assert out["model.decoder.embed_tokens.weight"].decomposed
    write_wq(tmp_path / "m.wq", {"architecture": "test"}, out)
    with WqFile(tmp_path / "m.wq") as f:
        assert 3.45 < summarize(f).quantized_bpw <= 3.6


@pytest.mark.slow
def test_mixed_groups_reach_gptq_and_tune(tiny, tmp_path):
    """With mixed group sizes the calibrated path (GPTQ, then tuning) quantizes each tensor at its allocated bits
    and group size, and `wavq info` shows the allocation."""
    from click.testing import CliRunner

    from wavq.formats import write_wq
    from wavq.formats.codecs import resolve_group_size, view_2d_shape
    from wavq.runtime.cli import main as wavq_main

    _, exporter, tensors, items = tiny
    recipe = Recipe(
        method="gptq+tune", bits=None, target_bpw=3.5, group_size=64, mixed_group_sizes=(16, 32), tune_epochs=3
    )
    out, info = pipeline.quantize_tensors(exporter, tensors, recipe, items)
    qts = {n: v for n, v in out.items() if isinstance(v, QuantizedTensor)}
    groups = info["tensor_group_size"]
    assert set(groups) == set(qts) and {16, 32} & set(groups.values())
    for name, qt in qts.items():
        assert (qt.bits, qt.group_size) == (
            info["tensor_bits"][name],
            resolve_group_size(view_2d_shape(qt.shape)[1], groups[name]),
        )
    assert 3.3 < bits_per_weight(qts.values()) <= 3.5
    assert len(info["tune"]["kl_per_epoch"]) == 3  # the recipe's epochs, not the default 2
    assert info["tune"]["kl_per_epoch"][-1] < info["tune"]["kl_per_epoch"][0]
    write_wq(tmp_path / "m.wq", {"architecture": "whisper", "quantization": info}, out)
    r = CliRunner().invoke(wavq_main, ["info", str(tmp_path / "m.wq")])
    assert r.exit_code == 0, r.output
    name = next(n for n, g in groups.items() if g != 64)
    assert f"{info['tensor_bits'][name]} bits, group {groups[name]}  {name}" in r.output


@pytest.mark.slow
def test_teacher_forcing_uses_transcripts(tiny):
    model, exporter, tensors, items = tiny
    texted = [CalibItem(it.id, it.audio, "HELLO THERE") if i % 2 == 0 else it for i, it in enumerate(items)]
    cal = WhisperCalibration(
        copy.deepcopy(model), texted, tokenizer=CharTokenizer(), feature_extractor=exporter.feature_extractor
    )
    batches = cal.batches()
    assert cal.info["decoder_inputs"] == {"transcripts": 3, "greedy": 3}
    tokens = [t for b in batches for t in b.tokens]
    assert tokens[0] == [SOT] + CharTokenizer().encode(" Hello there") + [EOT]
    assert all(t[0] == SOT and t[-1] == EOT for t in tokens)
    assert sentence_case("MISTER QUILTER  IS") == "Mister quilter is" and sentence_case("Already ok") == "Already ok"


@pytest.mark.slow
def test_decomposed_embedding_cuts_logits_error_and_reads_back_in_the_runtime(tiny, tmp_path):
    """Give the random model's tied embedding Whisper's real structure (a large shared mean row, one outlier
    column); the decomposed table then quantizes with a smaller logits error, and the runtime, reading the
    written file, reconstructs exactly the weights the converter calibrated with."""
    from wavq.formats import WqFile, write_wq
    from wavq.runtime.info import summarize
    from wavq.runtime.weights import Weights

    model, exporter, tensors, items = tiny
    emb = "model.decoder.embed_tokens.weight"
    rng = np.random.default_rng(5)
    planted = {}
    for t in tensors:
        if t.name == emb:
            w = t.array + rng.standard_normal(t.array.shape[1]).astype(np.float32) * 0.2
            w[:, 7] += 1.5 + rng.standard_normal(t.array.shape[0]).astype(np.float32) * 0.5
            planted[t.name] = w
    tensors2 = [dataclasses.replace(t, array=planted.get(t.name, t.array)) for t in tensors]
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.model.decoder.embed_tokens.weight.copy_(torch.from_numpy(planted[emb]))
    exporter2 = copy.copy(exporter)
    exporter2.model = ref
    cal = _calibration(exporter2, tensors2, items)
    errs, outs = {}, {}
    for k in (0, 4):
        out, info = pipeline.quantize_tensors(
            exporter2, tensors2, Recipe(method="gptq", bits=3, group_size=32, outlier_columns=k), items
        )
        errs[k], outs[k] = _quantized_logits_error(ref, cal, out), (out, info)
    assert errs[4] < 0.7 * errs[0], errs
    out, info = outs[4]
    qt = out[emb]
    assert qt.decomposed and 7 in qt.outlier_columns and len(qt.outlier_columns) == 4
    assert not outs[0][0][emb].decomposed
    assert all(not v.decomposed for n, v in out.items() if isinstance(v, QuantizedTensor) and n != emb)

    path = tmp_path / "m.wq"
    write_wq(path, {"architecture": "test"}, out)
    with WqFile(path) as f:
        assert summarize(f).quantized_bpw == pytest.approx(info["bits_per_weight"], rel=1e-5)
    w = Weights.open(path)
    full = dequantize(qt)
    idx = np.array([[0, 5, 5], [VOCAB - 1, 2, 7]])
    np.testing.assert_array_equal(w.take(emb, idx), full[idx])
    np.testing.assert_array_equal(w.rows(emb, 3, 11), full[3:11])
    np.testing.assert_array_equal(w[emb], full)
    w.close()


@pytest.mark.slow
def test_tune_moves_only_scales_and_floats_and_lowers_the_kl(tiny):
    """Distillation after GPTQ: the codes and zero points stay, the KL to the float model on the calibration
    utterances falls, and the tuned floats are what the file stores."""
    from wavq.converter.quant.tune import partition_kl, teacher_targets

    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items)
    module = importlib.import_module("wavq.converter.calib_whisper")
    teacher = teacher_targets(model, cal.batches, module.outputs)

    def kl(out) -> float:
        qmodel = copy.deepcopy(model)
        apply_to_model(qmodel, out)
        total = n = 0.0
        with torch.no_grad():
            k = 0
            for b in cal.batches:
                for logits in module.outputs(qmodel, b):
                    total += float(partition_kl(logits, teacher.ids[k], teacher.logp[k], teacher.log_rest[k]))
                    n += logits.shape[0]
                    k += 1
        return total / n

    base, _ = pipeline.quantize_tensors(exporter, tensors, Recipe(method="gptq", bits=3, group_size=32), items)
    tuned, info = pipeline.quantize_tensors(exporter, tensors, Recipe(method="gptq+tune", bits=3, group_size=32), items)
    assert info["method"] == "gptq+tune" and len(info["tune"]["kl_per_epoch"]) == 2
    assert kl(tuned) < 0.9 * kl(base)
    changed_scales = 0
    for t in tensors:
        a, b = base[t.name], tuned[t.name]
        if isinstance(a, QuantizedTensor):
            assert np.array_equal(a.codes, b.codes) and np.array_equal(a.zeros, b.zeros)
            changed_scales += not np.array_equal(a.scales, b.scales)
        elif t.kind in ("norm", "bias"):
            assert b.dtype == np.float32 and b.shape == a.shape
        else:
            assert np.array_equal(a, b)  # positions are not tuned
    assert changed_scales == sum(t.quantizable for t in tensors)


@pytest.mark.slow
def test_rotation_is_chosen_per_tensor_tuned_and_read_back_by_the_runtime(tiny, tmp_path):
    """--rotate: every weight is quantized plain and rotated, and keeps the version with the smaller output error
    on its calibration inputs; tuning keeps the rotated codes and fits through the rotation; the file is layout
    revision 3 and the runtime's weights are exactly the converter's; `wavq info` counts the rotated tensors."""
    from click.testing import CliRunner

    from wavq.formats import WqFile, write_wq
    from wavq.runtime.cli import main as wavq_main
    from wavq.runtime.weights import Weights

    model, exporter, tensors, items = tiny
    emb = "model.decoder.embed_tokens.weight"
    recipe = Recipe(method="gptq", bits=3, group_size=32, act_order=True, rotate=True)
    out, info = pipeline.quantize_tensors(exporter, tensors, recipe, items)
    qts = {n: v for n, v in out.items() if isinstance(v, QuantizedTensor)}
    rotated = set(info["rotated"])
    assert rotated and rotated < set(qts) and emb not in rotated  # the decomposed embedding is never rotated
    assert set(info["rotation_errors"]) == set(qts) - {emb}
    for name, (plain, turned) in info["rotation_errors"].items():
        assert (name in rotated) == (turned < plain)
        assert info["relative_output_error"][name] == min(plain, turned)
        cols = int(np.prod(qts[name].shape[1:]))
        assert qts[name].rotation == (min(cols & -cols, 128) if name in rotated else 0)
    plain_out, plain_info = pipeline.quantize_tensors(
        exporter, tensors, dataclasses.replace(recipe, rotate=False), items
    )
    assert "rotated" not in plain_info and not any(
        v.rotation for v in plain_out.values() if isinstance(v, QuantizedTensor)
    )

    tuned, tinfo = pipeline.quantize_tensors(exporter, tensors, dataclasses.replace(recipe, method="gptq+tune"), items)
    assert set(tinfo["rotated"]) == rotated
    assert tinfo["tune"]["kl_per_epoch"][-1] < tinfo["tune"]["kl_per_epoch"][0]
    for name, qt in qts.items():
        assert tuned[name].rotation == qt.rotation and np.array_equal(tuned[name].codes, qt.codes)

    path = tmp_path / "m.wq"
    write_wq(path, {"architecture": "whisper", "quantization": tinfo}, tuned)
    with WqFile(path) as f:
        assert f.layout_revision == 3
    w = Weights.open(path)
    for name in rotated:
        np.testing.assert_array_equal(w[name], dequantize(tuned[name]))
        np.testing.assert_array_equal(w.rows(name, 1, 5), dequantize(tuned[name])[1:5])
    w.close()
    r = CliRunner().invoke(wavq_main, ["info", str(path)])
    assert r.exit_code == 0, r.output
    assert f"rotated:       {len(rotated)} quantized tensors" in r.output and "rotated/64" in r.output


@pytest.mark.slow
def test_rotated_model_matches_transformers_with_its_weights(tiny):
    """The rotation is undone exactly where the weights are used: transformers' model with the file's dequantized
    weights equals the model the converter calibrated (its working copy), so GPTQ saw what the runtime computes."""
    model, exporter, tensors, items = tiny
    cal = _calibration(exporter, tensors, items)
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="gptq", bits=3, group_size=32, rotate=True), items
    )
    assert info["rotated"]
    qmodel = copy.deepcopy(model)
    apply_to_model(qmodel, out)
    ref = _teacher_forced_logits(model, cal)
    got = _teacher_forced_logits(qmodel, cal)
    # close to the float model (3 bits), and far closer than the rotated codes read without undoing the rotation
    unrotated = {
        n: dataclasses.replace(v, rotation=0) if isinstance(v, QuantizedTensor) and v.rotation else v
        for n, v in out.items()
    }
    wrong = copy.deepcopy(model)
    apply_to_model(wrong, unrotated)
    bad = _teacher_forced_logits(wrong, cal)
    err = sum(float(((a - b) ** 2).mean()) for a, b in zip(ref, got))
    assert err < 0.02 * sum(float(((a - b) ** 2).mean()) for a, b in zip(ref, bad))


@pytest.mark.slow
def test_mixed_precision_with_rotation_meets_target(tiny, tmp_path):
    from wavq.formats import WqFile, write_wq
    from wavq.runtime.info import summarize

    _, exporter, tensors, items = tiny
    out, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="gptq", bits=None, target_bpw=3.6, group_size=32, rotate=True), items
    )
    assert info["rotated"] and len(set(info["tensor_bits"].values())) > 1
    write_wq(tmp_path / "m.wq", {"architecture": "test"}, out)
    with WqFile(tmp_path / "m.wq") as f:
        assert 3.45 < summarize(f).quantized_bpw <= 3.6
        assert summarize(f).quantized_bpw == pytest.approx(info["bits_per_weight"], rel=1e-5)


@pytest.mark.slow
def test_rotation_without_calibration_keeps_the_smaller_weight_error(tiny):
    """Round-to-nearest without audio: a weight is stored rotated exactly when that lowers its weight error
    against the plain round-to-nearest tensor."""
    _, exporter, tensors, _ = tiny
    rotated, info = pipeline.quantize_tensors(
        exporter, tensors, Recipe(method="rtn", bits=3, group_size=32, rotate=True)
    )
    plain, _ = pipeline.quantize_tensors(exporter, tensors, Recipe(method="rtn", bits=3, group_size=32))
    assert info["rotated"] and "rotation_errors" not in info  # no calibration: no output errors to report
    for t in tensors:
        if not t.quantizable:
            continue
        err = {
            k: float(((dequantize(v[t.name]) - t.array).astype(np.float64) ** 2).sum())
            for k, v in (("rotated", rotated), ("plain", plain))
        }
        if t.name in info["rotated"]:
            assert err["rotated"] < err["plain"]
        else:
            assert err["rotated"] == err["plain"] and not rotated[t.name].rotation
