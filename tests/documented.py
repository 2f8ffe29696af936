"""The commands README.md and docs/ tell a user to type, read from the Markdown itself.

A command is a line of a fenced block, or an inline code span, that starts the way a user's command does
(`python experiments/...`, `make ...`, `curl ...`, `torchrun ...`). A fenced line joins its `\\`
continuations and loses its `# comment`. `tests/test_documented_commands.py` parses every one with its
script's own parser and runs a chain of them on small real photos in a copy of the repository.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "reports" / "README.md"]
BLOCK_STARTS = ("python ", "make ", "curl ", "torchrun ")
INLINE_STARTS = ("python experiments/", "python benchmarks/", "python demo/", "make ", "torchrun ")


@dataclass(frozen=True)
class Command:
    document: str  # README.md, docs/speed.md
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    def argv(self, placeholders: dict[str, str] | None = None) -> list[str]:
        """The words a shell would pass, with `[--optional flags]` kept, `...` dropped and each `<placeholder>`
        (`<run-id>`, `<set>`) replaced from `placeholders` (unknown ones stay as written)."""
        text = self.text.replace("[", "").replace("]", "")
        for name, value in (placeholders or {}).items():
            text = text.replace(f"<{name}>", value)
        return [word for word in shlex.split(text) if word != "..."]


def commands_in(path: Path) -> list[Command]:
    found, in_block = [], False
    lines = path.read_text(encoding="utf-8").splitlines()
    document = str(path.relative_to(REPO))
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        if line.startswith("```"):
            in_block = not in_block
        elif in_block:
            start, text = number, uncommented(line.strip())
            if not text.startswith(BLOCK_STARTS):
                continue
            while text.endswith("\\") and number < len(lines):
                text = text[:-1].rstrip() + " " + uncommented(lines[number].strip())
                number += 1
            found.append(Command(document, start, text))
        else:
            found += [Command(document, number, span) for span in re.findall(r"`([^`]+)`", line)
                      if span.startswith(INLINE_STARTS)]
    return found


def uncommented(line: str) -> str:
    """The line without a trailing `# comment`: a `#` after a space, outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line


def documented_commands() -> list[Command]:
    return [command for path in DOCUMENTS for command in commands_in(path)]
