"""Loading untrusted YAML (or JSON) as plain data, refusing every YAML feature data does not need.

A kubeconfig arrives from a user and is parsed on the server, so the parser must cost little
whatever it is given and build nothing but mappings, lists, strings, booleans and null. Anchors,
aliases, merge keys, explicit tags, duplicate keys, several documents and deep nesting are all
refused while composing, event by event: an alias bomb is refused at its first anchor and never
expanded, and a deep document is refused before it reaches the stack limit. JSON is YAML's flow
style, so a JSON kubeconfig loads the same way.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode

# A kubeconfig's deepest useful scalar sits at level 8 (clusters > entry > cluster > extensions >
# entry > extension > value); a few levels more leave room for an extension's own fields.
MAX_DEPTH = 12
_YAML_TAG = "tag:yaml.org,2002:"


class UnsafeYamlError(ValueError):
    """The text is not YAML, or uses a refused feature. The message never quotes the input."""


class _UntrustedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors, aliases, tags, merge keys, duplicates and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, AliasEvent) or (
            isinstance(event, NodeEvent) and event.anchor is not None
        ):
            raise UnsafeYamlError("anchors and aliases are not allowed in a kubeconfig")
        tag = event.tag if isinstance(event, ScalarEvent | CollectionStartEvent) else None
        if tag is not None:
            # Even `!!str`: kubectl never writes a tag, and `!!binary`, `!!python/...` or a
            # custom tag would build values that have no place in a kubeconfig.
            shown = "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag
            raise UnsafeYamlError(f"YAML tag {_quote(shown)} is not allowed in a kubeconfig")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise UnsafeYamlError(
                    f"kubeconfig is nested too deeply (more than {MAX_DEPTH} levels)"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # PyYAML keeps the last of duplicate keys silently; kubectl refuses them, and two `token`
        # keys would let a reviewer see one credential while another is used.
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode):
                raise UnsafeYamlError(
                    f"a mapping key must be a plain string (line {key_node.start_mark.line + 1})"
                )
            if key_node.value == "<<" and key_node.style is None:
                raise UnsafeYamlError(
                    f"merge keys (<<) are not allowed in a kubeconfig "
                    f"(line {key_node.start_mark.line + 1})"
                )
            if key_node.value in seen:
                raise UnsafeYamlError(
                    f"key {_quote(key_node.value)} appears twice in one mapping "
                    f"(line {key_node.start_mark.line + 1})"
                )
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _json_like_resolvers() -> dict[Any, Any]:
    # Only booleans and null are resolved implicitly; every other plain scalar stays the text that
    # was written, as kubectl reads `password: 0123` into a string (YAML 1.1 would make it 83).
    # Without the merge resolver, `<<` is an ordinary key, which construct_mapping refuses.
    keep = {_YAML_TAG + "bool", _YAML_TAG + "null"}
    resolvers: dict[Any, Any] = {}
    for first, candidates in yaml.SafeLoader.yaml_implicit_resolvers.items():
        kept = [(tag, pattern) for tag, pattern in candidates if tag in keep]
        if kept:
            resolvers[first] = kept
    return resolvers


_UntrustedLoader.yaml_implicit_resolvers = _json_like_resolvers()


def load_untrusted_yaml(data: bytes) -> Any:
    """The one document of ``data`` as plain data, or None when it is empty.

    Raises :class:`UnsafeYamlError` for text that is not UTF-8 YAML or that uses a refused feature.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsafeYamlError("kubeconfig is not valid UTF-8 text") from None
    loader: _UntrustedLoader | None = None
    # `from None` throughout: PyYAML's own messages quote the surrounding lines, which may hold
    # a secret, so neither they nor the chained traceback may travel on.
    try:
        loader = _UntrustedLoader(text)
        if not loader.check_node():
            return None
        node = loader.get_node()
        if loader.check_node():
            raise UnsafeYamlError("kubeconfig must hold a single YAML document, not several")
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        where = ""
        if error.problem_mark is not None:
            mark = error.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = error.problem or "syntax error"
        raise UnsafeYamlError(f"kubeconfig is not valid YAML: {problem}{where}") from None
    except yaml.YAMLError:
        raise UnsafeYamlError(
            "kubeconfig is not valid YAML: it contains characters YAML does not allow"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _quote(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")
