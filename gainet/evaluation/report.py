"""Results as Markdown tables and as one self-contained HTML page.

A report is a list of sections; each section is ``(heading, items)`` or
``{"title": heading, "items": items}``, and each item is one of:

- a ``str``: a Markdown pipe table if every non-blank line starts with ``|`` (as
  :func:`markdown_table` writes), else plain text whose blank-line-separated blocks become
  paragraphs;
- ``{"table": rows, "columns": [...], "floatfmt": ".3f"}``: rows of dicts, as for
  :func:`markdown_table`;
- ``{"image": path, "caption": text, "width": pixels}`` (caption and width optional): an
  ``<img>`` whose ``src`` is the path relative to the HTML file's folder (the image is linked,
  not embedded, so keep it next to the report);
- ``{"link": path, "text": text}``: a paragraph with a link to another page (relative, as images).

All text is HTML-escaped; nothing in a section is interpreted as HTML.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 13px; color: #555; }
""".strip()

_ALIGNMENT_CELL = re.compile(r"^:?-{1,}:?$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?%?$|^[-+]?(nan|inf)$")


def format_cell(value: Any, floatfmt: str = ".3f") -> str:
    """Text of one table cell: floats with ``floatfmt`` (NaN as ``nan``), ``None`` as empty, the
    rest with ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, floatfmt)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return format_cell(value.item(), floatfmt)
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown pipe table, one line per row, header from ``columns``.

    Cells missing from a row are empty; ``|`` inside a cell is escaped as ``\\|`` and line breaks
    become spaces. Numeric columns (every non-empty cell an int or float) are right-aligned.
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")

    def clean(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    def numeric(column: str) -> bool:
        values = [row.get(column) for row in rows if row.get(column) is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    header = "| " + " | ".join(clean(str(c)) for c in columns) + " |"
    rule = "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|"
    body = ["| " + " | ".join(clean(format_cell(row.get(c), floatfmt)) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def _split_row(line: str) -> list[str]:
    """Cells of one pipe-table line; ``\\|`` is a literal pipe and ``\\\\`` a literal backslash."""
    cells: list[str] = []
    current: list[str] = []
    text = line.strip()
    index = 1 if text.startswith("|") else 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in "|\\":
            current.append(text[index + 1])
            index += 2
            continue
        if char == "|":
            cells.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    if "".join(current).strip():  # no closing pipe
        cells.append("".join(current).strip())
    return cells


def _is_markdown_table(text: str) -> bool:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return bool(lines) and all(line.lstrip().startswith("|") for line in lines)


def markdown_table_to_html(text: str) -> str:
    """Render a Markdown pipe table (first line = header, optional ``---`` rule) as an HTML table
    with escaped cells; number-like cells get ``class="num"`` (right-aligned)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    header = _split_row(lines[0])
    body = [_split_row(line) for line in lines[1:]]
    if body and all(_ALIGNMENT_CELL.match(cell.replace(" ", "")) for cell in body[0]):
        body = body[1:]
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead>", "<tbody>"]
    for cells in body:
        cells = cells + [""] * (len(header) - len(cells))
        tds = "".join(
            f'<td class="num">{html.escape(c)}</td>' if _NUMBER.match(c) else f"<td>{html.escape(c)}</td>" for c in cells
        )
        out.append(f"<tr>{tds}</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _paragraphs(text: str) -> str:
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    return "\n".join("<p>" + html.escape(block).replace("\n", "<br>\n") + "</p>" for block in blocks)


def _relative(path: Any, folder: Path) -> str:
    source = Path(os.fspath(path))
    if source.is_absolute():
        try:
            source = Path(os.path.relpath(source, folder.resolve()))
        except ValueError:  # another drive on Windows: keep the absolute path
            pass
    return html.escape(source.as_posix(), quote=True)


def _image(item: Mapping[str, Any], folder: Path) -> str:
    source = Path(os.fspath(item["image"]))
    src = _relative(source, folder)
    caption = str(item.get("caption", ""))
    width = item.get("width")
    size = f' width="{int(width)}"' if width is not None else ""
    alt = html.escape(caption or source.name, quote=True)
    figcaption = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{alt}"{size}>{figcaption}</figure>'


def _render_item(item: Any, folder: Path) -> str:
    if isinstance(item, str):
        return markdown_table_to_html(item) if _is_markdown_table(item) else _paragraphs(item)
    if isinstance(item, Mapping) and "image" in item:
        return _image(item, folder)
    if isinstance(item, Mapping) and "link" in item:
        text = html.escape(str(item.get("text") or item["link"]))
        return f'<p><a href="{_relative(item["link"], folder)}">{text}</a></p>'
    if isinstance(item, Mapping) and "table" in item:
        columns = item.get("columns") or list(dict.fromkeys(k for row in item["table"] for k in row))
        return markdown_table_to_html(markdown_table(item["table"], columns, item.get("floatfmt", ".3f")))
    raise TypeError(f"unknown report item {type(item).__name__}: expected str, {{'image': ...}} or {{'table': ...}}")


def _section_parts(section: Any) -> tuple[str, Sequence[Any]]:
    if isinstance(section, Mapping):
        title, items = section.get("title", ""), section.get("items", ())
    else:
        title, items = section
    if isinstance(items, (str, Mapping)):
        items = [items]
    return str(title), items


def render_html(title: str, sections: Sequence[Any], folder: str | os.PathLike = ".") -> str:
    """The HTML page :func:`write_html_report` writes, as a string (image paths made relative to
    ``folder``)."""
    folder = Path(folder)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        heading, items = _section_parts(section)
        parts.append("<section>")
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.extend(_render_item(item, folder) for item in items)
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html_report(path: str | os.PathLike, title: str, sections: Sequence[Any]) -> Path:
    """Write a single self-contained HTML page (inline CSS, no scripts) with ``title`` and
    ``sections`` (see the module docstring); parent folders are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, sections, path.parent), encoding="utf-8")
    return path
