"""Reading a topology file into documents, strictly.

A topology file is multi-document YAML. Duplicate keys in a mapping are
refused (the Kubernetes API server's strict decoding refuses them too), and
every document keeps its index and line so messages can point at it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from labctl.model.errors import InvalidInput, Problem, short_repr


def _printable(text: str) -> str:
    """A name as messages show it: as is when it is short and printable, else quoted and cut."""
    return text if len(text) <= 80 and text.isprintable() else short_repr(text, 60)


@dataclass(frozen=True)
class Document:
    index: int  # 1-based position in the file
    line: int  # 1-based line where the document starts
    data: Any

    @property
    def kind(self) -> str:
        if isinstance(self.data, dict) and isinstance(self.data.get("kind"), str):
            return self.data["kind"]
        return "?"

    @property
    def name(self) -> str | None:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("name"), str):
            return meta["name"]
        return None

    @property
    def namespace(self) -> str | None:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("namespace"), str):
            return meta["namespace"]
        return None

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        """(kind, namespace, name): what `apply` and `delete` match on."""
        scoped = self.kind not in ("Lab", "Namespace")
        return (self.kind, (self.namespace or "default") if scoped else None, self.name)

    def ident(self) -> str:
        kind, ns, name = (_printable(x) if x else x for x in self.key)
        if not name:
            return kind
        return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"

    def where(self) -> str:
        """How messages name this document: index, line, kind and name."""
        if self.index <= 0:
            return f"running lab ({self.ident()})"
        return f"document {self.index} (line {self.line}, {self.ident()})"


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser when PyYAML has it: ~5x faster
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


MAX_DEPTH = 100  # a Deployment is about 12 levels deep; the API server's JSON decoder allows 10,000
MAX_NODES = 1_000_000  # scalars, sequences and mappings of a document, aliases counted each time they are used


def _check_shape(node: yaml.Node, index: int, source: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH, or larger than MAX_NODES
    once its aliases are expanded (a "billion laughs"), before it is built."""
    stack = [(node, 1)]
    count = 0
    while stack:
        n, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise InvalidInput([Problem(f"document {index} (line {node.start_mark.line + 1})", "", f"nested more than {MAX_DEPTH} levels deep")], source=source)
        if count > MAX_NODES:
            raise InvalidInput(
                [Problem(f"document {index} (line {node.start_mark.line + 1})", "", f"has more than {MAX_NODES:,} values once its aliases are expanded")],
                source=source,
            )
        if isinstance(n, yaml.SequenceNode):
            stack += [(c, depth + 1) for c in n.value]
        elif isinstance(n, yaml.MappingNode):
            stack += [(c, depth + 1) for kv in n.value for c in kv]


def parse_text(text: str, source: str) -> list[Document]:
    """Split YAML text into documents; empty documents are skipped but counted."""
    docs: list[Document] = []
    index = 0
    loader = None
    try:
        loader = _StrictLoader(text)
        while loader.check_node():
            index += 1
            try:
                node = loader.get_node()
            except RecursionError:
                raise InvalidInput([Problem(f"document {index}", "", f"nested more than {MAX_DEPTH} levels deep")], source=source) from None
            _check_shape(node, index, source)
            data = loader.construct_document(node)
            if data is None:
                continue
            docs.append(Document(index=index, line=node.start_mark.line + 1, data=data))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "input"
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidInput([Problem(where, "", f"invalid YAML: {problem}")], source=source) from e
    finally:
        if loader is not None:
            loader.dispose()
    return docs


def read_file(path: str) -> tuple[list[Document], str]:
    """Read a topology file ('-' is standard input). Returns the documents and the source name."""
    if path == "-":
        return parse_text(sys.stdin.read(), "<stdin>"), "<stdin>"
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a directory, not a topology file") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{path} is not UTF-8 text: {e}") from None
    return parse_text(text, path), path
