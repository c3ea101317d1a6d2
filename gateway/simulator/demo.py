"""`gateway demo`: a whole phone call, offline, through the real gateway.

One process on loopback runs the EVI-compatible agent, the gateway (with a generated Twilio auth token, so
signatures are enforced exactly as in production) and the Twilio caller emulator, which says the bundled
caller lines: a greeting is answered, a question asked, a long story interrupted (barge-in), and a goodbye
ends the call through the agent's ``hang_up`` tool. Everything is measured at the caller's ear on Twilio's
media clock. Writes a stereo WAV (left: the caller, right: what the caller heard) and a JSONL transcript.
The story of the call goes to stdout; log lines go to ``demo.log`` beside them (and, with ``-v``, to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.codecs.levels import loud_ulaw_samples
from gateway.errors import ConfigError, GatewayError
from gateway.logs import EscapeUntrusted, RedactSecrets
from gateway.simulator.agent import AgentConfig
from gateway.simulator.caller import CallerConfig, TwilioCaller
from gateway.simulator.evi import EviSimulator
from gateway.simulator.harness import running_gateway
from gateway.simulator.make_demo_audio import DEMO_CALLER_DIR
from gateway.simulator.recording import load_recording, write_stereo_wav

SPEECH_THRESHOLD = 300  # linear16 level counted as speech in what the caller hears or says
REPLY_TIMEOUT_S = 12.0
AGENT_DONE_SILENCE_MS = 700.0
BARGE_IN_AFTER_MS = 2000.0  # the caller talks over the story this long after it starts
MAX_YIELD_MS = 2500.0  # EVI interrupts after min_interruption_ms (800) of caller speech, plus detection
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@dataclass(frozen=True, slots=True)
class DemoLine:
    """One thing the caller says, and how."""

    file: str
    text: str
    barge_in: bool = False


@dataclass
class TurnResult:
    """What happened in one caller turn, on the media clock (ms)."""

    caller_said: str
    agent_heard: str | None = None
    agent_answered: str | None = None
    speech_start_ms: float | None = None
    speech_end_ms: float | None = None
    reply_start_ms: float | None = None
    response_latency_ms: float | None = None
    barge_in_yield_ms: float | None = None
    interrupted: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    """The whole call."""

    turns: list[TurnResult]
    greeting: str | None
    ended_by: str | None
    goodbye_heard_ms: float | None
    protocol_violations: list[str]
    voice: str
    problems: list[str]
    caller_ulaw: bytes = b""
    heard_ulaw: bytes = b""
    agent_history: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the call worked end to end."""
        return not self.problems and not any(t.problems for t in self.turns)


def demo_lines(folder: Path = DEMO_CALLER_DIR) -> list[DemoLine]:
    """The bundled caller lines (``lines.txt``: file<TAB>text); the fourth talks over the agent."""
    lines = []
    for raw in (folder / "lines.txt").read_text(encoding="utf-8").splitlines():
        if raw.strip():
            name, text = raw.split("\t", 1)
            lines.append(DemoLine(name, text, barge_in="interrupt" in name))
    return lines


def _loud_span_ms(ulaw: bytes) -> tuple[float, float]:
    """Offsets (ms) of the first and last loud sample in a caller clip."""
    loud = loud_ulaw_samples(ulaw, SPEECH_THRESHOLD)
    if loud.size == 0:
        return 0.0, len(ulaw) / 8
    return float(loud[0]) / 8, float(loud[-1] + 1) / 8


