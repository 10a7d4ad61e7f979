"""Rendering the report's one document (scripts.lib.report.document) with its two Jinja2 templates.

    scripts/report/templates/report.html autoescaped (HTML); nothing in it is marked safe
    scripts/report/templates/report.md Markdown; every value goes through the `md` filter (backslash before
                                   what would read as markup, never an HTML entity; pipes escaped,
                                   newlines flattened), figure links through `md_url`
                                   (percent-encoded), the config through `fenced` (verbatim in a
                                   fenced code block that it cannot close)
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from scripts.lib.featio.errors import FeatgapError

# The page must not load anything: a <link>/<script> with a network source breaks self-containment.
EXTERNAL_ASSET = re.compile(r"<(?:link|script)[^>]+(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE)


# CommonMark reads markup only here: a backslash before ASCII punctuation (an escape), `&` opening
# a character reference, `<` opening a tag or autolink, `>` opening a block quote. A backslash
# there shows the character itself; everywhere else the text stays as it is (`q < 0.05`, `R&D`),
# so report.md never shows an entity (HTML-escaping it did: `Fisher q &lt; 0.05`).
MD_MARKUP = re.compile(r"\\(?=[!-/:-@\[-`{-~])|&(?=[A-Za-z][A-Za-z0-9]*;|#[0-9]+;|#[xX][0-9a-fA-F]+;)|<(?=[A-Za-z/!?])|\|")


def md(text: Any) -> str:
    """Escape a data/config string for Markdown: a backslash before what CommonMark would read as
    markup (so no tag can render and no entity shows), pipes escaped for tables, newlines flattened."""
    out = MD_MARKUP.sub(lambda m: "\\" + m.group(0), str(text).replace("\n", " "))
    return re.sub(r"^(\s*)>", r"\1\\>", out)  # a value that starts a line must not open a block quote


def md_url(path: str) -> str:
    """A relative figure path as a Markdown link target: percent-encoded, so no character of it
    can close the link or open a tag."""
    return quote(path, safe="/._-~")


def fenced(text: str) -> str:
    """Text for a fenced code block: shown verbatim, with any fence in it defused."""
    return text.replace("```", "ʼʼʼ").rstrip()


def _template(path: str | os.PathLike, *, autoescape: bool, keep_trailing_newline: bool = False):
    import jinja2

    path = Path(path)
    if not path.is_file():
        raise FeatgapError(f"{path}: report template not found")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(path.parent)), autoescape=autoescape,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=keep_trailing_newline)
    env.filters.update(md=md, md_url=md_url, fenced=fenced)
    return env.get_template(path.name)


def render_html(ctx: dict[str, Any], template: str | os.PathLike) -> str:
    """The self-contained page; refuses a template that would load an external asset."""
    page = _template(template, autoescape=True).render(**ctx)
    if EXTERNAL_ASSET.search(page):
        raise FeatgapError(f"{template}: the page would load an external asset; it must be self-contained")
    return page


def render_markdown(ctx: dict[str, Any], template: str | os.PathLike) -> str:
    return _template(template, autoescape=False, keep_trailing_newline=True).render(**ctx)
