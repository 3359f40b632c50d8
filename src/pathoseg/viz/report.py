"""A self-contained HTML report: every picture embedded, opens from disk without a server."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pathoseg.io import write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f0f6}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}
"""


@dataclass
class Section:
    title: str
    html: str


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)
    footer: str = ""

    def add_table(self, title: str, rows: Sequence[dict], note: str = "", digits: int = 4) -> None:
        note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
        self.sections.append(Section(title, table_html(rows, digits) + note_html))

    def add_image(self, title: str, png: bytes, caption: str = "") -> None:
        self.sections.append(Section(title, image_html(png, caption)))

    def add_html(self, title: str, body: str) -> None:
        self.sections.append(Section(title, body))

    def render(self) -> str:
        body = "\n".join(f"<h2>{html.escape(s.title)}</h2>\n{s.html}" for s in self.sections)
        foot = f'<p class="note">{html.escape(self.footer)}</p>' if self.footer else ""
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n{foot}</body></html>\n")

    def write(self, path: str | Path) -> Path:
        return write_text(path, self.render())


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def table_html(rows: Sequence[dict], digits: int = 4) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''), digits)}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image_html(png: bytes, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">{cap}</figure>'
