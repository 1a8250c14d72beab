"""The configured lip-sync engine. Nothing inside the engines imports this module: it imports them, each only
when chosen."""

from __future__ import annotations

from workers.engines.lipsync.base import WAV2LIP, LipSyncer, LipSyncOptions


def load_lipsyncer(options: LipSyncOptions) -> LipSyncer:
    if options.engine == WAV2LIP:
        from workers.engines.lipsync.wav2lip import Wav2LipSyncer

        return Wav2LipSyncer(options)
    from workers.engines.lipsync.mouthwarp import MouthWarpLipSyncer

    return MouthWarpLipSyncer(options)
