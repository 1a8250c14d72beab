"""Lip-sync behind one protocol: `LipSyncer.sync(speech, frames, times_s) -> SyncedFrames`. One module each:

- `base`: the protocol, `LipSyncOptions` and the output timeline every engine shares;
- `face`: FaceMesh landmarks (mediapipe), the face's geometry for both engines and the sync metric;
- `visemes`: phonemes to mouth shapes, for the CPU engine and the sync metric;
- `mouthwarp`: `MouthWarpLipSyncer`, the CPU default (no learned weights);
- `wav2lip`: `Wav2LipSyncer`, the Wav2Lip-96 network on torch (your own weights);
- `registry`: `load_lipsyncer`, the configured engine (nothing in this package imports it).

Engines import `base`, `face`, `visemes` and `workers.engines.common`, never each other.
"""
