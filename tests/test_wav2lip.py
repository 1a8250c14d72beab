"""The Wav2Lip-96 slot on the CPU: the exact network, loaded strictly from a checkpoint in the released
layout (random weights here: no lip-sync weights can be installed offline, and the released ones are
non-commercial), its mel front end, and the paste through a mouth mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.talking_head import talking_head_frames
from pipeline.audio import float_to_pcm16
from pipeline.messages import SAMPLE_RATE, SynthesizedSpeech
from workers.engines.common import EngineUnavailable
from workers.engines.lipsync.base import LipSyncOptions
from workers.engines.lipsync.face import CHIN, EYE_LEFT, EYE_RIGHT, track_faces
from workers.engines.lipsync.registry import load_lipsyncer
from workers.engines.lipsync.wav2lip import (
    Wav2Lip96,
    Wav2LipSyncer,
    load_wav2lip,
    mel_filters,
    mel_spectrogram,
    mel_windows,
)

FPS = 25.0


def save_released_layout(model: torch.nn.Module, path: Path) -> Path:
    """As Wav2Lip's training script saves it: DataParallel's "module." prefix under "state_dict"."""
    state = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_released_layout(Wav2Lip96(), tmp_path_factory.mktemp("wav2lip") / "wav2lip.pth")


def test_the_network_is_wav2lip_96(checkpoint: Path) -> None:
    model = load_wav2lip(checkpoint)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(36.3e6, rel=0.005)
    with torch.inference_mode():
        out = model(torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96))
    assert out.shape == (3, 3, 96, 96) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_other_checkpoints_are_refused_clearly(checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    bigger = {**state, "module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(32, 6, 3, 3)}  # 192 variant
    fewer = {k: v for k, v in state.items() if not k.startswith("module.output_block")}
    for name, variant in (("bigger", {"state_dict": bigger}), ("fewer", {"state_dict": fewer}), ("bare", state)):
        path = tmp_path / f"{name}.pth"
        torch.save(variant, path)
        with pytest.raises(EngineUnavailable, match=r"not a Wav2Lip-96 checkpoint|layout"):
            load_wav2lip(path)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(EngineUnavailable, match="not a readable torch checkpoint"):
        load_wav2lip(tmp_path / "text.pth")
    with pytest.raises(EngineUnavailable, match="not found"):
        load_wav2lip(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="BABELROOM_LIPSYNC_MODEL"):
        LipSyncOptions(engine="wav2lip")
    with pytest.raises(ValueError, match="unknown lip-sync engine"):
        LipSyncOptions.from_env({"BABELROOM_LIPSYNC_ENGINE": "sadtalker"})


def test_mel_front_end_matches_wav2lip_audio_settings() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = mel_spectrogram(tone, SAMPLE_RATE)
    assert mel.shape == (80, 81) and mel.min() >= -4 and mel.max() <= 4  # 80 frames a second, centred windows
    filters = mel_filters()
    peak_band = int(np.argmax(mel[:, 40]))
    assert filters[peak_band, 1000 * 800 // SAMPLE_RATE] == filters[:, 1000 * 800 // SAMPLE_RATE].max()
    assert mel[peak_band, 40] > mel[:, 40].mean() + 2
    quiet = mel_spectrogram(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    assert np.all(quiet == -4)  # silence sits at the floor
    windows = mel_windows(mel, [0.0, 0.5, 0.99])
    assert windows.shape == (3, 1, 80, 16) and np.array_equal(windows[1, 0], mel[:, 40:56])
    assert np.array_equal(windows[2, 0], mel[:, -16:])  # past the end: the last window


def test_engine_pastes_the_mouth_only_and_passes_faceless_frames(checkpoint: Path) -> None:
    options = LipSyncOptions(engine="wav2lip", model=str(checkpoint), batch_size=8)
    engine = load_lipsyncer(options)
    assert isinstance(engine, Wav2LipSyncer) and engine.device == "cpu"
    frames = talking_head_frames(0.6, FPS)
    frames[7] = np.full_like(frames[0], 90)
    t = np.arange(int(0.6 * SAMPLE_RATE)) / SAMPLE_RATE
    speech = SynthesizedSpeech(
        room="r1", speaker="ana", seq=1, pcm=float_to_pcm16(0.3 * np.sin(2 * np.pi * 150 * t) * np.sin(np.pi * 4 * t))
    )
    result = engine.sync(speech, frames, [i / FPS for i in range(len(frames))])
    print(f"\nwav2lip (random weights, CPU): {result.steps_s}")
    assert len(result.frames) == 15 and result.synced == 14 and np.array_equal(result.frames[7], frames[7])
    [face] = track_faces(frames[:1])
    assert face is not None
    diff = np.abs(result.frames[0].astype(int) - frames[0].astype(int)).max(axis=2)
    eyes = int(face[[EYE_LEFT, EYE_RIGHT], 1].max()) + 2
    assert diff[:eyes].max() == 0  # random weights draw nonsense, but only where the mask lets them
    assert diff[eyes : int(face[CHIN][1]) + 10].max() > 20
