"""A self-contained HTML page built from plain data: sections of text, notes, tables and images.

Every piece of text is escaped here (``html.escape``), so captions, notes and table cells may
carry anything a file name or a CSV cell holds. The page needs nothing outside its folder:
inline CSS, one small inline script, and images linked by relative path, so the folder can be
zipped, mailed or opened from disk. The script marks ``<body>`` once the page has loaded:
``data-images`` (how many ``<img>``), ``data-images-broken`` (how many failed to decode) and
``data-images-ok`` (``yes``/``no``), so a headless browser can check every picture showed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape, unescape
from numbers import Number
from urllib.parse import quote, unquote


@dataclass
class Text:
    """A paragraph."""

    text: str


@dataclass
class Heading:
    """A sub-heading inside a section."""

    text: str


@dataclass
class Note:
    """A missing piece: what is missing and, when known, the command that makes it."""

    text: str
    command: str = ""


@dataclass
class Image:
    """A picture by relative path; ``width`` is the displayed width in CSS pixels (None: natural)."""

    src: str
    caption: str = ""
    width: int | None = None
    tooltip: str = ""


@dataclass
class Gallery:
    """Images side by side (wrapping), e.g. small cell tiles, under an optional label."""

    images: list[Image]
    label: str = ""


@dataclass
class Table:
    """A table; floats are shown with ``digits`` decimals and NaN/None as a dash."""

    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    caption: str = ""
    digits: int = 4


@dataclass
class Pre:
    """Preformatted text (a text report, a command's output)."""

    text: str


Block = Text | Heading | Note | Image | Gallery | Table | Pre


@dataclass
class Section:
    """One part of the page; ``key`` is its anchor (``#key``) in the table of contents."""

    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    @property
    def notes(self) -> list[Note]:
        return [b for b in self.blocks if isinstance(b, Note)]


# --------------------------------------------------------------------------- blocks -> HTML


def format_cell(value: object, digits: int = 4) -> str:
    """Table cell text: floats rounded, NaN/None as a dash, anything else as ``str``."""
    if value is None:
        return "-"
    if isinstance(value, Number) and not isinstance(value, (bool, int)):
        v = float(value)  # type: ignore[arg-type]
        return "-" if math.isnan(v) else f"{v:.{digits}f}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _src(path: str) -> str:
    """A relative path as an attribute value: percent-encoded (keeps ``/``), then HTML-escaped."""
    return escape(quote(path.replace("\\", "/")), quote=True)


def _image(img: Image, tile: bool = False) -> str:
    width = f' width="{int(img.width)}"' if img.width else ""
    alt = escape(img.caption or img.src, quote=True)
    title = f' title="{escape(img.tooltip, quote=True)}"' if img.tooltip else ""
    caption = f"<figcaption>{escape(img.caption)}</figcaption>" if img.caption else ""
    tag = f'<img src="{_src(img.src)}" alt="{alt}"{width}{title} loading="eager">'
    if tile:
        return f'<figure class="tile">{tag}{caption}</figure>'
    return f'<figure class="figure"><a href="{_src(img.src)}">{tag}</a>{caption}</figure>'


def _table(t: Table) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = "".join(
            f'<td class="num">{escape(format_cell(v, t.digits))}</td>' if _is_number(v) else f"<td>{escape(format_cell(v))}</td>"
            for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _note(n: Note) -> str:
    command = f" <code>{escape(n.command)}</code>" if n.command else ""
    return f'<p class="missing"><b>Missing:</b> {escape(n.text)}{command}</p>'


def _gallery(g: Gallery) -> str:
    label = f'<div class="label">{escape(g.label)}</div>' if g.label else ""
    return f'<div class="gallery">{label}<div class="tiles">{"".join(_image(i, tile=True) for i in g.images)}</div></div>'


RENDERERS = {
    Text: lambda b: f"<p>{escape(b.text)}</p>",
    Heading: lambda b: f"<h3>{escape(b.text)}</h3>",
    Note: _note,
    Image: _image,
    Gallery: _gallery,
    Table: _table,
    Pre: lambda b: f"<pre>{escape(b.text)}</pre>",
}


def render_block(block: Block) -> str:
    return RENDERERS[type(block)](block)


def render_section(section: Section) -> str:
    body = "\n".join(render_block(b) for b in section.blocks)
    return f'<section id="{escape(section.key, quote=True)}">\n<h2>{escape(section.title)}</h2>\n{body}\n</section>'


# --------------------------------------------------------------------------- the page

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0 auto;
       max-width: 1220px; padding: 12px 20px 40px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 2px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; padding-bottom: 3px;
margin-top: 28px; } h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #666; margin: 0 0 8px; }
nav { background: #f4f4f4; padding: 6px 10px; border-radius: 4px; } nav a { margin-right: 14px; }
nav a.has-missing::after { content: " \\26A0"; color: #b36b00; }
.missing { background: #fff4e0; border-left: 4px solid #e69500; padding: 6px 10px; margin: 6px 0; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
code { background: #f1f1f1; padding: 1px 4px; border-radius: 3px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #f4f4f4; } caption { caption-side: top; text-align: left; color: #555; padding: 2px 0; }
figure { margin: 0; } figure.figure { display: inline-block; vertical-align: top; margin: 6px 12px 10px 0; }
figure.figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 12px; color: #444; contain: inline-size; }  /* wraps at the picture's width */
.gallery { display: inline-flex; align-items: flex-start; vertical-align: top; margin: 2px 28px 6px 0; }
.gallery .label { flex: 0 0 84px; font-size: 12px; color: #555; padding-top: 4px; }
.tiles { display: flex; flex-wrap: wrap; gap: 6px; }
figure.tile { width: 96px; } figure.tile img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; }
figure.tile figcaption { font-size: 11px; line-height: 1.2; word-break: break-all; }
img.broken { outline: 3px solid red; }
"""

# Marks <body> once every image has loaded or failed, for people (red outlines) and for tests.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  broken.forEach(function (img) { img.classList.add("broken"); });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-images-broken", String(broken.length));
  document.body.setAttribute("data-images-ok", broken.length === 0 ? "yes" : "no");
});
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole HTML document: title, a table of contents (sections with notes flagged), sections."""
    flagged = ' class="has-missing"'
    links = " ".join(
        f'<a href="#{escape(s.key, quote=True)}"{flagged if s.notes else ""}>{escape(s.title)}</a>' for s in sections
    )
    body = "\n".join(render_section(s) for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n<script>{SCRIPT}</script>\n</head>\n"
        f'<body data-images-ok="pending">\n<h1>{escape(title)}</h1>\n<p class="sub">{escape(subtitle)}</p>\n'
        f"<nav>{links}</nav>\n{body}\n</body>\n</html>\n"
    )


def image_sources(page: str) -> list[str]:
    """The ``src`` of every ``<img>`` in a page made by :func:`render_page`, unescaped and unquoted."""
    return [unquote(unescape(m)) for m in re.findall(r'<img src="([^"]*)"', page)]
