#!/usr/bin/env python3
"""Generates the values table of charts/oauth-token-operator/README.md from values.yaml.

values.yaml documents a value with a comment block that starts with `# -- ` right above its key
(the helm-docs convention); the following `#` lines continue it, and a line
`# @default -- TEXT` gives the table a description of the default instead of the value itself.
A documented object (e.g. `resources`) is one row; its children need no comment of their own.
Comments without `-- ` (section notes) are not copied. Every value must be documented, by its own
comment or an ancestor's.

The table replaces what stands between `<!-- values-table:begin -->` and
`<!-- values-table:end -->` in the README; the rest of the README is written by hand.

Usage: scripts/chart-readme.py [--check] [CHART_DIR]
  --check: change nothing; exit 1 (printing a diff) when the README is not up to date.
Needs PyYAML (.ci/chart-check runs it in its virtualenv).
"""

import difflib
import json
import os
import re
import sys

import yaml

BEGIN = "<!-- values-table:begin -->"
END = "<!-- values-table:end -->"
KEY_LINE = re.compile(r"^( *)([A-Za-z0-9_.-]+|\"[^\"]+\"):(\s|$)")


def documented_keys(lines):
    """[(dotted key, description, default override or None)] in file order, from `# --` blocks."""
    out = []
    stack = []  # (indent, key)
    pending = None  # [description lines, default override]
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped[1:]
            text = text[1:] if text.startswith(" ") else text
            if text.startswith("-- "):
                pending = [[text[3:].strip()], None]
            elif text.startswith("@default -- ") and pending is not None:
                pending[1] = text[len("@default -- "):].strip()
            elif pending is not None and pending[1] is None:
                pending[0].append(text.strip())
            continue
        if not stripped:
            if pending is not None:
                raise SystemExit(f"values.yaml line {number}: a `# --` comment must stand right above its key")
            continue
        match = KEY_LINE.match(line)
        if not match:
            if pending is not None:
                raise SystemExit(f"values.yaml line {number}: a `# --` comment must stand right above a key")
            continue  # a list item or a continued value
        indent, key = len(match.group(1)), match.group(2).strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        if pending is not None:
            path = ".".join(k for _, k in stack)
            out.append((path, " ".join(p for p in pending[0] if p), pending[1]))
            pending = None
    return out


def leaves(value, prefix=""):
    """Dotted paths of every value (empty maps and lists count as values)."""
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from leaves(sub, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def lookup(values, path):
    for part in path.split("."):
        values = values[part]
    return values


def type_name(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def table(chart):
    with open(os.path.join(chart, "values.yaml")) as f:
        text = f.read()
    values = yaml.safe_load(text)
    docs = documented_keys(text.splitlines())
    paths = [p for p, _, _ in docs]
    for path in paths:
        try:
            lookup(values, path)
        except (KeyError, TypeError):
            raise SystemExit(f"values.yaml: documented key {path} is not a value")
    undocumented = [
        leaf for leaf in leaves(values)
        if not any(leaf == p or leaf.startswith(p + ".") for p in paths)
    ]
    if undocumented:
        raise SystemExit("values.yaml: values without a `# -- ` description (theirs or a parent's): "
                         + ", ".join(undocumented))
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, description, default in docs:
        value = lookup(values, path)
        if default is None:
            default = "`" + json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) + "`"
        rows.append(f"| `{path}` | {type_name(value)} | {cell(default)} | {cell(description)} |")
    return "\n".join(rows) + "\n"


def main():
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    chart = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                                              "charts", "oauth-token-operator")
    readme_path = os.path.relpath(os.path.join(chart, "README.md"))
    with open(readme_path) as f:
        readme = f.read()
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise SystemExit(f"{readme_path}: needs one {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    generated = head + BEGIN + "\n" + table(chart) + END + tail
    if generated == readme:
        print(f"{readme_path}: values table up to date")
        return 0
    if check:
        sys.stdout.writelines(difflib.unified_diff(
            readme.splitlines(keepends=True), generated.splitlines(keepends=True),
            readme_path, readme_path + " (generated)"))
        print(f"{readme_path}: the values table is stale: run scripts/chart-readme.py", file=sys.stderr)
        return 1
    with open(readme_path, "w") as f:
        f.write(generated)
    print(f"{readme_path}: values table written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
