"""Server options: command-line flags, environment, ``.env`` and ``config.json``, validated once.

Every problem found here becomes a :class:`StartupError` carrying one line for the user and
an exit code, so the command line never shows a traceback for a configuration mistake.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sansio import BridgeConfig, CallControl, ConfigError, SafetyRule
from server import handoff, signature
from server.records import store as records_store
from server.records.redact import Redactor, RedactorLoadError, keep, load_redactor
from server.records.webhook import WebhookConfig
from server.routing import Routing, RoutingError, load_routing
from server.twilio_rest import TwilioCredentials
from server.twiml import twiml_fallback

DEFAULT_VOICEMAIL = "Hello, this is a message from our office. Please call us back. Goodbye."
DEFAULT_COALESCE_MS = 0.0  # off: under uvloop it saved nothing measurable (docs/benchmarks.md)
MAX_COALESCE_MS = 20.0  # one Twilio frame's period: a longer nap would hold whole frames back
DEFAULT_AGENT_URL = "wss://agent.deepgram.com/v1/agent/converse"
LOCAL_AGENT = "local"
"""Special ``--agent-url`` value: run the bundled local agent in-process (no key needed)."""

MEDIA_STREAM_PATH = "/media-stream"
WEBHOOK_PATH = "/incoming-call"


class StartupError(Exception):
    """A configuration problem: ``str(exc)`` is the one line to print."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class PublicURL:
    """The externally visible base URL (``--public-url`` / ``PUBLIC_URL``)."""

    scheme: str  # "https" or "http"
    netloc: str  # host[:port], as given
    prefix: str  # "" or "/some/prefix" (no trailing slash)

    @property
    def stream_url(self) -> str:
        """The ``wss://`` URL of the media stream, as written in the TwiML (and signed)."""
        netloc = self.netloc
        if netloc.endswith(":443"):
            netloc = netloc[:-4]
        return f"wss://{netloc}{self.prefix}{MEDIA_STREAM_PATH}"

    def request_url(self, target: str) -> str:
        """The URL Twilio requested for an HTTP ``target`` (path plus query) on this server."""
        return f"{self.scheme}://{self.netloc}{self.prefix}{target}"


@dataclass(frozen=True)
class ServerOptions:
    """Everything the server needs, validated."""

    bridge: BridgeConfig
    host: str = "0.0.0.0"
    port: int = 5000
    agent_url: str = DEFAULT_AGENT_URL
    local_agent: bool = False
    public_url: PublicURL | None = None
    api_key: str = field(default="", repr=False)
    auth_token: str | None = field(default=None, repr=False)
    require_call_token: bool = False
    max_calls: int | None = None
    log_level: str = "INFO"
    certfile: str | None = None
    keyfile: str | None = None
    max_message_bytes: int = 65536
    max_header_bytes: int = 16384
    max_body_bytes: int = 65536
    request_timeout: float = 10.0
    max_write_buffer: int = 262144
    max_agent_message_bytes: int = 1 << 20
    shutdown_grace: float = 10.0
    tool_timeout: float = 10.0
    tools: tuple[str, ...] = ()
    workers: int = 1
    reuse_port: bool = False
    loop: str = "auto"
    coalesce_ms: float = DEFAULT_COALESCE_MS
    log_transcripts: bool = False
    redact: Redactor = field(default=keep, repr=False)
    records: str | None = None
    records_retention_days: float | None = None
    control_token: str | None = field(default=None, repr=False)
    control_timeout: float = 3.0
    twilio: TwilioCredentials | None = None
    fallback_twiml: str | None = None
    dial_timeout: int = 30
    routing: Routing = field(default_factory=Routing)
    max_outbound_per_minute: int = 10
    voicemail_message: str = DEFAULT_VOICEMAIL

    @property
    def handoff_key(self) -> str | None:
        """What signs a transfer's action URL and resume parameters (any instance has it)."""
        twilio = self.twilio
        return self.auth_token or (twilio.api_secret if twilio is not None else None)

    webhook: WebhookConfig | None = None
    record_audio: str | None = None

    @property
    def raw_logs(self) -> bool:
        """Whether DEBUG lines may quote whole messages (agent frames, notices): only with
        --log-transcripts and no --redact, since the hook cannot see inside them."""
        return self.log_transcripts and self.redact is keep

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line."""
        rest = self.twilio.api_secret if self.twilio is not None else None
        webhook_secret = self.webhook.secret if self.webhook is not None else None
        values = (self.api_key, self.auth_token, self.control_token, rest, webhook_secret)
        return tuple(s for s in values if s)


def load_settings_file(path: str) -> dict[str, Any]:
    """Read and check ``config.json`` (the agent ``Settings`` message)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StartupError(f"cannot read config file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(f"cannot read config file {path}: {reason}") from None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StartupError(
            f"invalid config file {path}: not valid JSON ({exc.msg} at line {exc.lineno}"
            f" column {exc.colno})"
        ) from None
    try:
        BridgeConfig(settings=settings)  # runs validate_settings
    except ConfigError as exc:
        raise StartupError(f"invalid config file {path}: field {exc.field}: {exc.reason}") from None
    assert isinstance(settings, dict)
    return settings


