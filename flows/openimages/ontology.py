"""The Open Images class ontology: names to MIDs, the hierarchy DAG, and box labelling."""

from __future__ import annotations

import csv
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

ROOT_MID = "/m/0bl9f"


class UnknownClassError(ValueError):
    """A requested class name is not one of the boxable classes."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Ontology:
    """Boxable classes and their subcategory DAG."""

    names: dict[str, str]
    children: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def parents(self) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        for parent, kids in self.children.items():
            for kid in kids:
                found.setdefault(kid, []).append(parent)
        return {mid: tuple(sorted(set(ps))) for mid, ps in found.items()}

    def name(self, mid: str) -> str:
        return self.names.get(mid, mid)

    def descendants(self, mid: str) -> set[str]:
        """Every class below mid in the hierarchy (not mid itself)."""
        seen: set[str] = set()
        stack = list(self.children.get(mid, ()))
        while stack:
            kid = stack.pop()
            if kid not in seen:
                seen.add(kid)
                stack.extend(self.children.get(kid, ()))
        return seen

    def resolve(self, name: str) -> str:
        """Return the MID of a class name (case-insensitive, spaces trimmed) or a MID itself."""
        wanted = name.strip()
        if wanted in self.names:
            return wanted
        by_name = {n.casefold(): mid for mid, n in self.names.items()}
        mid = by_name.get(wanted.casefold())
        if mid is None:
            close = difflib.get_close_matches(wanted, sorted(self.names.values()), n=5, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UnknownClassError(f"unknown Open Images class {name!r}{hint}", name)
        return mid


def read_class_descriptions(path: Path) -> dict[str, str]:
    """Read MID,DisplayName rows, with or without a header row (both are published)."""
    names: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            # MIDs start with "/" (/m/..., /g/...); anything else is a header row.
            if len(row) >= 2 and row[0].strip().startswith("/"):
                names[row[0].strip()] = row[1].strip()
    return names


def load_ontology(class_descriptions: Path, hierarchy: Path) -> Ontology:
    """Build the ontology from the class-descriptions CSV and the hierarchy JSON."""
    names = read_class_descriptions(class_descriptions)
    children: dict[str, set[str]] = {}

    def walk(node: dict) -> None:
        for kid in node.get("Subcategory", []):
            children.setdefault(node["LabelName"], set()).add(kid["LabelName"])
            walk(kid)

    walk(json.loads(hierarchy.read_text()))
    return Ontology(names=names, children={k: tuple(sorted(v)) for k, v in children.items()})


def label_map(
    ontology: Ontology, requested: list[str], include_subclasses: bool = True,
    excluded: list[str] | tuple[str, ...] = (),
) -> dict[str, str]:
    """Map each box MID to the most specific requested class MID it belongs to.

    Excluded classes and everything below them are left out (Sandwich without Hamburger). A
    box under two requested classes that do not nest (e.g. Tomato under both Fruit and
    Vegetable) is ambiguous and left out too, so no box is ever labelled twice.
    """
    dropped = set(excluded).union(*(ontology.descendants(mid) for mid in excluded))
    clash = sorted(ontology.name(mid) for mid in set(requested) & dropped)
    if clash:
        raise ValueError(f"{', '.join(clash)} both requested and excluded")
    expansions = {
        mid: {mid} | (ontology.descendants(mid) if include_subclasses else set())
        for mid in requested
    }
    mapping: dict[str, str] = {}
    for label in set().union(*expansions.values()) - dropped:
        owners = {mid for mid, members in expansions.items() if label in members}
        # The most specific owners are those with no other owner beneath them.
        specific = [mid for mid in owners if not ontology.descendants(mid) & owners]
        if len(specific) == 1:
            mapping[label] = specific[0]
    return mapping


def search(ontology: Ontology, query: str) -> list[str]:
    """MIDs whose name contains query (case-insensitive), exact matches first, or the MID itself."""
    wanted = query.strip().casefold()
    if wanted in ontology.names:
        return [wanted]
    hits = [mid for mid, name in ontology.names.items() if wanted in name.casefold()]
    return sorted(hits, key=lambda mid: (ontology.name(mid).casefold() != wanted,
                                         ontology.name(mid).casefold()))


def describe(ontology: Ontology, mid: str, counts: dict[str, int]) -> str:
    """One line: MID, name, box count, parents and children."""
    def names(mids: tuple[str, ...] | list[str]) -> str:
        return ", ".join(sorted(ontology.name(m) for m in mids if m != ROOT_MID)) or "-"

    boxes = counts.get(mid)
    return (f"{mid}\t{ontology.name(mid)}\tboxes={boxes if boxes is not None else '?'}\t"
            f"parents: {names(ontology.parents.get(mid, ()))}\t"
            f"children: {names(ontology.children.get(mid, ()))}")


def tree(ontology: Ontology, mid: str, counts: dict[str, int], depth: int = 0) -> list[str]:
    """The subtree under mid, one indented line per class with its box count."""
    boxes = counts.get(mid)
    line = f"{'  ' * depth}{ontology.name(mid)} ({mid}){f' {boxes} boxes' if boxes else ''}"
    kids = sorted(ontology.children.get(mid, ()), key=ontology.name)
    return [line] + [row for kid in kids for row in tree(ontology, kid, counts, depth + 1)]
