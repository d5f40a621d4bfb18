"""The runtime runs codebook (VQ) weights (SPEC.md 5.6): a tiny random Whisper and Wav2Vec2 with some weights stored
as VQ give exactly the results of the same models with those weights given as their float32 dequantized values, in
the same memory mode: low memory (row blocks of the output projection, embedding rows gathered one by one) or with
the cache. Only a rotated weight in low-memory mode differs by rounding: it multiplies rotated inputs instead."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from formats_helpers import codebook_bytes, codebook_tensor, codebook_tensors

from wavq.formats import WqFile, write_wq
from wavq.formats.codecs import CodebookTensor, dequantize_codebook, view_2d_shape
from wavq.formats.stats import codebook_bits_per_weight
from wavq.runtime import Wav2Vec2CTCModel, WhisperModel, load
from wavq.runtime.cli import main as runtime_main
from wavq.runtime.info import summarize
from wavq.runtime.weights import Weights


def _needs_torch() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


# name suffix -> (dim, index bits, group size, rows per codebook, rotation); the sizes fit the tiny models' widths
WHISPER_VQ = {
    "model.encoder.layers.0.fc1.weight": (4, 6, 16, 64, 0),  # (64, 32)
    "model.decoder.layers.0.self_attn.q_proj.weight": (2, 5, 8, 32, 0),
    "model.decoder.layers.0.fc2.weight": (8, 9, 64, 32, 0),  # (32, 64)
    "model.decoder.layers.0.encoder_attn.v_proj.weight": (4, 4, 32, 8, 0),
    "model.decoder.embed_tokens.weight": (4, 8, 32, 20000, 0),  # tied output: read in row blocks, and by take()
}
WAV2VEC2_VQ = {
    "wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight": (4, 5, 16, 24, 0),  # (24, 16)
    "wav2vec2.encoder.layers.1.attention.k_proj.weight": (2, 7, 16, 5, 0),
    "lm_head.weight": (8, 4, 16, 32, 0),
    "wav2vec2.encoder.layers.1.feed_forward.output_dense.weight": (4, 6, 8, 16, 8),  # (16, 24), rotated
}


def _swap(src: str, dst: str, plan: dict, seed: int) -> tuple[dict, dict, dict]:
    """Write to `dst` the model of the .wq file `src` with the tensors of `plan` replaced by random codebook tensors
    scaled like the weights they replace, and every other tensor as float32 (so that both models run the same
    float products). Returns (meta, the float32 values of every tensor of `dst`, the codebook tensors)."""
    rng = np.random.default_rng(seed)
    with WqFile(src) as f:
        meta = f.meta
        floats = {n: np.array(f.array(n), dtype=np.float32) for n in f.tensors}
    stored, tensors = {}, dict(floats)
    for name, (dim, bits, group, rpb, rotation) in plan.items():
        shape = floats[name].shape
        t = codebook_tensor(rng, shape, dim, bits, group, min(rpb, shape[0]), rotation)
        t.scales[:] = (t.scales.astype(np.float32) * float(np.abs(floats[name]).mean())).astype(np.float16)
        stored[name], tensors[name], floats[name] = t, t, dequantize_codebook(t)
    write_wq(dst, meta, tensors)
    return meta, floats, stored


def _pair(path: str, swapped: tuple[dict, dict, dict], cache: bool, model_class):
    """(the .wq model at `path`, the same model on a dict of its float32 values), both in the same memory mode."""
    meta, floats, _ = swapped
    return load(path, cache=cache), model_class(Weights(floats, meta, cache=cache))


@pytest.fixture(scope="module")
def whisper_source(tmp_path_factory) -> str:
    """A tiny random Whisper converted to 4 bits."""
    _needs_torch()
    from tiny_models import convert_tiny, tiny_whisper

    root = tmp_path_factory.mktemp("vq_whisper")
    return convert_tiny(tiny_whisper(root / "ckpt"), root / "q4.wq")


@pytest.fixture(scope="module")
def whisper_pair(whisper_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("vq_whisper_pair")
    plan = dict(WHISPER_VQ)
    plan["model.encoder.layers.0.self_attn.out_proj.weight"] = (4, 7, 16, 32, 8)  # rotated
    plan["model.decoder.layers.0.fc1.weight"] = (2, 6, 32, 64, 16)  # rotated, decoded one token at a time
    path = os.fspath(root / "vq.wq")
    return path, _swap(whisper_source, path, plan, 1)


@pytest.fixture(scope="module")
def wav2vec2_pair(tmp_path_factory):
    _needs_torch()
    from tiny_models import convert_tiny, tiny_wav2vec2

    root = tmp_path_factory.mktemp("vq_w2v")
    src = convert_tiny(tiny_wav2vec2(root / "ckpt"), root / "q4.wq")
    path = os.fspath(root / "vq.wq")
    return path, _swap(src, path, WAV2VEC2_VQ, 2)


def _mel(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((80, 3000)).astype(np.float32) * 0.5


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_whisper_vq_equals_its_float_copy(whisper_pair, cache):
    path, swapped = whisper_pair
    vq, ref = _pair(path, swapped, cache, WhisperModel)
    try:
        assert sum(bool(t.rotation) for t in swapped[2].values()) == 2
        mel = _mel(3)
        feats = vq.encode(mel)
        assert feats.tobytes() == ref.encode(mel).tobytes()
        tokens = [vq.sot, vq.no_timestamps]
        state, state_ref = vq.new_state(), ref.new_state()
        cross, cross_ref = vq.cross_kv(feats), ref.cross_kv(feats)
        for step in range(4):  # prompt, then token by token: the decoder's row blocks and rotated inputs
            new = np.array([tokens if step == 0 else [tokens[-1]]])
            logits = vq.decoder_step(new, state, cross)
            want = ref.decoder_step(new, state_ref, cross_ref)
            if cache:
                assert logits.tobytes() == want.tobytes()
            else:  # a rotated weight multiplies rotated inputs here: x W^T = (x R) V^T, equal up to float32 rounding
                np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4 * np.abs(want).max())
            tokens.append(int(logits[0].argmax()))
        assert vq.generate(mel) == ref.generate(mel)
    finally:
        vq.weights.close()
        ref.weights.close()


@pytest.mark.slow
def test_whisper_vq_without_rotation_is_identical_in_low_memory_mode(whisper_source, tmp_path):
    """Without rotated weights the low-memory mode (row-block dequantization, embeddings gathered row by row)
    gives the float copy's logits bit for bit."""
    path = os.fspath(tmp_path / "vq.wq")
    swapped = _swap(whisper_source, path, WHISPER_VQ, 5)
    for cache in (False, True):
        vq, ref = _pair(path, swapped, cache, WhisperModel)
        try:
            mel = _mel(4)
            feats = vq.encode(mel)
            assert feats.tobytes() == ref.encode(mel).tobytes()
            tokens = np.array([[vq.sot, vq.no_timestamps, 300, 11, 4000]])
            logits = vq.decoder_step(tokens, vq.new_state(), vq.cross_kv(feats))
            assert logits.tobytes() == ref.decoder_step(tokens, ref.new_state(), ref.cross_kv(feats)).tobytes()
            assert vq.generate(mel) == ref.generate(mel)
        finally:
            vq.weights.close()
            ref.weights.close()


