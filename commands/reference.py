"""The README's command reference, generated from the declarations.

`python -m commands.reference --write` rewrites the block between the markers in README.md;
a test fails when the README and the declarations disagree.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from commands import build_registry
from commands.registry import ANYWHERE, SCOPE_NAMES

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- commands:start -->", "<!-- commands:end -->"


def reference() -> str:
    registry = build_registry()
    lines = []
    category = None
    for cmd in registry.commands:
        if cmd.category != category:
            category = cmd.category
            lines += ["", f"**{category}**", ""]
        for line_cmd in cmd.children() if cmd.family else [cmd]:  # a family: one line per subcommand
            family = f"{cmd.name} " if cmd.family else ""
            aliases = f" (alias {', '.join('`' + family + a + '`' for a in line_cmd.aliases)})" if line_cmd.aliases else ""
            where = "" if line_cmd.scopes == ANYWHERE else " · " + ", ".join(SCOPE_NAMES[s] for s in sorted(line_cmd.scopes))
            lines.append(f"- `{line_cmd.usage()}`{aliases}: {line_cmd.summary}{where}")
    return "\n".join(lines).strip() + "\n"


def readme_block(text: str) -> str:
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    return match.group(1) if match else ""


def write() -> None:
    text = README.read_text()
    README.write_text(text.replace(START + "\n" + readme_block(text) + END, START + "\n" + reference() + END))


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        print(reference())