class DemoCall:
    """Drives the caller through the demo lines and measures each turn."""

    def __init__(self, caller: TwilioCaller, lines: list[DemoLine]):
        self.caller = caller
        self.lines = lines
        self.turns: list[TurnResult] = []

    async def say(self, line: DemoLine) -> TurnResult:
        """Queue one line; return its turn with the media times of its speech."""
        ulaw = load_recording(DEMO_CALLER_DIR / line.file)
        rec = self.caller.record
        self.caller.speak(ulaw)
        await self.caller.wait_for(lambda r: len(r.caller_utterances) > len(self.turns), 5)
        start_ms = rec.caller_utterances[-1].start_ms
        loud_from, loud_to = _loud_span_ms(ulaw)
        turn = TurnResult(line.text, speech_start_ms=start_ms + loud_from, speech_end_ms=start_ms + loud_to)
        self.turns.append(turn)
        await self.caller.wait_spoken(len(ulaw) / 8000 + 5)
        return turn

    async def await_reply(self, turn: TurnResult, *, until_done: bool = True) -> None:
        """Wait for the agent to answer ``turn`` (and, by default, to finish); record the latency."""
        if turn.speech_end_ms is None:
            return
        segment = await self.caller.wait_agent_speaking(REPLY_TIMEOUT_S, since_ms=turn.speech_end_ms)
        if segment is None or segment.start_ms < turn.speech_end_ms:
            turn.problems.append("no reply heard")
            return
        turn.reply_start_ms = segment.start_ms
        turn.response_latency_ms = segment.start_ms - turn.speech_end_ms
        if until_done:
            await self.caller.wait_agent_silent(AGENT_DONE_SILENCE_MS, REPLY_TIMEOUT_S * 3)

    async def barge_in(self, line: DemoLine) -> TurnResult:
        """Talk over the agent's current reply; record how fast its voice stopped."""
        rec = self.caller.record
        speaking = await self.caller.wait_agent_speaking(REPLY_TIMEOUT_S)
        if speaking is None:
            turn = TurnResult(line.text, problems=["the agent was not speaking to be interrupted"])
            self.turns.append(turn)
            return turn
        await self.caller.wait_for(lambda r: r.media_time_ms >= speaking.start_ms + BARGE_IN_AFTER_MS, 10)
        turn = await self.say(line)
        assert turn.speech_start_ms is not None
        barge_ms = turn.speech_start_ms
        over = next((s for s in rec.agent_speech_segments if s.start_ms <= barge_ms < s.end_ms + 120), None)
        await self.caller.wait_for(lambda r: r.agent_quiet_ms >= 300 or r.media_time_ms > barge_ms + 5000, 10)
        if over is not None:
            stopped = next(s for s in rec.agent_speech_segments if s.start_ms == over.start_ms)
            turn.barge_in_yield_ms = max(0.0, stopped.end_ms - barge_ms)
        if turn.barge_in_yield_ms is None or turn.barge_in_yield_ms > MAX_YIELD_MS:
            turn.problems.append("the agent's voice did not stop when talked over")
        if not rec.clears:
            turn.problems.append("the gateway sent no clear")
        return turn

    async def run(self) -> None:
        """The whole conversation, line by line."""
        await self.caller.wait_agent_speaking(REPLY_TIMEOUT_S)
        await self.caller.wait_agent_silent(AGENT_DONE_SILENCE_MS, REPLY_TIMEOUT_S * 2)
        for index, line in enumerate(self.lines):
            turn = await (self.barge_in(line) if line.barge_in else self.say(line))
            if index == len(self.lines) - 1:
                return  # the goodbye: the agent answers and hangs up; the caller listens to the end
            interrupt_next = self.lines[index + 1].barge_in
            await self.await_reply(turn, until_done=not interrupt_next)


