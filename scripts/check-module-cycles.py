#!/usr/bin/env python3
"""Fails when the core library's top-level modules depend on each other in a circle.

A module depends on another when any of its files names `crate::<other>` in code (comments
and doc links do not count). Prints the dependency graph's circles, if any, and exits 1.
Run by scripts/test.sh; `python3 scripts/check-module-cycles.py [SRC]` by hand.
"""
import pathlib
import re
import sys

USE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
NESTED_USE = re.compile(r"\bcrate::\{([^}]*)\}")


def code_lines(path):
    for line in path.read_text().splitlines():
        code = line.split("//", 1)[0]
        if code.strip():
            yield code


def graph(src):
    modules = {p.stem for p in src.glob("*.rs") if p.stem not in ("lib", "main")}
    modules |= {p.name for p in src.iterdir() if p.is_dir()}
    deps = {m: set() for m in modules}
    for module in modules:
        files = [src / f"{module}.rs"] + sorted((src / module).rglob("*.rs"))
        for path in (f for f in files if f.exists()):
            for code in code_lines(path):
                names = USE.findall(code)
                for group in NESTED_USE.findall(code):
                    names += [n.strip().split("::")[0] for n in group.split(",")]
                deps[module] |= {n for n in names if n in modules and n != module}
    return deps


def cycles(deps):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(deps[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def main():
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    deps = graph(src)
    circles = cycles(deps)
    for component in circles:
        print("circle: " + ", ".join(component))
        for m in component:
            print(f"  {m} -> {', '.join(sorted(deps[m] & set(component)))}")
    if circles:
        return 1
    print(f"no circles among {len(deps)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