def parse_public_url(value: str) -> PublicURL:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise StartupError(
            f"invalid public URL {value!r}: must look like https://host[:port][/prefix]"
        )
    if parts.query or parts.fragment:
        raise StartupError(f"invalid public URL {value!r}: no query string or fragment allowed")
    if "@" in parts.netloc:
        raise StartupError(f"invalid public URL {value!r}: no credentials allowed")
    return PublicURL(parts.scheme, parts.netloc, parts.path.rstrip("/"))


def check_agent_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("wss", "ws") or not parts.hostname:
        raise StartupError(f"invalid agent URL {value!r}: must be wss://host/path (or ws://)")
    return value


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FLAG_OF_FIELD = {
    "chunk_ms": "--chunk-ms",
    "preroll_ms": "--preroll-ms",
    "keepalive_interval": "--keepalive",
    "agent_connect_timeout": "--agent-connect-timeout",
    "settings_timeout": "--settings-timeout",
    "twilio_idle_timeout": "--idle-timeout",
    "close_timeout": "--close-timeout",
    "mark_interval_ms": "--mark-interval-ms",
    "welcome_timeout": "--welcome-timeout",
    "hangup_grace": "--hangup-grace",
    "hangup_timeout": "--hangup-timeout",
    "dtmf_template": "--dtmf-template",
    "targets": "--transfer-target",
    "keypad": "--keypad",
    "safety_rules": "--safety-rules",
    "silence_reprompt": "--silence-reprompt",
    "silence_hangup": "--silence-hangup",
    "max_call_duration": "--max-call-duration",
    "dtmf_terminator": "--dtmf-terminator",
    "dtmf_timeout": "--dtmf-timeout",
}
MAX_TWIML_CHARS = 4000  # what Twilio takes in a call update's Twiml


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """``NAME=VALUE`` flags (repeatable) as a mapping; a repeated name is a mistake."""
    pairs: dict[str, str] = {}
    for item in values or ():
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise StartupError(f"invalid {flag} {item!r}: use NAME=VALUE")
        if name in pairs:
            raise StartupError(f"invalid {flag}: {name} is given twice")
        pairs[name] = value
    return pairs


