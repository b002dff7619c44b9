"""YAML read as parser events: nodes composed one piece at a time, and the key a syntax error is in.

`yaml.compose` builds the node of the whole file before anything is checked: at a million watched
addresses that is millions of node objects alive at once. Reading events lets the address loader keep one
list item at a time. The composer here builds the same nodes PyYAML's would (tags resolved by the same
resolver, anchors shared across items) without recursion, so nesting depth costs no C stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingStartEvent,
    ScalarEvent,
    SequenceStartEvent,
    StreamStartEvent,
)

from watcher.errors import NestingError


class Resolver(Protocol):
    def resolve(self, kind: type[yaml.Node], value: Any, implicit: Any) -> str: ...


# The stubs type marks as yaml.error.Mark, but libyaml's events carry yaml._yaml.Mark (same fields):
# events are handled as Any below.


def line_of(event: Any) -> int:
    return int(event.start_mark.line) + 1


def column_of(event: Any) -> int:
    return int(event.start_mark.column)


def document_root(events: Iterator[Event]) -> Event | None:
    """Skip the stream's and the document's start; the first event of the root node, None when empty."""
    for event in events:
        if isinstance(event, (StreamStartEvent, DocumentStartEvent)):
            continue
        return None if isinstance(event, (yaml.StreamEndEvent, DocumentEndEvent)) else event
    return None


def single_document_end(events: Iterator[Event], root: Any) -> None:
    """Consume the end of the document; a second document is an error, as yaml.compose makes it."""
    for event in events:
        if isinstance(event, DocumentStartEvent):
            second: Any = event
            raise ComposerError(
                "expected a single document in the stream", root.start_mark, "but found another document",
                second.start_mark,
            )  # fmt: skip


def subtree(first: Event, events: Iterator[Event], depth: int, max_depth: int, file: str) -> list[Event]:
    """The events of the node that starts with `first`, through its end. `depth`: levels open above it;
    deeper than `max_depth` is a NestingError naming `file`."""
    found = [first]
    if not isinstance(first, CollectionStartEvent):
        return found
    level = 1
    if depth + level > max_depth:
        raise NestingError(file, line_of(first), max_depth)
    for event in events:
        found.append(event)
        if isinstance(event, CollectionStartEvent):
            level += 1
            if depth + level > max_depth:
                raise NestingError(file, line_of(event), max_depth)
        elif isinstance(event, CollectionEndEvent):
            level -= 1
            if level == 0:
                break
    return found


def compose(events: Iterable[Event], resolver: Resolver, anchors: dict[str, yaml.Node]) -> yaml.Node:
    """The node of one whole subtree of events, as PyYAML's composer builds it. `anchors` is shared by
    every call on one file: an alias may name an anchor of an earlier item."""
    open_nodes: list[yaml.CollectionNode] = []
    pending_keys: list[yaml.Node | None] = []
    root: yaml.Node | None = None
    for event in events:
        if isinstance(event, CollectionEndEvent):
            open_nodes.pop().end_mark = event.end_mark
            pending_keys.pop()
            continue
        node = start_node(event, resolver, anchors)
        if not open_nodes:
            root = node
        elif isinstance(open_nodes[-1], yaml.MappingNode):
            key = pending_keys[-1]
            if key is None:
                pending_keys[-1] = node
            else:
                open_nodes[-1].value.append((key, node))
                pending_keys[-1] = None
        else:
            open_nodes[-1].value.append(node)
        if isinstance(node, yaml.CollectionNode) and not isinstance(event, AliasEvent):
            open_nodes.append(node)
            pending_keys.append(None)
    if root is None:
        raise ValueError("compose() needs the events of one node")
    return root


def start_node(event: Event, resolver: Resolver, anchors: dict[str, yaml.Node]) -> yaml.Node:
    """The node an event starts (a collection's without its content yet); an alias's anchored node."""
    e: Any = event
    if isinstance(event, AliasEvent):
        found = anchors.get(e.anchor)
        if found is None:
            raise ComposerError(None, None, f"found undefined alias {e.anchor!r}", e.start_mark)
        return found
    anchor = e.anchor
    if anchor is not None and anchor in anchors:
        raise ComposerError(
            f"found duplicate anchor {anchor!r}; first occurrence", anchors[anchor].start_mark,
            "second occurrence", e.start_mark,
        )  # fmt: skip
    kind: type[yaml.Node]
    if isinstance(event, ScalarEvent):
        kind = yaml.ScalarNode
    elif isinstance(event, SequenceStartEvent):
        kind = yaml.SequenceNode
    elif isinstance(event, MappingStartEvent):
        kind = yaml.MappingNode
    else:
        raise ValueError(f"not the start of a node: {event!r}")
    value = e.value if kind is yaml.ScalarNode else None
    tag = e.tag
    if tag is None or tag == "!":
        tag = resolver.resolve(kind, value, e.implicit)
    node: yaml.Node
    if kind is yaml.ScalarNode:
        node = yaml.ScalarNode(tag, value, e.start_mark, e.end_mark, style=e.style)
    else:
        node = kind(tag, [], e.start_mark, None, flow_style=e.flow_style)  # type: ignore[call-arg]
    if anchor is not None:
        anchors[anchor] = node
    return node


# ------------------------------------------------------------------------------------ syntax errors


class _Frame:
    """One open collection while tracking where the parser is: its key or item index so far."""

    __slots__ = ("in_value", "index", "is_key", "key", "mapping")

    def __init__(self, event: Any, is_key: bool = False) -> None:
        self.mapping = isinstance(event, MappingStartEvent)
        self.is_key = is_key  # a collection used as a mapping key: its end completes the key, not a value
        self.key: str | None = None
        self.in_value = False  # a mapping's key has been read; its value has not ended yet
        self.index = -1


def key_path_at(events: Iterator[Any], root: str = "") -> str:
    """The dotted key path (with [i] for list items) the parser is in where `events` end or fail.

    Give it the events of the text *up to* a syntax error: libyaml looks ahead before it hands out an
    event (in `key: a: b` it fails before `key` is one; in `- {a: "...` before the `{`), and only a text
    cut at the error lets it hand out everything before. What the cut text ends in (its last scalar) is
    taken as open, not ended, and the collection ends the parser adds at the end of the cut text are not
    taken at all: the error is inside them. "" when no key is open.
    """
    frames: list[_Frame] = []
    last_scalar = False
    ends = 0  # collection ends not yet taken: only a later node shows they are not the cut's
    try:
        for event in events:
            if isinstance(event, CollectionEndEvent):
                ends += 1
            elif isinstance(event, (ScalarEvent, AliasEvent, CollectionStartEvent)):
                if last_scalar:
                    _node_done(frames)
                for _ in range(ends):
                    if not frames.pop().is_key:
                        _node_done(frames)
                ends = 0
                last_scalar = _enter(frames, event)
    except yaml.YAMLError:
        pass
    return _path(frames, root)


def _enter(frames: list[_Frame], event: Any) -> bool:
    """Take a node's start into `frames`; True when it is a scalar or an alias (it ends where it starts)."""
    if not isinstance(event, (ScalarEvent, AliasEvent, CollectionStartEvent)):
        return False
    parent = frames[-1] if frames else None
    if parent is not None and parent.mapping and not parent.in_value:
        # A key. Scalar keys are names; any other key is shown as "?" (the loader refuses them anyway).
        parent.key = str(event.value) if isinstance(event, ScalarEvent) else "?"
        parent.in_value = True
        if isinstance(event, CollectionStartEvent):
            frames.append(_Frame(event, is_key=True))
        return False  # a key: the mapping now waits for its value
    if parent is not None and not parent.mapping:
        parent.index += 1
    if isinstance(event, CollectionStartEvent):
        frames.append(_Frame(event))
        return False
    return True


def _node_done(frames: list[_Frame]) -> None:
    """A value ended: its mapping now waits for the next key."""
    if frames and frames[-1].mapping and frames[-1].in_value:
        frames[-1].in_value = False
        frames[-1].key = None


MAX_PATH = 120


def _path(frames: list[_Frame], root: str) -> str:
    path = root
    for frame in frames:
        if frame.mapping and frame.key is not None:
            path = f"{path}.{frame.key}" if path else frame.key
        elif not frame.mapping and frame.index >= 0:
            path = f"{path}[{frame.index}]"
    # A path thousands of levels deep (a nesting bomb) is shown by its ends.
    return path if len(path) <= MAX_PATH else f"{path[: MAX_PATH // 2]}...{path[-MAX_PATH // 3 :]}"
