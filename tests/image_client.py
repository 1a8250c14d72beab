"""The participants of `make image-test` (.ci/image/test), run in a container of the babelroom:cpu image on the
compose network, so their media stays in the containers' network namespaces: an aiortc speaker says one English
sentence (the bundled Piper voice) into a room, and an aiortc listener who hears Spanish waits for its translated
caption and the translated speech. Prints what the listener got as JSON; exits 1 without a translated caption.

    python -m tests.image_client http://gateway:8080   (BABELROOM_TOKEN_SECRET: the gateway's)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from benchmarks.latency import ScriptedSpeaker, corpus
from benchmarks.participant import ScriptedParticipant
from gateway.web.tokens import issue_token

ROOM = "image-test"
SENTENCE = "Please send me the report after lunch."
LEAD_S = 4.0  # silence before speech: the listener subscribes to the translated feed meanwhile
CAPTION_TIMEOUT_S = 90.0  # the models run in containers on a shared CPU
FEED_TIMEOUT_S = 30.0


async def one_translated_caption(base_url: str, secret: str) -> dict[str, Any]:
    (utterance,) = corpus(en_es=(SENTENCE,), es_en=())
    voice = ScriptedSpeaker([utterance], lead_s=LEAD_S)
    listener = ScriptedParticipant(base_url, ROOM, "Listener", utterance.target, utterance.target)
    speaker = ScriptedParticipant(base_url, ROOM, "Speaker", utterance.language, utterance.language)
    started = time.monotonic()
    try:
        quiet = ScriptedSpeaker((), lead_s=voice.duration_s + CAPTION_TIMEOUT_S).track()
        await listener.join(quiet, token=issue_token(secret, ROOM, listener.name))
        await speaker.join(voice.track(), token=issue_token(secret, ROOM, speaker.name))
        await listener.listen_to_translation(FEED_TIMEOUT_S)
        captions = await listener.wait_for(
            lambda: listener.captions(final=True, lang=utterance.target), "a translated caption", CAPTION_TIMEOUT_S
        )
        await asyncio.sleep(3.0)  # the translated speech plays after its caption
    finally:
        await speaker.close()
        await listener.close()
    caption = captions[0]
    shown_at = listener.message_times[listener.messages.index(caption)]
    return {
        "said": SENTENCE,
        "caption": caption,
        "caption_after_end_of_speech_s": round(shown_at - (voice.spoken[0].end_at or shown_at), 2),
        "translated_speech_peak_rms": round(listener.translated_peak, 3),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    if len(sys.argv) != 2 or not os.environ.get("BABELROOM_TOKEN_SECRET"):
        print(__doc__, file=sys.stderr)
        return 2
    result = asyncio.run(one_translated_caption(sys.argv[1], os.environ["BABELROOM_TOKEN_SECRET"]))
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0 if result["caption"]["text"] else 1


if __name__ == "__main__":
    sys.exit(main())
