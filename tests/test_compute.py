"""runtime/compute.py: the MAC, bit-operation and byte formulas on small dims computed by hand, and the recording
hook. (The check of the formulas against counts taken from the running models is in the runtime tests.)"""

from __future__ import annotations

import numpy as np
import pytest

from wavq.formats import quantize, write_wq
from wavq.formats.activation import ActivationSpec
from wavq.formats.reader import WqFile
from wavq.runtime import compute
from wavq.runtime.compute import (
    ATTENTION_PROJECTIONS,
    ATTENTION_SCORES,
    FRONT_END,
    MLP,
    OUTPUT_PROJECTION,
    TensorCost,
    count_macs,
    part_of,
    record,
    table_from_arrays,
    table_from_file,
    wav2vec2_forward,
    whisper_cross_kv,
    whisper_decoder_step,
    whisper_encoder,
    whisper_greedy_window,
    whisper_weight_bytes,
)

# d_model 4, 3 encoder positions (6 mel frames), 2 mel bins, one layer each side, MLP width 8, vocabulary 5
WHISPER_DIMS = {"d_model": 4, "n_audio_ctx": 3, "n_mels": 2, "encoder_layers": 1, "decoder_layers": 1}
WHISPER_SHAPES = {
    "model.encoder.conv1.weight": (4, 2, 3),
    "model.encoder.conv2.weight": (4, 4, 3),
    **{f"model.encoder.layers.0.self_attn.{p}.weight": (4, 4) for p in ("q_proj", "k_proj", "v_proj", "out_proj")},
    "model.encoder.layers.0.fc1.weight": (8, 4),
    "model.encoder.layers.0.fc2.weight": (4, 8),
    **{
        f"model.decoder.layers.0.{a}.{p}.weight": (4, 4)
        for a in ("self_attn", "encoder_attn")
        for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    },
    "model.decoder.layers.0.fc1.weight": (8, 4),
    "model.decoder.layers.0.fc2.weight": (4, 8),
    "model.decoder.embed_tokens.weight": (5, 4),
    "model.decoder.embed_positions.weight": (7, 4),
}


def _whisper_table(**bits) -> dict[str, TensorCost]:
    return {n: TensorCost(s, 4 * int(np.prod(s)), *bits.get(n, ())) for n, s in WHISPER_SHAPES.items()}


def test_whisper_encoder_by_hand():
    c = whisper_encoder(WHISPER_DIMS, _whisper_table())
    # conv1: 6 frames x (4 x 2 x 3) = 144; conv2: 3 frames x (4 x 4 x 3) = 144
    # q, k, v, out: 4 x 3 rows x 16 = 192; scores: 2 x 3 x 3 x 4 = 72; fc1 + fc2: 2 x 3 x 32 = 192
    assert c.macs == {FRONT_END: 288, ATTENTION_PROJECTIONS: 192, ATTENTION_SCORES: 72, MLP: 192, OUTPUT_PROJECTION: 0}
    assert c.total_macs == 744 and c.total_bitops == 744 * 32 * 32


def test_whisper_cross_kv_and_decoder_step_by_hand():
    t = _whisper_table()
    assert whisper_cross_kv(WHISPER_DIMS, t).macs[ATTENTION_PROJECTIONS] == 2 * 3 * 16
    c = whisper_decoder_step(WHISPER_DIMS, t, n_new=2, offset=1)
    # self q, k, v, out and cross q, out over 2 rows: 6 x 2 x 16 = 192; self scores 2 x 2 rows x 3 keys x 4 = 48,
    # cross scores 2 x 2 x 3 x 4 = 48; MLP 2 x 2 x 32 = 128; logits of the last position only: 5 x 4 = 20
    assert c.macs == {FRONT_END: 0, ATTENTION_PROJECTIONS: 192, ATTENTION_SCORES: 96, MLP: 128, OUTPUT_PROJECTION: 20}
    beam = whisper_decoder_step(WHISPER_DIMS, t, n_new=1, offset=5, batch=3)
    # 3 rows: projections 6 x 3 x 16 = 288; scores 2 x 3 x 6 x 4 + 2 x 3 x 3 x 4 = 216; MLP 3 x 64; logits 3 x 20
    assert beam.macs == {
        FRONT_END: 0,
        ATTENTION_PROJECTIONS: 288,
        ATTENTION_SCORES: 216,
        MLP: 192,
        OUTPUT_PROJECTION: 60,
    }


