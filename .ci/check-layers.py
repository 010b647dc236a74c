#!/usr/bin/env python3
"""Fails when the crate's imports form a cycle: between the top-level modules (the layers
lib.rs lists), or between the files of one folder.

Why a script and not a workspace of crates (linkerd2-proxy's way): the layers are small, one
crate links once and builds faster on two cores, and the compiler's crate graph would only
catch cycles between folders, not between the files of one. The script reads what the code
imports: `use crate::...` and `use super::...` items (braces expanded), and `crate::a::b`
paths written inline. Items a folder's `mod.rs` re-exports count as imports of the file that
defines them. Unit tests (`tests.rs`, and everything after a file's `#[cfg(test)]`) may
reach across layers and are not read.

    python3 .ci/check-layers.py          exit 0 and the layer order, or 1 and each cycle
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_of(path: Path) -> tuple:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def production_text(path: Path) -> str:
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    # Comments would otherwise count `crate::x` in prose.
    return re.sub(r"//[^\n]*", "", text)


def expand(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            if inner[start:i]:
                items.append(inner[start:i])
            start = i + 1
    return [path for item in items for path in expand(prefix + item)]


def imported_paths(text: str, module: tuple) -> list:
    """Absolute module paths (tuples, item names included) that `text` refers to."""
    paths = []
    for use in re.findall(r"\buse\s+([^;]+);", text):
        paths += expand(use)
    paths += re.findall(r"(?<![\w:])crate(?:::\w+)+", text)
    paths += re.findall(r"(?<![\w:])super(?:::\w+)+", text)
    resolved = []
    for path in paths:
        path = re.sub(r"\s+as\s+\w+$", "", path)
        parts = path.split("::")
        if parts[0] == "crate":
            resolved.append(tuple(parts[1:]))
        elif parts[0] == "super":
            # `super` is the parent module (of `a/b.rs` and of `a/b/mod.rs` alike: `a`).
            base = list(module)
            while parts and parts[0] == "super":
                parts.pop(0)
                base = base[:-1]
            resolved.append(tuple(base + parts))
    return [p for p in resolved if p and p[0] != "self"]


def main() -> int:
    files = {module_of(p): p for p in SRC.rglob("*.rs")
             if p.name != "tests.rs" and p.parts[-1] != "main.rs" and p.relative_to(SRC).parts[0] != "bin"}
    files.pop(("lib",), None)  # the crate root lists the layers; it is no layer itself
    modules = set(files)
    # Which child of a folder defines an item the folder's mod.rs re-exports.
    reexports = {}
    for module, path in files.items():
        if path.name != "mod.rs":
            continue
        for use in re.findall(r"\bpub use\s+([^;]+);", production_text(path)):
            for item in expand(use):
                parts = item.split("::")
                if parts[0] in ("self", "crate", "super"):
                    continue
                reexports[module + (parts[-1],)] = module + tuple(parts[:-1])

    def target(path: tuple) -> tuple:
        if path in reexports:
            path = reexports[path]
        for length in range(len(path), 0, -1):
            if path[:length] in modules:
                return path[:length]
        return ()

    file_edges, layer_edges, why = {}, {}, {}
    for module, path in files.items():
        for imported in imported_paths(production_text(path), module):
            to = target(imported)
            if not to or to == module:
                continue
            if to[0] != module[0]:
                layer_edges.setdefault(module[0], set()).add(to[0])
                why.setdefault((module[0], to[0]), set()).add(str(path.relative_to(SRC)))
            elif to[:-1] == module[:-1] or to == module[:-1] or module == to[:-1]:
                # Files of one folder, or a folder's mod.rs and its own children.
                if path.name == "mod.rs" and to[:-1] == module and imported[: len(to)] == to and \
                        re.search(r"\bpub use\s+[^;]*\b" + to[-1] + r"\b", production_text(path)):
                    continue  # a re-export: the façade, not a dependency
                file_edges.setdefault(module, set()).add(to)

    failures = []
    for name, edges in (("layers", layer_edges), ("files", file_edges)):
        for component, cycle in cycles(edges):
            show = lambda m: "::".join(m) if isinstance(m, tuple) else m
            failures.append(f"import cycle between {name}: " + " -> ".join(show(m) for m in cycle))
            for a in sorted(component):
                for b in sorted(edges.get(a, ()) & component):
                    because = ", ".join(sorted(why[(a, b)])) if name == "layers" else ""
                    failures.append(f"    {show(a)} -> {show(b)}" + (f": {because}" if because else ""))
    if failures:
        print("\n".join(failures))
        return 1
    print("no import cycles; layers from the bottom up: " + " < ".join(topological(layer_edges, {m[0] for m in modules})))
    return 0


def cycles(edges: dict) -> list:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append((set(component), path_through(sorted(component), edges)))

    sys.setrecursionlimit(10_000)
    for node in sorted(set(edges) | {n for e in edges.values() for n in e}):
        if node not in index:
            visit(node)
    return found


def path_through(component: list, edges: dict) -> list:
    """A cycle inside `component`, for the message: breadth-first back to the start."""
    start, members = component[0], set(component)
    previous, queue = {start: None}, [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                cycle = [node]
                while previous[cycle[-1]] is not None:
                    cycle.append(previous[cycle[-1]])
                return list(reversed(cycle)) + [start]
            if nxt in members and nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return component


def topological(edges: dict, nodes: set) -> list:
    order, done = [], set()

    def visit(node):
        if node in done:
            return
        done.add(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        order.append(node)

    for node in sorted(nodes):
        visit(node)
    return order


if __name__ == "__main__":
    sys.exit(main())