def load_safety_rules(path: str) -> tuple[SafetyRule, ...]:
    """``--safety-rules FILE``: TOML (``*.toml``) or JSON, ``[[rule]]`` tables each with
    ``name``, ``phrases`` (a list), ``message`` and ``target`` (docs/call-control.md)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read --safety-rules {path}: {exc}") from None
    try:
        if path.endswith(".toml"):
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise StartupError(f"invalid --safety-rules {path}: {exc}") from None
    entries = data.get("rule") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise StartupError(f"invalid --safety-rules {path}: no [[rule]] entries")
    rules = []
    for index, entry in enumerate(entries):
        phrases = entry.get("phrases") if isinstance(entry, dict) else None
        fields = [entry.get(k) for k in ("name", "message", "target")] if phrases else []
        if not isinstance(phrases, list) or not all(isinstance(f, str) for f in fields):
            raise StartupError(
                f"invalid --safety-rules {path}: rule {index} needs name, phrases, message, target"
            )
        name, message, target = fields
        rules.append(SafetyRule(name, tuple(str(p) for p in phrases), message, target))
    return tuple(rules)


def _fallback_twiml(args: Any, targets: dict[str, str]) -> str | None:
    """The TwiML of ``--fallback-target NAME`` (say, then dial) or ``--fallback-twiml FILE``."""
    name = getattr(args, "fallback_target", None)
    path = getattr(args, "fallback_twiml", None)
    if name and path:
        raise StartupError("--fallback-target and --fallback-twiml are alternatives: give one")
    if name:
        if name not in targets:
            raise StartupError(f"invalid --fallback-target {name!r}: not a --transfer-target name")
        return twiml_fallback(targets[name], args.fallback_message, args.dial_timeout)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read --fallback-twiml {path}: {exc}") from None
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise StartupError(f"invalid --fallback-twiml {path}: {exc}") from None
    if root.tag != "Response" or len(text) > MAX_TWIML_CHARS:
        raise StartupError(
            f"invalid --fallback-twiml {path}: a <Response> of {MAX_TWIML_CHARS} characters at most"
        )
    return text


def _call_control(args: Any, twilio: TwilioCredentials | None, key: str | None) -> CallControl:
    targets = _pairs(getattr(args, "transfer_target", None), "--transfer-target")
    rules_path = getattr(args, "safety_rules", None)
    fallback = _fallback_twiml(args, targets)
    try:
        return CallControl(
            targets=targets,
            keypad=_pairs(getattr(args, "keypad", None), "--keypad"),
            safety_rules=load_safety_rules(rules_path) if rules_path else (),
            fallback=twilio is not None and fallback is not None,
            silence_reprompt=args.silence_reprompt,
            silence_hangup=args.silence_hangup,
            reprompt_text=args.reprompt_text,
            max_call_duration=args.max_call_duration,
            dtmf_collect=args.dtmf_collect,
            dtmf_terminator=args.dtmf_terminator,
            dtmf_timeout=args.dtmf_timeout,
            resume=handoff.resume_hook(key) if key else None,
        )
    except ConfigError as exc:
        flag = _FLAG_OF_FIELD.get(exc.field, exc.field)
        raise StartupError(f"invalid {flag}: {exc.reason}") from None


def _json_loads() -> Callable[[str], Any]:
    try:
        import orjson
    except ImportError:  # the optional "fast" extra
        return json.loads
    return orjson.loads


def make_options(args: Any, environ: Mapping[str, str] | None = None) -> ServerOptions:
    """Build :class:`ServerOptions` from parsed flags (an ``argparse.Namespace``) and the env."""
    env = os.environ if environ is None else environ

    agent_url = args.agent_url or env.get("DEEPGRAM_AGENT_URL") or DEFAULT_AGENT_URL
    local_agent = agent_url == LOCAL_AGENT
    if not local_agent:
        check_agent_url(agent_url)

    api_key = env.get("DEEPGRAM_API_KEY", "").strip()
    if not api_key and not local_agent:
        raise StartupError(
            "DEEPGRAM_API_KEY is not set: put it in the environment or in a .env file"
            " (or use --agent-url local for a connectivity check)"
        )
    auth_token = env.get("TWILIO_AUTH_TOKEN", "").strip() or None
    admit = None
    if args.require_call_token:
        if not auth_token:
            raise StartupError(
                "--require-call-token needs TWILIO_AUTH_TOKEN: the tokens are signed with it"
            )
        admit = signature.call_token_admitter(auth_token)

    public = args.public_url or env.get("PUBLIC_URL") or None
    public_url = parse_public_url(public) if public else None

    if bool(args.certfile) != bool(args.keyfile):
        raise StartupError("--certfile and --keyfile must be given together")
    for name in ("certfile", "keyfile"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise StartupError(f"cannot read --{name} {path}: no such file")

    if args.workers > 1 and args.port == 0:
        raise StartupError("--workers needs a fixed --port (port 0 would differ per worker)")

    notice = getattr(args, "recording_notice", None)

    def load_agent(path: str) -> dict[str, Any]:
        settings = load_settings_file(path)
        if notice:  # the greeting is the first thing the caller hears
            agent = settings.setdefault("agent", {})
            agent["greeting"] = f"{notice.strip()} {agent.get('greeting', '')}".strip()
        return settings

    settings = load_agent(args.config)
    try:
        twilio = TwilioCredentials.from_env(env)
    except ValueError as exc:
        raise StartupError(f"invalid Twilio REST credentials: {exc}") from None
    key = auth_token or (twilio.api_secret if twilio is not None else None)
    try:
        routing = load_routing(_pairs(getattr(args, "route", None), "--route"), key, load_agent)
    except RoutingError as exc:
        raise StartupError(str(exc)) from None
    control = _call_control(args, twilio, key)
    if control.targets and public_url is None:
        raise StartupError(
            "--transfer-target needs --public-url (or PUBLIC_URL): a transfer's <Dial action>,"
            " which brings the caller back after no answer, must be a URL Twilio can reach"
        )
    try:
        bridge = BridgeConfig(
            settings=settings,
            chunk_ms=args.chunk_ms,
            preroll_ms=args.preroll_ms,
            preroll_policy=args.preroll_policy,
            agent_retries=args.agent_retries,
            keepalive_interval=args.keepalive,
            agent_connect_timeout=args.agent_connect_timeout,
            settings_timeout=args.settings_timeout,
            twilio_idle_timeout=args.idle_timeout,
            close_timeout=args.close_timeout,
            mark_interval_ms=args.mark_interval_ms,
            welcome_timeout=args.welcome_timeout,
            hangup_grace=args.hangup_grace,
            hangup_timeout=args.hangup_timeout,
            dtmf_template=args.dtmf_template,
            json_loads=_json_loads(),
            admit=admit,
            choose_settings=routing.choose,
            control=control,
        )
    except ConfigError as exc:
        flag = _FLAG_OF_FIELD.get(exc.field, exc.field)
        raise StartupError(f"invalid {flag}: {exc.reason}") from None

    try:
        redact = load_redactor(getattr(args, "redact", None))
    except RedactorLoadError as exc:
        raise StartupError(str(exc)) from None
    records = getattr(args, "records", None)
    if records is None:  # BRIDGE_RECORDS is the flag's environment twin
        records = env.get("BRIDGE_RECORDS") or records_store.DEFAULT_RECORDS
    if records.lower() == "none":
        records = None

    webhook = _webhook(args, env, records)
    record_audio = getattr(args, "record_audio", None)
    if record_audio and not Path(record_audio).is_dir():
        raise StartupError(f"cannot record to --record-audio {record_audio}: no such directory")

    return ServerOptions(
        bridge=bridge,
        host=args.host,
        port=args.port,
        agent_url=agent_url,
        local_agent=local_agent,
        public_url=public_url,
        api_key=api_key,
        auth_token=auth_token,
        require_call_token=admit is not None,
        max_calls=args.max_calls or None,
        log_level=args.log_level,
        certfile=args.certfile,
        keyfile=args.keyfile,
        max_message_bytes=args.max_message_bytes,
        max_header_bytes=args.max_header_bytes,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        control_timeout=args.control_timeout,
        max_write_buffer=args.max_write_buffer,
        max_agent_message_bytes=args.max_agent_message_bytes,
        shutdown_grace=args.shutdown_grace,
        tool_timeout=args.tool_timeout,
        tools=tuple(args.tools or ()),
        workers=args.workers,
        reuse_port=bool(getattr(args, "reuse_port", False)),
        loop=args.loop,
        coalesce_ms=args.coalesce_ms,
        log_transcripts=bool(getattr(args, "log_transcripts", False)),
        redact=redact,
        records=records,
        records_retention_days=getattr(args, "records_retention_days", None),
        control_token=env.get("BRIDGE_CONTROL_TOKEN", "").strip() or None,
        twilio=twilio,
        fallback_twiml=_fallback_twiml(args, dict(control.targets)),
        dial_timeout=args.dial_timeout,
        routing=routing,
        max_outbound_per_minute=args.max_outbound_per_minute,
        voicemail_message=args.voicemail_message,
        webhook=webhook,
        record_audio=record_audio or None,
    )


def _webhook(args: Any, env: Mapping[str, str], records: str | None) -> WebhookConfig | None:
    url = getattr(args, "webhook_url", None)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise StartupError(f"invalid --webhook-url {url!r}: must be https://host/path (or http://)")
    secret = env.get("BRIDGE_WEBHOOK_SECRET", "").strip()
    if not secret:
        raise StartupError(
            "--webhook-url needs BRIDGE_WEBHOOK_SECRET: every webhook is signed with it"
        )
    if records is None:
        raise StartupError("--webhook-url needs --records: its outbox is in the records database")
    return WebhookConfig(
        url=url,
        secret=secret,
        timeout=args.webhook_timeout,
        max_attempts=args.webhook_max_attempts,
        max_age=args.webhook_max_age,
        backoff=args.webhook_backoff,
    )