def test_whisper_window_sums_its_steps():
    t = _whisper_table()
    w = whisper_greedy_window(WHISPER_DIMS, t, prompt_len=3, generated=4, detect_language=True)
    steps = [whisper_decoder_step(WHISPER_DIMS, t, n, off) for n, off in ((1, 0), (3, 0), (1, 3), (1, 4), (1, 5))]
    expected = whisper_encoder(WHISPER_DIMS, t) + whisper_cross_kv(WHISPER_DIMS, t)
    for s in steps:
        expected += s
    assert w.macs == expected.macs and w.bitops == expected.bitops


def test_bitops_use_weight_and_activation_bits():
    fc1 = "model.encoder.layers.0.fc1.weight"
    c = whisper_encoder(WHISPER_DIMS, _whisper_table(**{fc1: (4, 8)}))
    # fc1's 96 MACs at 4 x 8 bits, fc2's 96 at 32 x 32
    assert c.bitops[MLP] == 96 * 4 * 8 + 96 * 32 * 32
    assert c.bitops[ATTENTION_SCORES] == 72 * 32 * 32


def test_whisper_weight_bytes():
    t = _whisper_table()
    b = whisper_weight_bytes(t)
    encoder = sum(4 * int(np.prod(s)) for n, s in WHISPER_SHAPES.items() if n.startswith("model.encoder."))
    assert b["per_window"] == encoder + 2 * 64  # + cross k_proj and v_proj
    # per token: self q/k/v/out, cross q/out (6 x 64), fc1 + fc2 (2 x 128), the whole tied embedding (80: it is
    # the output projection) and one row of the position table (16)
    assert b["per_token"] == 6 * 64 + 256 + 80 + 16


def _wav2vec2_dims(norm: str) -> dict:
    return {
        "prefix": "wav2vec2",
        "conv_dim": (2, 3),
        "conv_kernel": (3, 2),
        "conv_stride": (2, 2),
        "conv_bias": False,
        "feat_extract_norm": norm,
        "feat_extract_activation": "gelu",
        "feat_proj_layer_norm": True,
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 6,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "do_stable_layer_norm": False,
        "pos_conv_kernel": 2,
        "pos_conv_groups": 2,
        "pos_conv_stack": False,
        "pos_conv_layers": 1,
        "pos_conv_batch_norm": False,
        "batch_norm_eps": 1e-5,
        "vocab_size": 5,
    }


def _wav2vec2_table() -> dict[str, TensorCost]:
    shapes = {
        "wav2vec2.feature_extractor.conv_layers.0.conv.weight": (2, 1, 3),
        "wav2vec2.feature_extractor.conv_layers.1.conv.weight": (3, 2, 2),
        "wav2vec2.feature_projection.projection.weight": (4, 3),
        "wav2vec2.encoder.pos_conv_embed.conv.weight": (4, 2, 2),
        **{
            f"wav2vec2.encoder.layers.0.attention.{p}.weight": (4, 4)
            for p in ("q_proj", "k_proj", "v_proj", "out_proj")
        },
        "wav2vec2.encoder.layers.0.feed_forward.intermediate_dense.weight": (6, 4),
        "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight": (4, 6),
        "lm_head.weight": (5, 4),
    }
    return {n: TensorCost(s, 4 * int(np.prod(s))) for n, s in shapes.items()}


