"""The report as a list of typed blocks, and one renderer per format (Markdown, HTML, LaTeX
tables), so every format says the same thing. A table is one block: its caption, the text it
shows, which cells are bold, and (when it has a ``name``) the files ``tables/<name>.csv`` (the
raw numbers) and ``tables/<name>.tex`` (booktabs), all written by :func:`write_tables`.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Alert:
    """Something the reader must not miss (an incomplete study, a figure left out)."""

    text: str


@dataclass(frozen=True, eq=False)
class Table:
    """``frame``: what the report shows (strings or numbers; the index is the first column);
    ``bold``: a bool frame of the same shape; ``data``: what ``tables/<name>.csv`` holds
    (default ``frame``); ``show``: False for a table that is only written to ``tables/``."""

    frame: pd.DataFrame
    caption: str
    name: str | None = None
    data: pd.DataFrame | None = None
    bold: pd.DataFrame | None = None
    show: bool = True


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


Block = Heading | Paragraph | Bullets | Alert | Table | Figure


def _cells(t: Table, escape, bold: str) -> pd.DataFrame:
    """The table's cells for one format: strings escaped, bold cells wrapped in ``bold``."""
    f = t.frame.map(lambda c: escape(c) if isinstance(c, str) else c)
    f.index = [escape(str(i)) for i in f.index]
    f.index.name = None if t.frame.index.name is None else escape(str(t.frame.index.name))
    f.columns = [escape(str(c)) for c in f.columns]
    if t.bold is not None:
        mask = t.bold.to_numpy()
        f = f.astype(object)
        for i, j in zip(*mask.nonzero()):
            f.iat[i, j] = bold.format(f.iat[i, j])
    return f


def render_markdown(blocks: list[Block], out: Path) -> str:
    """GitHub Markdown; figures by relative path under ``out``."""
    parts = []
    for b in blocks:
        match b:
            case Heading(text, level):
                parts.append(f"{'#' * level} {text}")
            case Paragraph(text):
                parts.append(text)
            case Bullets(items):
                parts.append("\n".join(f"- {i}" for i in items))
            case Alert(text):
                parts.append(f"> **Warning:** {text}")
            case Table() if b.show:
                parts.append(_cells(b, str, "**{}**").to_markdown() + (f"\n\n*{b.caption}*" if b.caption else ""))
            case Figure(path, caption):
                parts.append(f"![{caption}]({path.relative_to(out).as_posix()})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{border-bottom:2px solid #444}
caption{caption-side:bottom;color:#555;font-size:90%;text-align:left;padding-top:.4em}
img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:90%}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em}"""
# a browser test reads data-images-loaded after load: every <img> decoded with a size
ONLOAD = (
    "<script>window.addEventListener('load',()=>{const ok=[...document.images].every(i=>i.complete&&i.naturalWidth>0);"
    "document.body.dataset.imagesLoaded=String(ok);document.body.dataset.images=document.images.length;});</script>"
)


def _html_table(t: Table) -> str:
    table = _cells(t, html.escape, "<b>{}</b>").to_html(escape=False, border=0)
    if t.caption:
        head, rest = table.split(">", 1)
        table = f"{head}><caption>{html.escape(t.caption)}</caption>{rest}"
    return table


def render_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: figures embedded as base64 PNG."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>{ONLOAD}</head><body>"
    ]
    for b in blocks:
        match b:
            case Heading(text, level):
                parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
            case Paragraph(text):
                parts.append(f"<p>{html.escape(text)}</p>")
            case Bullets(items):
                parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            case Alert(text):
                parts.append(f"<p class='warn'><b>Warning:</b> {html.escape(text)}</p>")
            case Table() if b.show:
                parts.append(_html_table(b))
            case Figure(path, caption):
                data = base64.b64encode(Path(path).read_bytes()).decode()
                parts.append(
                    f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)


_TEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def render_latex(t: Table, label: str) -> str:
    """Booktabs LaTeX (pandas' Styler, ``hrules=True``); numbers as pandas prints them."""
    cells = _cells(t, tex_escape, r"\textbf{{{}}}")
    cells = cells.map(
        lambda c: c if isinstance(c, str) else ("" if pd.isna(c) else f"{c:g}" if isinstance(c, float) else str(c))
    )
    cells.index.name = None  # no separate header row for the index name
    return cells.style.to_latex(
        hrules=True, caption=tex_escape(t.caption), label=label, column_format="l" + "r" * cells.shape[1]
    )


def write_tables(blocks: list[Block], folder: Path, label_prefix: str) -> list[Path]:
    """``<name>.csv`` and ``<name>.tex`` of every named table, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for b in blocks:
        if isinstance(b, Table) and b.name:
            (b.frame if b.data is None else b.data).to_csv(folder / f"{b.name}.csv")
            (folder / f"{b.name}.tex").write_text(render_latex(b, f"tab:{label_prefix}-{b.name}"))
            written += [folder / f"{b.name}.csv", folder / f"{b.name}.tex"]
    return written
