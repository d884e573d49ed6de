"""Turning benchmark sections into a terminal table, Markdown and JSON.

A `Section` is what one benchmark hands back: its table already formatted as strings
(so the terminal and the Markdown show the same digits) plus the raw numbers for JSON.
The Markdown file is meant to be pasted into the README as is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.machine import Machine

MISSING = "—"


@dataclass
class Column:
    header: str
    numeric: bool = True
    help: str = ""
    """What the column means: listed under the Markdown table."""
    help_label: str = ""
    """How the legend names the column (e.g. "TARGET tps" for a group); default: header."""


@dataclass
class Section:
    key: str
    title: str
    description: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: Any = None
    """The raw measurements, for --json."""


def fmt(value: float | None, digits: int = 0, signed: bool = False) -> str:
    """A number for a table cell, or a dash when it could not be measured."""
    if value is None:
        return MISSING
    text = f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"
    return text


def print_sections(console: Console, machine: Machine, sections: list[Section]) -> None:
    for section in sections:
        table = Table(title=section.title, caption=section.description, title_style="bold",
                      caption_justify="left", header_style="bold", pad_edge=False)
        for index, column in enumerate(section.columns):
            # Two-line headers ("cowproxy" over "CPU s/10k") keep the table narrow.
            table.add_column(column.header.replace(" ", "\n", 1), justify="right" if column.numeric else "left",
                             no_wrap=index == 0, overflow="fold")
        for row in section.rows:
            table.add_row(*row)
        console.print(table)
        for note in section.notes:
            console.print(f"  • {note}", highlight=False)
    console.print("\n".join(machine.summary_lines()), style="dim", highlight=False)


def markdown(machine: Machine, sections: list[Section]) -> str:
    lines = ["# cowproxy benchmarks", ""]
    lines += [f"- {line}" for line in machine.summary_lines()]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.description, ""]
        lines.append("| " + " | ".join(c.header for c in section.columns) + " |")
        lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in section.columns) + "|")
        for row in section.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        helps = [c for c in section.columns if c.help]
        if helps:
            lines.append("")
            lines += [f"- **{c.help_label or c.header}**: {c.help}" for c in helps]
        if section.notes:
            lines.append("")
            lines += [f"> {note}  " for note in section.notes]
    return "\n".join(lines) + "\n"


def to_json(machine: Machine, settings: dict[str, Any], sections: list[Section]) -> str:
    document = {
        "machine": machine.to_json(),
        "settings": settings,
        "sections": {s.key: {"title": s.title, "notes": s.notes, "data": s.data} for s in sections},
    }
    return json.dumps(document, indent=2)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
