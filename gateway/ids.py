"""Distinct types for identifiers, so a call SID cannot be passed where a stream SID is expected."""

from typing import NewType

StreamSid = NewType("StreamSid", str)
CallSid = NewType("CallSid", str)
AccountSid = NewType("AccountSid", str)
ResponseId = NewType("ResponseId", str)
MarkName = NewType("MarkName", str)
