"""Hypothesis strategies for the frames of a participant's two sockets, generated from their schemas: the Janus
proxy's (gateway/web/proxy.py: REQUEST_FIELDS, PLUGIN_FIELDS) and the events socket's (gateway/rooms/commands.py:
COMMANDS). Each schema-derived frame is well formed but for one field of the wrong JSON type, and comes with that
field's name, which the refusal must name. `json_values` is any JSON at all, for frames with no schema behind them.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from gateway.rooms.commands import COMMANDS
from gateway.web.proxy import PLUGIN_FIELDS, REQUEST_FIELDS, SESSION_REQUESTS, Obj, Objs

MAX_ID = 2**53 - 1
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def follows(value: Any, rule: Any) -> bool:
    """Whether `value` has the JSON type `rule` asks at its top (what a wrong value must not have)."""
    if isinstance(rule, Obj) or rule is dict:
        return isinstance(value, dict)
    if isinstance(rule, Objs):
        return isinstance(value, list)
    if isinstance(rule, tuple):
        return isinstance(value, str)
    return isinstance(value, rule) and not (rule is int and isinstance(value, bool))


def wrong_for(rule: Any) -> st.SearchStrategy[Any]:
    return json_values.filter(lambda value: not follows(value, rule))


def broken(frame: dict[str, Any], path: list[str | int], rule: Any) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    """`frame` with the field at `path` replaced by a value of the wrong type, and the field's name as the
    proxy spells it (`body.streams[0].feed`)."""

    def put(value: Any) -> tuple[dict[str, Any], str]:
        copy: Any = _deep_copy(frame)
        node = copy
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
        return copy, _name(path)

    return wrong_for(rule).map(put)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _name(path: list[str | int]) -> str:
    name = ""
    for step in path:
        name += f"[{step}]" if isinstance(step, int) else (f".{step}" if name else step)
    return name


@st.composite
def proxy_frames(draw: st.DrawFn, session: int, handle: int) -> tuple[dict[str, Any], str]:
    """A Janus request on the participant's own session and handle, one field of it of the wrong type."""
    kind = draw(st.sampled_from(sorted(SESSION_REQUESTS)))
    frame: dict[str, Any] = {"janus": kind, "transaction": "t", "session_id": session, "handle_id": handle}
    request = draw(st.sampled_from(sorted(PLUGIN_FIELDS)))
    if kind == "message":
        frame["body"] = {"request": request}
    places: list[tuple[list[str | int], Any]] = [([key], rule) for key, rule in REQUEST_FIELDS.items()]
    if kind == "message":
        places += [(["body", key], rule) for key, rule in PLUGIN_FIELDS[request].items() if key != "request"]
        places += [(["body", "request"], str)]
        for key, rule in PLUGIN_FIELDS[request].items():
            if isinstance(rule, Objs):  # one entry of a list of objects, with one field wrong
                frame["body"][key] = [{}]
                places += [(["body", key, 0, field], inner) for field, inner in rule.fields.items()]
                break
    place, rule = draw(st.sampled_from(places))
    return draw(broken(frame, place, rule))


@st.composite
def command_frames(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """An events-socket frame naming a command, one of its fields (or `type`) of the wrong type."""
    kind = draw(st.sampled_from(sorted(COMMANDS)))
    fields = COMMANDS[kind]
    places: list[tuple[list[str | int], Any]] = [(["type"], str)]
    places += [([key], rule) for key, rule in fields.items()]
    place, rule = draw(st.sampled_from(places))
    return draw(broken({"type": kind}, place, rule))
