"""Slicer layer markers: the comment each slicer family writes where a layer starts.

The simulator counts layers by these markers when a program has them (else by rising Z), and the real-world
importer counts a file's layers by the family with the most markers. Every family here marks the *start* of
a layer before its first move, which is what the simulator needs; all five are honoured by both.

A marker is matched on the comment text as :func:`sim_bridge.gcode.parse_line` gives it (without the ``;``
or the parentheses, stripped), or on a whole stripped line with :func:`match_line`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sim_bridge.gcode import _strip_paren_comments


@dataclass(frozen=True)
class LayerMarkerFamily:
    """One family of layer markers."""

    name: str
    """Family name (``layer_change``, ``cura``, …)."""
    slicers: str
    """Who writes it."""
    opener: str
    """How its comment opens in the file: ``;`` or ``(``."""
    prefix: str
    """The comment text starts with this (a cheap test before :attr:`pattern`)."""
    pattern: re.Pattern[str]
    """The whole comment text; a numbered family captures its layer number in group 1."""
    numbered: bool = False
    """The marker carries the layer's number (each number counts once)."""


LAYER_MARKERS: tuple[LayerMarkerFamily, ...] = (
    LayerMarkerFamily("layer_change", "PrusaSlicer, SuperSlicer, OrcaSlicer, Creality Print", ";",
                      "LAYER_CHANGE", re.compile(r"LAYER_CHANGE$")),
    LayerMarkerFamily("cura", "Cura, ideaMaker", ";", "LAYER:", re.compile(r"LAYER:\s*(-?\d+)$"), numbered=True),
    LayerMarkerFamily("bambu", "BambuStudio", ";", "CHANGE_LAYER", re.compile(r"CHANGE_LAYER$")),
    LayerMarkerFamily("icesl", "IceSL", ";", "<layer>", re.compile(r"<layer>$")),
    LayerMarkerFamily("skeinforge", "Skeinforge (``(<layer> z )``)", "(", "<layer>", re.compile(r"<layer>")),
)
"""Every family, in the order they are tried."""

_PREFIXES: tuple[str, ...] = tuple(sorted({f.prefix for f in LAYER_MARKERS}))


def is_layer_marker(comment: str) -> bool:
    """Whether a comment-only line's text (as the reader gives it) marks the start of a layer.

    >>> is_layer_marker("LAYER_CHANGE"), is_layer_marker("LAYER:3"), is_layer_marker("LAYER_HEIGHT:0.2")
    (True, True, False)
    """
    if not comment.startswith(_PREFIXES):
        return False
    return any(comment.startswith(f.prefix) and f.pattern.match(comment) for f in LAYER_MARKERS)


def match_line(line: str) -> tuple[LayerMarkerFamily, re.Match[str]] | None:
    """The family and match of a stripped line that is a layer marker, else ``None``.

    >>> family, match = match_line(";LAYER:12")
    >>> family.name, match.group(1)
    ('cura', '12')
    >>> match_line("(<layer> 0.3 )")[0].name
    'skeinforge'
    """
    if line.startswith(";"):
        opener, text = ";", line[1:].strip()
    elif line.startswith("("):
        opener, text = "(", _strip_paren_comments(line)[1]
    else:
        return None
    if not text.startswith(_PREFIXES):
        return None
    for family in LAYER_MARKERS:
        if family.opener == opener and text.startswith(family.prefix):
            match = family.pattern.match(text)
            if match:
                return family, match
    return None
