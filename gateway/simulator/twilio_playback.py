"""Twilio's playback model, kept here for its importers; it lives in :mod:`gateway.core.twilio_playback` so the
call recorder (gateway.core.recording) plays the gateway's audio through the very model the caller emulator uses."""

from gateway.core.twilio_playback import UNDERRUN_GAP_MAX_MS, MarkEcho, Played, PlayoutGap, TwilioPlayback

__all__ = ["UNDERRUN_GAP_MAX_MS", "MarkEcho", "Played", "PlayoutGap", "TwilioPlayback"]
