"""Tiny random checkpoints for tests that need a real converted .wq model (not parity: only something to run).

Each builder saves a Hugging Face checkpoint directory; `convert_tiny` turns it into a .wq file with the real
converter. Needs torch and transformers (callers skip without them); the Whisper one also needs the tokenizer of
openai/whisper-tiny.en in the Hugging Face cache.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAOINSHRDLUCMWFGYPBVKJXQZ") + ["'"]  # base-960h's layout
# tiny shared Wav2Vec2-family dims; a conv stack of total stride 20 (800 frames/s) keeps attention over ~1 s small
TINY_CTC_DIMS = dict(
    vocab_size=len(CTC_VOCAB),
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 2),
    conv_stride=(5, 2, 2),
    num_conv_pos_embedding_groups=2,
    pad_token_id=0,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
    mask_time_prob=0.0,
)
WHISPER_SOURCE = "openai/whisper-tiny.en"


def tiny_wav2vec2(directory: str | os.PathLike) -> str:
    """A 2-layer, 16-wide Wav2Vec2ForCTC with its tokenizer and feature extractor, saved to `directory`."""
    import torch
    import transformers

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = transformers.Wav2Vec2Config(
        **TINY_CTC_DIMS,
        num_conv_pos_embeddings=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(config).eval().save_pretrained(directory)
    vocab = os.path.join(directory, "vocab.json")
    with open(vocab, "w") as f:
        json.dump({t: i for i, t in enumerate(CTC_VOCAB)}, f)
    transformers.Wav2Vec2CTCTokenizer(vocab).save_pretrained(directory)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=False).save_pretrained(directory)
    return directory


def tiny_whisper(directory: str | os.PathLike) -> str:
    """A 1+1-layer, 32-wide WhisperForConditionalGeneration with tiny.en's tokenizer and generation config."""
    import torch
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(WHISPER_SOURCE)
        gen = transformers.GenerationConfig.from_pretrained(WHISPER_SOURCE)
    except OSError:
        pytest.skip(f"{WHISPER_SOURCE} is not in the Hugging Face cache")
    directory = os.fspath(directory)
    config = transformers.WhisperConfig(
        vocab_size=len(tok),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        decoder_layers=1,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=gen.decoder_start_token_id,
        eos_token_id=gen.eos_token_id,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
    )
    torch.manual_seed(0)
    transformers.WhisperForConditionalGeneration(config).eval().save_pretrained(directory)
    tok.save_pretrained(directory)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    gen.save_pretrained(directory)
    return directory


def convert_tiny(checkpoint: str, output: str | os.PathLike) -> str:
    """The checkpoint as a 4-bit .wq file (round to nearest, group 16), through the wavq-convert command."""
    from click.testing import CliRunner

    from wavq.converter.cli import main

    r = CliRunner().invoke(main, [checkpoint, "-o", os.fspath(output), "--bits", "4", "--group-size", "16", "-q"])
    assert r.exit_code == 0, r.output
    return os.fspath(output)
