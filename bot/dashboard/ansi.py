"""ANSI SGR colour codes in log text to HTML spans (the dashboard's live.js does the same in the browser)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from html import escape

# CSI sequences (colours, cursor moves, erases) and OSC sequences (titles, hyperlinks): only SGR (`m`) is kept.
_ESCAPE = re.compile(r"\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?")


@dataclass(frozen=True)
class Style:
    """The SGR attributes in effect; colours are a class suffix (`1`..`15`) or a CSS colour (`#rrggbb`)."""

    fg: str | None = None
    bg: str | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False

    def span(self) -> tuple[str, str]:
        classes, styles = [], []
        for kind, colour in (("fg", self.fg), ("bg", self.bg)):
            if colour is None:
                continue
            if colour.startswith("#"):
                styles.append(f"{'color' if kind == 'fg' else 'background-color'}:{colour}")
            else:
                classes.append(f"a-{kind}{colour}")
        classes += [name for name, on in (("a-b", self.bold), ("a-d", self.dim), ("a-i", self.italic),
                                           ("a-u", self.underline)) if on]
        if not classes and not styles:
            return "", ""
        attrs = f' class="{" ".join(classes)}"' if classes else ""
        attrs += f' style="{";".join(styles)}"' if styles else ""
        return f"<span{attrs}>", "</span>"


PLAIN = Style()


def _palette(n: int) -> str:
    """Colour n of the 256-colour palette: 0-15 by class (the theme's), the rest as RGB."""
    if n < 16:
        return str(n)
    if n < 232:
        n -= 16
        levels = [0, 95, 135, 175, 215, 255]
        r, g, b = levels[n // 36], levels[n // 6 % 6], levels[n % 6]
    else:
        r = g = b = 8 + 10 * (n - 232)
    return f"#{r:02x}{g:02x}{b:02x}"


def apply_sgr(style: Style, params: str) -> Style:
    """The style after one SGR sequence `ESC [ params m`."""
    codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] if params else [0]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            style = PLAIN
        elif code == 1:
            style = replace(style, bold=True)
        elif code == 2:
            style = replace(style, dim=True)
        elif code == 3:
            style = replace(style, italic=True)
        elif code == 4:
            style = replace(style, underline=True)
        elif code == 22:
            style = replace(style, bold=False, dim=False)
        elif code == 23:
            style = replace(style, italic=False)
        elif code == 24:
            style = replace(style, underline=False)
        elif 30 <= code <= 37 or 90 <= code <= 97:
            style = replace(style, fg=str(code - 30 if code < 90 else code - 82))
        elif 40 <= code <= 47 or 100 <= code <= 107:
            style = replace(style, bg=str(code - 40 if code < 100 else code - 92))
        elif code == 39:
            style = replace(style, fg=None)
        elif code == 49:
            style = replace(style, bg=None)
        elif code in (38, 48) and i + 1 < len(codes):
            colour = None
            if codes[i + 1] == 5 and i + 2 < len(codes):
                colour, i = _palette(codes[i + 2] % 256), i + 2
            elif codes[i + 1] == 2 and i + 4 < len(codes):
                r, g, b = (min(c, 255) for c in codes[i + 2 : i + 5])
                colour, i = f"#{r:02x}{g:02x}{b:02x}", i + 4
            if colour is not None:
                style = replace(style, **{"fg" if code == 38 else "bg": colour})
        i += 1
    return style


def to_html(text: str, style: Style = PLAIN) -> tuple[str, Style]:
    """Escaped HTML of one line with its colours as spans, and the style in effect at its end."""
    out: list[str] = []
    pos = 0

    def emit(chunk: str) -> None:
        if chunk:
            start, end = style.span()
            out.append(f"{start}{escape(chunk, quote=False)}{end}")

    for match in _ESCAPE.finditer(text):
        emit(text[pos : match.start()])
        pos = match.end()
        if match.group(2) == "m":
            style = apply_sgr(style, match.group(1))
    emit(text[pos:])
    return "".join(out), style


def strip(text: str) -> str:
    """The text without escape sequences (for plain-text downloads and titles)."""
    return _ESCAPE.sub("", text)