def _pair_history(history: list[tuple[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
    """The agent's own record split into its greeting and (what it heard, what it said) per caller turn."""
    greeting: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for role, text in history:
        if role == "user":
            turns.append((text, []))
        elif role == "assistant":
            (turns[-1][1] if turns else greeting).append(text)
    return " ".join(greeting) or None, [(heard, " ".join(said)) for heard, said in turns]


async def run_demo(
    *,
    voice: str = "auto",
    lines: list[DemoLine] | None = None,
    log: Callable[[str], None] = print,
    timeout_s: float = 55.0,
) -> DemoResult:
    """Run the demo call; never raises for a call that misbehaves (see ``DemoResult.problems``)."""
    lines = lines or demo_lines()
    config = AgentConfig(
        synthesizer="tones" if voice == "tones" else "auto",
        recognizer="duration" if voice == "tones" else "auto",
        inactivity_timeout_s=None,
    )
    problems: list[str] = []
    async with EviSimulator(agent_config=config) as sim, running_gateway(sim.url) as gw:
        agent = sim.voice_agent
        assert agent is not None
        await agent.prepare()
        voice_name = f"{agent.synthesizer.name if agent.synthesizer else '-'} / {agent.recognizer.name}"
        log(f"agent voice: {voice_name}")
        if not agent.recognizer.real:
            log(
                "warning: the agent has no speech recognition, so it cannot follow the demo's script "
                "(story, barge-in, goodbye); install the 'voice' extra: pip install -e '.[voice]'"
            )
        log(f"gateway on {gw.base_url} (Twilio signatures enforced), EVI agent on {sim.url}")
        caller_config = CallerConfig(
            webhook_url=gw.webhook_url,
            auth_token=gw.auth_token,
            hangup_after_ms=int(timeout_s * 1000),
            speech_threshold=SPEECH_THRESHOLD,
        )
        async with TwilioCaller(caller_config) as caller:
            await caller.dial()
            call = DemoCall(caller, lines)
            try:
                await asyncio.wait_for(call.run(), timeout_s)
                if not await caller.wait_closed(REPLY_TIMEOUT_S * 2):
                    problems.append("the call did not end after the goodbye")
            except TimeoutError:
                problems.append(f"the demo did not finish within {timeout_s:g} s")
            record = caller.record
            if caller.is_closed is False:
                await caller.hang_up()
        session = sim.sessions[0] if sim.sessions else None
        history = agent.conversations[session.chat_group_id].history if session else []
    greeting, pairs = _pair_history(history)
    for turn, (heard, said) in zip(call.turns, pairs, strict=False):
        turn.agent_heard, turn.agent_answered = heard, said
    for turn, following in zip(call.turns, call.turns[1:], strict=False):
        if following.barge_in_yield_ms is not None:
            turn.interrupted = True
    goodbye = call.turns[-1] if call.turns else None
    goodbye_heard_ms = None
    if goodbye is not None and goodbye.speech_end_ms is not None:
        after = [s for s in record.agent_speech_segments if s.start_ms >= goodbye.speech_end_ms]
        if after:
            goodbye.reply_start_ms = after[0].start_ms
            goodbye.response_latency_ms = after[0].start_ms - goodbye.speech_end_ms
            goodbye_heard_ms = after[-1].end_ms - after[0].start_ms
        else:
            goodbye.problems.append("no goodbye heard")
    ended_by = record.closed_by
    if ended_by != "gateway":
        problems.append("the call was not ended by the gateway after the agent hung up")
    if record.protocol_violations:
        problems.append(f"{len(record.protocol_violations)} Twilio protocol violations")
    return DemoResult(
        turns=call.turns,
        greeting=greeting,
        ended_by=ended_by,
        goodbye_heard_ms=goodbye_heard_ms,
        protocol_violations=list(record.protocol_violations),
        voice=voice_name,
        problems=problems,
        caller_ulaw=bytes(record.sent_ulaw),
        heard_ulaw=bytes(record.heard_ulaw),
        agent_history=history,
    )


def write_outputs(result: DemoResult, out_dir: Path) -> tuple[Path, Path]:
    """``demo.wav`` (left: the caller, right: what the caller heard) and ``demo.jsonl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path, transcript_path = out_dir / "demo.wav", out_dir / "demo.jsonl"
    write_stereo_wav(wav_path, result.caller_ulaw, result.heard_ulaw)
    with transcript_path.open("w", encoding="utf-8") as out:
        if result.greeting:
            out.write(json.dumps({"event": "greeting", "agent": result.greeting}) + "\n")
        for number, turn in enumerate(result.turns, 1):
            out.write(json.dumps({"event": "turn", "turn": number, **asdict(turn)}) + "\n")
        for role, text in result.agent_history:
            out.write(json.dumps({"event": "agent_history", "role": role, "text": text}) + "\n")
        skip = ("turns", "caller_ulaw", "heard_ulaw", "agent_history")
        summary = {k: v for k, v in asdict(result).items() if k not in skip}
        out.write(json.dumps({"event": "call", **summary, "ok": result.ok}) + "\n")
    return wav_path, transcript_path


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def print_result(result: DemoResult, log: Callable[[str], None] = print) -> None:
    """The per-turn summary a person reads."""
    if result.greeting:
        log(f'agent greets:   "{result.greeting}"')
    for number, turn in enumerate(result.turns, 1):
        log(f"turn {number}")
        log(f'  caller said:  "{turn.caller_said}"')
        log(f'  agent heard:  "{turn.agent_heard}"')
        said = turn.agent_answered or ""
        said = said if len(said) <= 90 else said[:87] + "..."
        log(f'  agent said:   "{said}"' + ("  (interrupted by the caller)" if turn.interrupted else ""))
        log(f"  response latency at the caller's ear: {_ms(turn.response_latency_ms)} (end of speech to first audio)")
        if turn.barge_in_yield_ms is not None:
            log(f"  barge-in: agent voice stopped {_ms(turn.barge_in_yield_ms)} after the caller started talking")
        for problem in turn.problems:
            log(f"  PROBLEM: {problem}")
    log(f"goodbye heard: {_ms(result.goodbye_heard_ms)}; call ended by the {result.ended_by or 'nobody'}")
    for problem in result.problems:
        log(f"PROBLEM: {problem}")
    log("demo " + ("OK" if result.ok else "FAILED"))


@contextmanager
def logs_to(path: Path, *, verbose: bool = False, level: int | str = logging.INFO) -> Iterator[None]:
    """Inside the block, log records at ``level`` and above go to ``path`` only (with ``verbose``, to stderr
    as well), through the gateway's own filters: every value from a peer escaped and capped, then secrets
    redacted (operations.md §3, as ``configure_logging`` installs them); the logging set-up before it is
    restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="w", encoding="utf-8")]
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(EscapeUntrusted())
        handler.addFilter(RedactSecrets())
    for handler in saved_handlers:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)


def main(argv: Sequence[str] | None = None, *, log_level: int | str = logging.INFO) -> int:
    """``gateway demo``: 0 if the call worked, 1 if it did not, 2 on a configuration error."""
    parser = argparse.ArgumentParser(prog="gateway demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="demo-output", help="folder for demo.wav, demo.jsonl and demo.log")
    parser.add_argument(
        "--voice", choices=["auto", "tones"], default="auto", help="tones: no speech backends, even if installed"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the log on stderr too, not only in demo.log")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "demo.log"
    try:
        with logs_to(log_path, verbose=args.verbose, level=log_level):
            result = asyncio.run(run_demo(voice=args.voice))
    except (ConfigError, GatewayError) as exc:
        print(f"gateway demo: {exc} (log: {log_path})", file=sys.stderr)
        return 2
    print_result(result)
    wav_path, transcript_path = write_outputs(result, out_dir)
    print(f"wrote {wav_path} (left: caller, right: what the caller heard), {transcript_path} and the log {log_path}")
    return 0 if result.ok else 1
