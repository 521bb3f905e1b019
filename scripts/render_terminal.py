#!/usr/bin/env python3
"""Render tmux `capture-pane -e` dumps (text with ANSI colours) to one PNG.

Usage: render_terminal.py OUT.png COLUMNS TITLE=FILE [TITLE=FILE ...]
Panes are laid out in a grid, COLUMNS wide, each under its title.
"""
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
SIZE = 15
BG = (30, 30, 36)
FG = (220, 220, 220)
TITLE_BG = (60, 60, 72)
PALETTE = [
    (40, 40, 40), (224, 108, 117), (152, 195, 121), (229, 192, 123),
    (97, 175, 239), (198, 120, 221), (86, 182, 194), (220, 220, 220),
]
BRIGHT = [tuple(min(255, c + 40) for c in rgb) for rgb in PALETTE]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def spans(line):
    """Split one line into (text, colour, bold) runs."""
    colour, bold, dim, pos = FG, False, False, 0
    for match in SGR.finditer(line):
        if match.start() > pos:
            yield line[pos:match.start()], colour, bold, dim
        codes = [int(c) if c else 0 for c in match.group(1).split(";")]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                colour, bold, dim = FG, False, False
            elif code == 1:
                bold = True
            elif code == 2:
                dim = True
            elif code == 22:
                bold = dim = False
            elif 30 <= code <= 37:
                colour = PALETTE[code - 30]
            elif 90 <= code <= 97:
                colour = BRIGHT[code - 90]
            elif code == 39:
                colour = FG
            elif code == 38 and i + 2 < len(codes) and codes[i + 1] == 5:
                n = codes[i + 2]
                colour = PALETTE[n % 8] if n < 16 else FG
                i += 2
            i += 1
        pos = match.end()
    if pos < len(line):
        yield line[pos:], colour, bold, dim


def render(out, columns, panes):
    font = ImageFont.truetype(FONT, SIZE)
    bold_font = ImageFont.truetype(BOLD, SIZE)
    cell_w = font.getbbox("M")[2]
    cell_h = SIZE + 4
    texts = []
    for title, path in panes:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().rstrip("\n").split("\n")
        while lines and not SGR.sub("", lines[-1]).strip():
            lines.pop()
        texts.append((title, lines))
    width_chars = max(len(SGR.sub("", l)) for _, ls in texts for l in ls + [""])
    width_chars = max(width_chars, max(len(t) for t, _ in texts)) + 2
    height_lines = max(len(ls) for _, ls in texts) + 2
    pane_w, pane_h = width_chars * cell_w, height_lines * cell_h
    rows = (len(texts) + columns - 1) // columns
    gap = 6
    image = Image.new("RGB", (columns * pane_w + (columns + 1) * gap,
                              rows * pane_h + (rows + 1) * gap), (12, 12, 16))
    draw = ImageDraw.Draw(image)
    for index, (title, lines) in enumerate(texts):
        x0 = gap + (index % columns) * (pane_w + gap)
        y0 = gap + (index // columns) * (pane_h + gap)
        draw.rectangle([x0, y0, x0 + pane_w - 1, y0 + pane_h - 1], fill=BG)
        draw.rectangle([x0, y0, x0 + pane_w - 1, y0 + cell_h], fill=TITLE_BG)
        draw.text((x0 + cell_w, y0 + 2), title, font=bold_font, fill=(255, 255, 255))
        for row, line in enumerate(lines):
            x = x0 + cell_w
            y = y0 + (row + 1) * cell_h + cell_h // 2
            for text, colour, bold, dim in spans(line):
                if dim:
                    colour = tuple(c * 6 // 10 for c in colour)
                draw.text((x, y), text, font=bold_font if bold else font, fill=colour)
                x += len(text) * cell_w
    image.save(out)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    render(sys.argv[1], int(sys.argv[2]), [a.split("=", 1) for a in sys.argv[3:]])
