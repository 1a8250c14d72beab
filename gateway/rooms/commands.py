"""What a page may ask over its events socket, each field checked by type before anything uses it.

A frame is a JSON object whose `type` names one of COMMANDS; the command's fields, and no others, follow
with the types listed: `bool`, `str`, or a tuple of the strings allowed. Anything else is refused with a
BadCommand naming the field, which the page receives as an error event with status 400 (or 403 for what
only a host may ask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import validation

FieldRule = type | tuple[str, ...]
COMMANDS: dict[str, dict[str, FieldRule]] = {
    "mute": {"muted": bool},
    "camera": {"on": bool},
    "floor": {"action": ("request", "release")},
    "leave": {},
    "remove": {"participant": str},  # a host only: the participant's id, from the roster
    "end": {},  # a host only: the meeting, for everyone
    "transcript": {"on": bool},  # the meeting's transcript on or off (gateway/rooms/transcript.py)
}
HOST_COMMANDS = frozenset({"remove", "end"})
MAX_ID_CHARS = 64


class BadCommand(ValueError):
    """A frame the gateway will not act on; `field` names the culprit (None: the frame as a whole)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status

    def event(self) -> dict[str, Any]:
        """The error event the page gets."""
        return {"type": "error", "status": self.status, "field": self.field, "error": str(self)}


@dataclass(frozen=True)
class Command:
    kind: str
    fields: dict[str, Any]


def parse(text: str) -> Command:
    try:
        message = validation.json_object(text.encode(errors="surrogatepass"))  # strict: depth-bounded, an object
    except validation.InvalidInput as exc:
        raise BadCommand(str(exc)) from exc
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in COMMANDS:
        raise BadCommand(f"'type' must be one of {', '.join(COMMANDS)}", "type")
    rules = COMMANDS[kind]
    extra = sorted(set(message) - set(rules) - {"type"})
    if extra:
        raise BadCommand(f"{kind!r} takes no field {shown(extra[0])}", extra[0])
    return Command(kind, {name: _checked(message.get(name), name, rule) for name, rule in rules.items()})


def _checked(value: Any, name: str, rule: FieldRule) -> Any:
    if rule is bool and not isinstance(value, bool):
        raise BadCommand(f"{name!r} must be true or false, not {shown(value)}", name)
    if rule is str and not (isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS):
        raise BadCommand(f"{name!r} must be a string of 1 to {MAX_ID_CHARS} characters, not {shown(value)}", name)
    if isinstance(rule, tuple) and not (isinstance(value, str) and value in rule):
        raise BadCommand(f"{name!r} must be one of {', '.join(rule)}, not {shown(value)}", name)
    return value


def shown(value: Any) -> str:
    """A refused value as an error (and the log) quotes it: a string's first characters, else its JSON type."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), "a value")
