"""Random-weight models in the real layout, built from their architectures' configs: nothing is downloaded.

Each builder writes a directory that the engines load exactly as they load a user's model (by path, with
`from_pretrained`): the GPU benchmarks measure the real architectures' compute on random weights, and the
tests drive the engines' real loading and batching code on tiny ones.

Random weights say nothing about quality, and left alone they would not even cost what real ones cost (a
random decoder stops at a random step). So each model is tuned for compute cost only, and says so:
- Whisper: the end-of-text embedding is zeroed, so greedy decoding runs for exactly `decode_tokens` (the
  checkpoint's `max_new_tokens`); the final layer norm is scaled up so the random text is decoded with
  confidence, and the decoder's choice follows the step's position so it does not loop on one token: the
  text passes the hallucination guard, and the pipeline carries it on to MT and TTS. (Zeroed or scaled
  weights cost a dense kernel exactly what random ones cost.)
- NLLB: `min_new_tokens` = `max_new_tokens` = `decode_tokens` in its generation config. Its tokenizer is the
  real class (NllbTokenizer) over a synthetic vocabulary of the real size: letters (so any text tokenizes,
  one character a token, which overstates the encoder's input), then short letter pieces, a third of them
  word-initial, so the decoded text has words that a voice can read.
- MMS-TTS (VITS): random durations are arbitrary, so `speaking_rate` is calibrated until the voice speaks
  about CHARS_PER_S characters a second, as MMS voices do.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.engines.asr.models import bundled_base_dir
from workers.engines.common import import_torch_transformers
from workers.engines.mt.families import NLLB_CODES


@dataclass(frozen=True)
class Architecture:
    name: str  # what the figures call it
    config: dict[str, Any] = field(default_factory=dict)


# Whisper large-v3-turbo: the large-v3 encoder (32 layers, 128 mel bins) with a 4-layer decoder.
WHISPER_LARGE_V3_TURBO = Architecture(
    "whisper-large-v3-turbo",
    dict(
        d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20, decoder_attention_heads=20,
        encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128, vocab_size=51866,
    ),
)  # fmt: skip
WHISPER_TINY = Architecture(
    "whisper-tiny-random",
    dict(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=51865,
    ),
)  # fmt: skip
# NLLB-200 distilled 600M (model_type m2m_100).
NLLB_600M = Architecture(
    "nllb-200-distilled-600M",
    dict(
        d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16, decoder_attention_heads=16,
        encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
        vocab_size=256206,
    ),
)  # fmt: skip
NLLB_TINY = Architecture(
    "nllb-tiny-random",
    dict(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=1024, vocab_size=2000,
    ),
)  # fmt: skip
MMS_TTS = Architecture("mms-tts (VITS)")  # transformers' VitsConfig defaults are MMS-TTS's architecture
MMS_TTS_TINY = Architecture(
    "mms-tts-tiny-random",
    dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, flow_size=16, spectrogram_bins=17,
        upsample_initial_channel=16, upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]], duration_predictor_filter_channels=16,
        prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
    ),
)  # fmt: skip

# Decode lengths of a 5 s segment: about 13 English words (Whisper: ~20 tokens) and its translation (NLLB: ~24).
# DESIGN.md's H100 figures used 30 and 35: those bound the cost from above.
ASR_DECODE_TOKENS = 20
MT_DECODE_TOKENS = 24
# Scales the decoder's final layer norm: logits this sharp make a random decoder's greedy choice confident.
WHISPER_SHARPEN = 200.0
# Scales the decoder's position embeddings: with its residual branches zeroed (which changes no kernel's cost) and
# each step's position weighing more than its input token, a random decoder moves on to a new token at every
# step instead of looping on one (which the guard would drop).
WHISPER_POSITION_WEIGHT = 10.0
CHARS_PER_S = 14.0  # MMS-TTS voices speak about this fast
CALIBRATION_TEXT = "the report will be ready next week and we can review it together on monday"
WORD_START_SHARE = 3  # one vocabulary piece in this many starts a word
SEED = 0
MARKER = "babelroom-random.json"  # what was built here, so a directory is built once and reused


def whisper(
    model_dir: Path, arch: Architecture = WHISPER_LARGE_V3_TURBO, decode_tokens: int = ASR_DECODE_TOKENS
) -> Path:
    """A Whisper checkpoint with the bundled multilingual tokenizer (Whisper base's, the same vocabulary)."""
    if _built(model_dir, arch, decode_tokens):
        return model_dir
    torch, transformers = import_torch_transformers()
    tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(bundled_base_dir() / "tokenizer.json"))
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    config = transformers.WhisperConfig(
        **arch.config, max_source_positions=1500, max_target_positions=448, decoder_start_token_id=sot,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = transformers.WhisperForConditionalGeneration(config)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[tokenizer.eos_token_id] = 0.0  # end-of-text never wins
        model.model.decoder.layer_norm.weight.mul_(WHISPER_SHARPEN)
        model.model.decoder.embed_positions.weight.mul_(WHISPER_POSITION_WEIGHT)
        for layer in model.model.decoder.layers:  # residual branches off: each step's choice follows its position
            for projection in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                projection.weight.zero_()
    model.generation_config.max_new_tokens = decode_tokens
    model.save_pretrained(model_dir)
    features = transformers.WhisperFeatureExtractor(feature_size=arch.config["num_mel_bins"])
    transformers.WhisperProcessor(features, tokenizer).save_pretrained(model_dir)
    return _mark(model_dir, arch, decode_tokens)


def nllb(model_dir: Path, arch: Architecture = NLLB_600M, decode_tokens: int = MT_DECODE_TOKENS) -> Path:
    """An NLLB checkpoint (M2M100 architecture, NllbTokenizer) knowing every language in NLLB_CODES."""
    if _built(model_dir, arch, decode_tokens):
        return model_dir
    torch, transformers = import_torch_transformers()
    codes = sorted(set(NLLB_CODES.values()))
    vocab = synthetic_vocabulary(arch.config["vocab_size"] - len(codes))
    tokenizer = transformers.NllbTokenizer(vocab=vocab, merges=[], extra_special_tokens=codes)
    config = transformers.M2M100Config(
        **arch.config, decoder_start_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = transformers.M2M100ForConditionalGeneration(config)
    model.generation_config.min_new_tokens = decode_tokens
    model.generation_config.max_new_tokens = decode_tokens
    # Control and language tokens are never generated, as a trained model would not write them mid-sentence.
    model.generation_config.suppress_tokens = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return _mark(model_dir, arch, decode_tokens)


def synthetic_vocabulary(size: int) -> dict[str, int]:
    """Specials, the word marker and letters first, then distinct short letter pieces up to `size`."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "▁", *letters, *(f"▁{c}" for c in letters)]
    pieces = ("".join(p) for n in itertools.count(2) for p in itertools.product(letters, repeat=n))
    rng = random.Random(SEED)
    seen = set(tokens)
    while len(tokens) < size:
        piece = next(pieces)
        token = f"▁{piece}" if rng.randrange(WORD_START_SHARE) == 0 else piece
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    return {token: i for i, token in enumerate(tokens[:size])}


def mms_tts(model_dir: Path, arch: Architecture = MMS_TTS) -> Path:
    """A VITS checkpoint with an MMS-style character vocabulary, speaking at about CHARS_PER_S."""
    if _built(model_dir, arch, 0):
        return model_dir
    torch, transformers = import_torch_transformers()
    model_dir.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", " ", "'", *"abcdefghijklmnopqrstuvwxyz"])}
    (model_dir / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.VitsTokenizer(str(model_dir / "vocab.json"), phonemize=False, add_blank=True)
    config = transformers.VitsConfig(**arch.config, vocab_size=len(vocab), pad_token_id=vocab["<pad>"])
    torch.manual_seed(SEED)
    model = transformers.VitsModel(config).eval()
    model.config.speaking_rate = _calibrated_rate(torch, model, tokenizer)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return _mark(model_dir, arch, 0)


def _calibrated_rate(torch: Any, model: Any, tokenizer: Any) -> float:
    """The speaking rate at which this random voice says CALIBRATION_TEXT in len/CHARS_PER_S seconds."""
    inputs = tokenizer(CALIBRATION_TEXT, return_tensors="pt")
    wanted_s = len(CALIBRATION_TEXT) / CHARS_PER_S
    rate = 1.0
    for _ in range(6):  # duration scales with 1/rate, but ceil() makes it only roughly proportional
        with torch.inference_mode():
            seconds = float(model(**inputs, speaking_rate=rate).sequence_lengths[0]) / model.config.sampling_rate
        rate *= seconds / wanted_s
    return rate


def _built(model_dir: Path, arch: Architecture, decode_tokens: int) -> bool:
    marker = model_dir / MARKER
    return marker.exists() and json.loads(marker.read_text()) == _description(arch, decode_tokens)


def _mark(model_dir: Path, arch: Architecture, decode_tokens: int) -> Path:
    (model_dir / MARKER).write_text(json.dumps(_description(arch, decode_tokens)))
    return model_dir


def _description(arch: Architecture, decode_tokens: int) -> dict[str, Any]:
    return {"name": arch.name, "config": arch.config, "decode_tokens": decode_tokens, "seed": SEED}


@dataclass(frozen=True)
class ModelSet:
    """The torch engines' models (by path) and what the figures call them."""

    asr: Path
    mt: Path
    voices: dict[str, Path]  # one VITS voice per target language
    names: dict[str, str]

    def env(self, device: str, batch_size: int) -> dict[str, str]:
        """The settings that point the real workers (and stages) at these models on `device`."""
        voices = ",".join(f"{language}=vits:{path}" for language, path in self.voices.items())
        return {
            "BABELROOM_ASR_ENGINE": "transformers",
            "BABELROOM_ASR_MODEL": str(self.asr),
            "BABELROOM_ASR_DEVICE": device,
            "BABELROOM_MT_ENGINE": "transformers",
            "BABELROOM_MT_MODEL": str(self.mt),
            "BABELROOM_MT_DEVICE": device,
            "BABELROOM_TTS_VOICES": voices,
            "BABELROOM_TTS_DEVICE": device,
            "BABELROOM_BATCH_SIZE": str(batch_size),
        }


def model_set(
    root: Path,
    languages: tuple[str, ...],
    tiny: bool = False,
    asr: Path | None = None,
    mt: Path | None = None,
    voices: dict[str, Path] | None = None,
) -> ModelSet:
    """The user's models where given (local dirs); for the rest Whisper large-v3-turbo, NLLB-200 600M and an
    MMS-TTS voice per language with random weights, built once under `root` (tiny ones with `tiny`)."""
    archs = (WHISPER_TINY, NLLB_TINY, MMS_TTS_TINY) if tiny else (WHISPER_LARGE_V3_TURBO, NLLB_600M, MMS_TTS)
    names = {stage: f"{arch.name} (random weights)" for stage, arch in zip(("asr", "mt", "tts"), archs, strict=True)}
    if asr:
        names["asr"] = str(asr)
    if mt:
        names["mt"] = str(mt)
    if voices:
        names["tts"] = ", ".join(f"{language}={path}" for language, path in voices.items())
    return ModelSet(
        asr=asr or whisper(root / archs[0].name, archs[0]),
        mt=mt or nllb(root / archs[1].name, archs[1]),
        voices=voices or {language: mms_tts(root / f"{archs[2].name}-{language}", archs[2]) for language in languages},
        names=names,
    )