@pytest.mark.parametrize("cache", [False, True])
def test_wav2vec2_vq_equals_its_float_copy(wav2vec2_pair, cache):
    path, swapped = wav2vec2_pair
    vq, ref = _pair(path, swapped, cache, Wav2Vec2CTCModel)
    try:
        audio = np.random.default_rng(6).standard_normal((1, 8000)).astype(np.float32)
        logits = vq.logits(audio)
        assert logits.tobytes() == ref.logits(audio).tobytes()
        assert np.abs(logits).max() > 0
    finally:
        vq.weights.close()
        ref.weights.close()


@pytest.mark.slow
def test_weights_read_vq_rows_and_gather_embeddings(whisper_pair):
    """The runtime's three ways into a weight (whole, row blocks, embedding rows) give the reference decoder's
    values; and a VQ weight never gets a packed-kernel view or an integer path."""
    path, (_, _, stored) = whisper_pair
    w = Weights.open(path)
    try:
        for name, t in stored.items():
            ref = dequantize_codebook(t)
            assert w[name].tobytes() == ref.tobytes()
            rows = view_2d_shape(t.shape)[0]
            for a, b in ((0, 1), (1, rows // 2), (rows // 2, rows)):
                assert w.rows(name, a, b).tobytes() == ref[a:b].tobytes()
            assert w.packed(name) is None and w.activation(name) is None
        emb = "model.decoder.embed_tokens.weight"
        idx = np.array([[5, 17, 5], [50000, 0, 3]])
        assert w.take(emb, idx).tobytes() == dequantize_codebook(stored[emb])[idx].tobytes()
    finally:
        w.close()


def test_info_shows_the_codebook_encoding(wav2vec2_pair):
    path, _ = wav2vec2_pair
    r = CliRunner().invoke(runtime_main, ["info", path])
    assert r.exit_code == 0, r.output
    assert "VQ d4 5-bit idx (32-entry codebook) g16 " in r.output  # intermediate_dense
    assert "VQ d2 7-bit idx (128-entry codebook) g16 4 books" in r.output  # k_proj: 16 rows, 5 a book
    assert "VQ d4 6-bit idx (64-entry codebook) g8 rotated/8" in r.output


def test_summary_counts_codebook_tensors_as_quantized(tmp_path):
    """`wavq info`'s bits per weight: VQ tensors count with their indices, scales and codebooks."""
    path = tmp_path / "cb.wq"
    path.write_bytes(codebook_bytes())
    tensors = codebook_tensors()
    vq = {n: t for n, t in tensors.items() if isinstance(t, CodebookTensor)}
    q = tensors["q.plain"]
    numel = {n: int(np.prod(t.shape)) for n, t in vq.items()}
    vq_bits = sum(
        codebook_bits_per_weight(t.dim, t.index_bits, t.group_size, t.rows_per_book, t.shape) * numel[n]
        for n, t in vq.items()
    )
    q_bits = 4 * 36 + 16 * 4 * 3  # 4-bit codes, groups of 4 over 9 columns: 3 scales per row
    with WqFile(path) as f:
        s = summarize(f)
    assert s.n_quantized == sum(numel.values()) + 36
    assert s.quantized_bpw == pytest.approx((vq_bits + q_bits) / s.n_quantized, rel=1e-12)
    assert q.bits == 4 and q.group_size == 4
