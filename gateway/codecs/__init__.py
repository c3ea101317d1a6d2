"""Pure DSP for the telephone audio path: G.711, WAV chunks, framing, streaming resamplers, transcoders."""

from gateway.codecs.framing import FRAME_MS, TWILIO_RATE_HZ, ULAW_FRAME_BYTES, Framer
from gateway.codecs.g711 import ULAW_SILENCE_BYTE, pcm16_to_ulaw, ulaw_silence, ulaw_to_pcm16
from gateway.codecs.transcode import InboundTranscoder, OutboundTranscoder
from gateway.codecs.wav import WavAudio, read_wav, write_wav

__all__ = [
    "FRAME_MS",
    "TWILIO_RATE_HZ",
    "ULAW_FRAME_BYTES",
    "ULAW_SILENCE_BYTE",
    "Framer",
    "InboundTranscoder",
    "OutboundTranscoder",
    "WavAudio",
    "pcm16_to_ulaw",
    "read_wav",
    "ulaw_silence",
    "ulaw_to_pcm16",
    "write_wav",
]