def test_wav2vec2_forward_by_hand():
    t = _wav2vec2_table()
    # 21 samples: conv 0 gives (21 - 3) // 2 + 1 = 10 frames, conv 1 (10 - 2) // 2 + 1 = 5 = T. Receptive field 5,
    # total stride 4. Chunks of 2 frames: [0, 2) sees 9 samples -> 4 and 2 frames; [2, 4) the same; [4, 5) sees 5
    # samples -> 2 and 1: conv 0 computes 4 + 4 + 2 = 10 frames x 6 MACs, conv 1 5 frames x 12 MACs
    layer = lambda norm: wav2vec2_forward(_wav2vec2_dims(norm), t, 21, chunk_frames=2)  # noqa: E731
    c = layer("layer")
    # front end: 60 + 60, projection 5 x 12, positional conv 5 x 16
    assert c.macs[FRONT_END] == 60 + 60 + 60 + 80
    assert c.macs[ATTENTION_PROJECTIONS] == 4 * 5 * 16
    assert c.macs[ATTENTION_SCORES] == 2 * 5 * 5 * 4
    assert c.macs[MLP] == 2 * 5 * 24 and c.macs[OUTPUT_PROJECTION] == 5 * 20
    # "group" models run conv 0 over the whole utterance once more for its statistics: 10 frames x 6
    assert layer("group").macs[FRONT_END] == c.macs[FRONT_END] + 60
    # chunks of 1 frame overlap: each sees 5 samples -> 2 conv-0 frames, so conv 0 computes 5 x 2 = 10 frames
    assert wav2vec2_forward(_wav2vec2_dims("layer"), t, 21, chunk_frames=1).macs == c.macs
    # chunks of 3 frames: [0, 3) sees 13 samples -> 6 frames, [3, 5) sees 9 -> 4: conv 0 computes 10 frames
    assert wav2vec2_forward(_wav2vec2_dims("layer"), t, 21, chunk_frames=3).macs == c.macs


def test_wav2vec2_overlapping_chunks_recompute():
    # kernels 3 and 3, strides 2 and 2: receptive field 7, total stride 4. 29 samples -> 14 and 6 frames. Chunks of
    # 2 frames ([0, 2), [2, 4), [4, 6)) each see 11 samples -> 5 conv-0 frames: 15 computed, one more than the 14
    # of a single pass (neighbouring chunks share a conv-0 frame); conv 1 computes its 6 frames once
    dims = {**_wav2vec2_dims("layer"), "conv_kernel": (3, 3)}
    table = {**_wav2vec2_table(), "wav2vec2.feature_extractor.conv_layers.1.conv.weight": TensorCost((3, 2, 3), 72)}
    c = wav2vec2_forward(dims, table, 29, chunk_frames=2)
    assert c.macs[FRONT_END] == 15 * 6 + 6 * 18 + 6 * 12 + 6 * 16
    # one chunk of 6 frames sees 27 samples: 13 conv-0 frames (the 14th feeds no conv-1 frame), two fewer
    assert wav2vec2_forward(dims, table, 29, chunk_frames=6).macs[FRONT_END] == c.macs[FRONT_END] - 2 * 6


def test_record_and_nested_counts():
    record(MLP, 10)  # nothing open: ignored
    with count_macs() as outer:
        record(MLP, 10, 4, 8)
        with count_macs() as inner:
            record(ATTENTION_SCORES, 3)
        record(OUTPUT_PROJECTION, 2)
    record(MLP, 99)
    assert outer.macs == {FRONT_END: 0, ATTENTION_PROJECTIONS: 0, ATTENTION_SCORES: 3, MLP: 10, OUTPUT_PROJECTION: 2}
    assert outer.bitops[MLP] == 320 and outer.total_bitops == 320 + 5 * 1024
    assert inner.total_macs == 3
    assert not compute._open_counts
    with pytest.raises(ValueError, match="unknown part"), count_macs():
        record("softmax", 1)
    assert not compute._open_counts, "a block left by an exception is closed"


