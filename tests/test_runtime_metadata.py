"""The runtime validates the metadata it uses when a model is loaded: one case per probe finding.

Each case re-encodes the header of a real converted file (a small random Whisper or Wav2Vec2-CTC model) with one
field changed and a correct header checksum, so the container reader accepts it and the model's own checks must
catch it: a one-line MalformedHeaderError naming the file and the field, never a ZeroDivisionError, TypeError,
KeyError, IndexError or numpy reshape error, and never an allocation sized by the bad value.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from formats_helpers import rebuild, split  # noqa: E402
from test_wav2vec2_parity import VARIANTS, build_checkpoint  # noqa: E402
from test_whisper_parity import SPECS, _build  # noqa: E402

from wavq.converter.export import convert  # noqa: E402
from wavq.formats import MalformedHeaderError  # noqa: E402
from wavq.runtime import load  # noqa: E402
from wavq.runtime.wav2vec2 import Wav2Vec2CTCModel, Wav2Vec2Dims  # noqa: E402
from wavq.runtime.weights import Weights  # noqa: E402
from wavq.runtime.whisper import WhisperModel  # noqa: E402

Mutate = Callable[[dict], None]


@pytest.fixture(scope="module")
def whisper_file(tmp_path_factory) -> str:
    """A converted English-only Whisper model (random weights, tiny.en's tokenizer and generation config)."""
    return _build(SPECS[0], str(tmp_path_factory.mktemp("whisper"))) + ".wq"


@pytest.fixture(scope="module")
def wav2vec2_file(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("wav2vec2")
    config_name, overrides, mask = VARIANTS["w2v-base"]
    build_checkpoint(d / "ckpt", config_name, overrides, mask)
    convert(str(d / "ckpt"), str(d / "model.wq"))
    return str(d / "model.wq")


def rewrite_meta(path: str, out: str, mutate: Mutate) -> str:
    """Copy of the file at `path` with its header (meta and tensor table) changed by `mutate`, checksum correct."""
    with open(path, "rb") as f:
        _, header, data = split(f.read())
    mutate(header)
    with open(out, "wb") as f:
        f.write(rebuild(header, data))
    return out


def setting(section: str | None, key: str, value) -> Mutate:
    def mutate(header: dict) -> None:
        (header["meta"] if section is None else header["meta"][section])[key] = value

    return mutate


def removing(section: str | None, key: str) -> Mutate:
    def mutate(header: dict) -> None:
        del (header["meta"] if section is None else header["meta"][section])[key]

    return mutate


def reshaping(name: str, shape: Callable[[list[int]], list[int]]) -> Mutate:
    """Change a tensor's recorded shape (same element count, so the reader's size checks still pass)."""

    def mutate(header: dict) -> None:
        for entry in header["tensors"]:
            if entry["name"] == name:
                entry["shape"] = shape(entry["shape"])

    return mutate


def renaming(name: str, new_name: str) -> Mutate:
    def mutate(header: dict) -> None:
        for entry in header["tensors"]:
            if entry["name"] == name:
                entry["name"] = new_name

    return mutate


def both(*mutations: Mutate) -> Mutate:
    def mutate(header: dict) -> None:
        for m in mutations:
            m(header)

    return mutate


def assert_rejected(path: str, field: str, open_model=load) -> None:
    with pytest.raises(MalformedHeaderError) as e:
        open_model(path)
    message = str(e.value)
    assert "\n" not in message
    assert path in message, message
    assert field in message, message


WHISPER_CASES = {
    # ZeroDivisionError before
    "encoder_heads=0": (setting("dims", "encoder_heads", 0), "dims.encoder_heads"),
    "hop_length=0": (setting("preprocess", "hop_length", 0), "preprocess.hop_length"),
    "sampling_rate=0": (setting("preprocess", "sampling_rate", 0), "preprocess.sampling_rate"),
    # TypeError before
    "d_model='384'": (setting("dims", "d_model", "384"), "dims.d_model"),
    "integer vocabulary": (setting("tokenizer", "tokens", list(range(10))), "tokenizer.tokens[0]"),
    "mel_filters=[1]": (setting("preprocess", "mel_filters", [1]), "preprocess.mel_filters"),
    "forced_decoder_ids=5": (setting("generation", "forced_decoder_ids", 5), "generation.forced_decoder_ids"),
    # ValueError / OverflowError before
    "suppress_tokens=['a']": (setting("generation", "suppress_tokens", ["a"]), "generation.suppress_tokens[0]"),
    "suppress_tokens=[2**64-1]": (
        setting("generation", "suppress_tokens", [2**64 - 1]),
        "generation.suppress_tokens[0]",
    ),
    # AttributeError before
    "lang_to_id=[1]": (setting("generation", "lang_to_id", [1]), "generation.lang_to_id"),
    "tokenizer='x'": (setting(None, "tokenizer", "x"), "tokenizer"),
    # IndexError before
    "suppress_tokens=[10**6]": (setting("generation", "suppress_tokens", [10**6]), "generation.suppress_tokens[0]"),
    "decoder_start_token_id=2**40": (
        setting("generation", "decoder_start_token_id", 2**40),
        "generation.decoder_start_token_id",
    ),
    # KeyError 'transcribe' before
    "is_multilingual on English-only": (setting("generation", "is_multilingual", True), "generation.task_to_id"),
    # numpy reshape errors before
    "heads not dividing d_model": (setting("dims", "decoder_heads", 3), "dims.decoder_heads"),
    "n_mels against conv1": (setting("dims", "n_mels", 81), "model.encoder.conv1.weight"),
    "transposed mel filters": (reshaping("preprocess.mel_filters", lambda s: s[::-1]), "preprocess.mel_filters"),
    "encoder positions": (
        reshaping("model.encoder.embed_positions.weight", lambda s: [s[0] // 2, s[1] * 2]),
        "model.encoder.embed_positions.weight",
    ),
    "decoder positions against n_text_ctx": (setting("dims", "n_text_ctx", 1000), "model.decoder.embed_positions"),
    # allocations sized by a header value
    "decoder_layers=10**8": (setting("dims", "decoder_layers", 10**8), "dims.decoder_layers"),
    "n_fft=400000": (setting("preprocess", "n_fft", 400_000), "preprocess.n_fft"),
    "sampling_rate=10**12": (setting("preprocess", "sampling_rate", 10**12), "preprocess.sampling_rate"),
    # non-finite floats
    "layer_norm_eps NaN": (setting("dims", "layer_norm_eps", float("nan")), "dims.layer_norm_eps"),
    "padding_value inf": (setting("preprocess", "padding_value", float("inf")), "preprocess.padding_value"),
    # incomplete or inconsistent
    "no dims": (removing(None, "dims"), "dims"),
    "no eos_token_id": (removing("generation", "eos_token_id"), "generation.eos_token_id"),
    "n_samples against n_audio_ctx": (setting("preprocess", "n_samples", 240_000), "preprocess.n_samples"),
    "chunk_length against n_samples": (setting("preprocess", "chunk_length", 20), "preprocess.chunk_length"),
    "missing layer": (setting("dims", "encoder_layers", 3), "model.encoder.layers.2"),
    "forced position 0": (
        setting("generation", "forced_decoder_ids", [[0, 1]]),
        "generation.forced_decoder_ids[0][0]",
    ),
    "activation the runtime does not apply": (setting("dims", "activation", "relu"), "dims.activation"),
    "first_special_id beyond tokens": (setting("tokenizer", "first_special_id", 10**7), "tokenizer.first_special_id"),
    # numpy broadcast errors before: a 1-D tensor given another shape of the same size
    "bias as a matrix": (
        reshaping("model.encoder.layers.0.fc1.bias", lambda s: [2, s[0] // 2]),
        "model.encoder.layers.0.fc1.bias",
    ),
    "conv bias as a column": (reshaping("model.encoder.conv1.bias", lambda s: [s[0], 1]), "model.encoder.conv1.bias"),
    "final layer norm as a matrix": (
        reshaping("model.decoder.layer_norm.weight", lambda s: [2, s[0] // 2]),
        "model.decoder.layer_norm.weight",
    ),
    "layer norm bias as a row": (
        reshaping("model.decoder.layers.0.final_layer_norm.bias", lambda s: [1, s[0]]),
        "model.decoder.layers.0.final_layer_norm.bias",
    ),
    "bias without its weight": (
        renaming("model.encoder.layers.0.fc1.bias", "model.encoder.layers.0.fc3.bias"),
        "model.encoder.layers.0.fc3.bias",
    ),
}


def test_whisper_file_loads_after_an_unchanged_rewrite(whisper_file, tmp_path):
    model = load(rewrite_meta(whisper_file, str(tmp_path / "same.wq"), lambda h: None))
    assert isinstance(model, WhisperModel) and model.dims.d_model == 64


@pytest.mark.parametrize("case", list(WHISPER_CASES))
def test_whisper_metadata_is_validated(whisper_file, tmp_path, case):
    mutate, field = WHISPER_CASES[case]
    assert_rejected(rewrite_meta(whisper_file, str(tmp_path / "bad.wq"), mutate), field)


def test_whisper_model_rejects_another_architecture(wav2vec2_file):
    assert_rejected(wav2vec2_file, "architecture", lambda p: WhisperModel(Weights.open(p)))


def test_whisper_metadata_is_validated_without_cache_too(whisper_file, tmp_path):
    path = rewrite_meta(whisper_file, str(tmp_path / "bad.wq"), setting("dims", "encoder_heads", 0))
    assert_rejected(path, "dims.encoder_heads", lambda p: load(p, cache=False))


WAV2VEC2_CASES = {
    "no dims": (removing(None, "dims"), "dims"),
    "no hidden_size": (removing("dims", "hidden_size"), "dims.hidden_size"),
    "no tokenizer": (removing(None, "tokenizer"), "tokenizer"),
    "heads=0": (setting("dims", "num_attention_heads", 0), "dims.num_attention_heads"),
    "heads not dividing hidden_size": (setting("dims", "num_attention_heads", 3), "dims.num_attention_heads"),
    "hidden_size='32'": (setting("dims", "hidden_size", "16"), "dims.hidden_size"),
    "conv lists of different lengths": (setting("dims", "conv_stride", [5, 2]), "conv_dim/kernel/stride"),
    "conv kernel against its tensor": (
        setting("dims", "conv_kernel", [11, 3, 2]),
        "feature_extractor.conv_layers.0.conv.weight",
    ),
    "unknown activation": (setting("dims", "hidden_act", "mish"), "dims.hidden_act"),
    "unknown prefix": (setting("dims", "prefix", "whisper"), "dims.prefix"),
    "num_hidden_layers=10**8": (setting("dims", "num_hidden_layers", 10**8), "dims.num_hidden_layers"),
    "vocab_size against lm_head": (setting("dims", "vocab_size", 7), "lm_head.weight"),
    "vocabulary against vocab_size": (setting("tokenizer", "vocab", ["<pad>", "a"]), "tokenizer.vocab"),
    "integer vocabulary": (setting("tokenizer", "vocab", list(range(32))), "tokenizer.vocab[0]"),
    "pad_token=None": (setting("tokenizer", "pad_token", None), "tokenizer.pad_token"),
    "sampling_rate=10**12": (setting("preprocess", "sampling_rate", 10**12), "preprocess.sampling_rate"),
    "sampling_rate=0": (setting("preprocess", "sampling_rate", 0), "preprocess.sampling_rate"),
    "layer_norm_eps NaN": (setting("dims", "layer_norm_eps", float("nan")), "dims.layer_norm_eps"),
    "padding_value inf": (setting("preprocess", "padding_value", float("inf")), "preprocess.padding_value"),
    "do_normalize='yes'": (setting("preprocess", "do_normalize", "yes"), "preprocess.do_normalize"),
    "no convolutions": (
        both(*(setting("dims", k, []) for k in ("conv_dim", "conv_kernel", "conv_stride"))),
        "dims.conv_dim",
    ),
    # numpy broadcast errors before: a 1-D tensor given another shape of the same size
    "conv layer norm as a matrix": (
        reshaping("wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight", lambda s: [2, s[0] // 2]),
        "wav2vec2.feature_extractor.conv_layers.0.layer_norm.weight",
    ),
    "encoder layer norm as a column": (
        reshaping("wav2vec2.encoder.layer_norm.weight", lambda s: [s[0], 1]),
        "wav2vec2.encoder.layer_norm.weight",
    ),
    "attention bias as a matrix": (
        reshaping("wav2vec2.encoder.layers.0.attention.q_proj.bias", lambda s: [2, s[0] // 2]),
        "wav2vec2.encoder.layers.0.attention.q_proj.bias",
    ),
    "lm_head bias as a row": (reshaping("lm_head.bias", lambda s: [1, s[0]]), "lm_head.bias"),
}


def test_wav2vec2_file_loads_after_an_unchanged_rewrite(wav2vec2_file, tmp_path):
    model = load(rewrite_meta(wav2vec2_file, str(tmp_path / "same.wq"), lambda h: None))
    assert isinstance(model, Wav2Vec2CTCModel) and model.dims.hidden_size > 0


@pytest.mark.parametrize("case", list(WAV2VEC2_CASES))
def test_wav2vec2_metadata_is_validated(wav2vec2_file, tmp_path, case):
    mutate, field = WAV2VEC2_CASES[case]
    assert_rejected(rewrite_meta(wav2vec2_file, str(tmp_path / "bad.wq"), mutate), field)


def test_wav2vec2_model_rejects_another_architecture(whisper_file):
    """A wrong architecture is a MalformedHeaderError, not a ValueError."""
    assert_rejected(whisper_file, "architecture", lambda p: Wav2Vec2CTCModel(Weights.open(p)))


def test_wav2vec2_dims_from_meta_names_the_field():
    with pytest.raises(MalformedHeaderError, match="dims.conv_dim is missing"):
        Wav2Vec2Dims.from_meta({})


def test_unknown_architecture_is_rejected(whisper_file, tmp_path):
    assert_rejected(
        rewrite_meta(whisper_file, str(tmp_path / "bad.wq"), setting(None, "architecture", "llama")), "architecture"
    )
