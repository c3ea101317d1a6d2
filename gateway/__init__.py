"""Telephony gateway: Twilio Media Streams phone calls bridged to Hume's Empathic Voice Interface."""

__version__ = "0.1.0"