def test_part_of():
    assert part_of("model.encoder.conv2.weight") == FRONT_END
    assert part_of("model.decoder.layers.3.encoder_attn.k_proj.weight") == ATTENTION_PROJECTIONS
    assert part_of("model.decoder.layers.3.fc2.weight") == MLP
    assert part_of("model.decoder.embed_tokens.weight") == OUTPUT_PROJECTION
    assert part_of("hubert.encoder.pos_conv_embed.conv.weight") == FRONT_END
    assert part_of("wav2vec2.encoder.layers.0.feed_forward.output_dense.weight") == MLP
    assert part_of("wav2vec2.encoder.layers.0.attention.out_proj.weight") == ATTENTION_PROJECTIONS
    assert part_of("lm_head.weight") == OUTPUT_PROJECTION
    with pytest.raises(ValueError, match="no compute part"):
        part_of("model.encoder.layer_norm.weight")


def test_tables(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    qt, _ = quantize(w, 4, group_size=8)
    path = tmp_path / "m.wq"
    write_wq(path, {}, {"a.fc1.weight": qt, "a.fc2.weight": w}, activations={"a.fc1.weight": ActivationSpec(6)})
    with WqFile(path) as f:
        table = table_from_file(f)
        assert table["a.fc1.weight"] == TensorCost((8, 16), f.info("a.fc1.weight").nbytes, 4, 6)
    assert table["a.fc2.weight"] == TensorCost((8, 16), 512, 32, 32)
    assert table_from_arrays({"a.fc2.weight": w}) == {"a.fc2.weight": table["a.fc2.weight"]}


def test_peak_activation_bytes():
    from wavq.runtime.compute import wav2vec2_peak_activation_bytes, whisper_peak_activation_bytes

    # conv1: mel 2 x 6 + im2col 6 x 6 + output 4 x 6 = 72; conv2: 24 + 3 x 12 + 12 = 72; attention: residual, normed
    # input, q, k, v, merged heads (6 x 3 x 4) + one head's 3 x 3 scores = 81; MLP: 2 x 12 + 2 x 3 x 8 = 72
    assert whisper_peak_activation_bytes({**WHISPER_DIMS, "encoder_layers": 1}, _whisper_table()) == 4 * 81
    # 21 samples, chunks of 2 frames (9 samples): conv 0: 9 + 3 x 4 + 2 x 4 = 29, conv 1: 8 + 4 x 2 + 3 x 2 = 22;
    # attention: 5 x 4 x 4 + 2 heads x 5 x 5 + 5 x 4 = 150; feed-forward: 5 x 4 x 2 + 2 x 5 x 6 = 100
    assert wav2vec2_peak_activation_bytes(_wav2vec2_dims("layer"), 21, chunk_frames=2) == 4 * 150


def test_summary_and_integer_products():
    fc1 = "model.encoder.layers.0.fc1.weight"
    table = _whisper_table(**{fc1: (4, 8), "model.encoder.layers.0.fc2.weight": (4, 32)})
    assert compute.integer_products(table) == [fc1]  # fc2 has 4-bit codes but float inputs
    s = compute.summary({"architecture": "whisper", "dims": WHISPER_DIMS}, table, prompt_len=2)
    window = whisper_encoder(WHISPER_DIMS, table) + whisper_cross_kv(WHISPER_DIMS, table)
    token = whisper_decoder_step(WHISPER_DIMS, table, 1, 2)
    assert s["per_window"] == window.as_dict() and s["per_token"] == token.as_dict()
    assert s["bitops_vs_float"] == (window + token).total_bitops / ((window + token).total_macs * 1024) < 1
    assert s["integer_products"] == [fc1] and s["weight_bytes"] == whisper_weight_bytes(table)
    w = compute.summary({"architecture": "wav2vec2-ctc", "dims": _wav2vec2_dims("group")}, _wav2vec2_table())
    assert w["per_window"] == wav2vec2_forward(_wav2vec2_dims("group"), _wav2vec2_table(), 480_000).as_dict()
    assert w["bitops_vs_float"] == 1.0 and w["integer_products"] == []
    with pytest.raises(ValueError, match="architecture"):
        compute.summary({"architecture": "golden", "dims": {}}, table)
