"""Line-level checks: forms the reader reads one way and some firmware could read another.

The reader (:func:`sim_bridge.gcode.parse_line`) already sees through lower case, spacing, leading zeros,
line numbers and checksums, and ``;`` comments; the command checks then judge the normalised command. What
is left are lines whose meaning depends on the firmware: text in parentheses (a comment for this reader,
live words for a firmware built without parenthesis comments), two commands or a repeated word on one line
(firmwares disagree on which one counts), characters outside ASCII in a command, and a checksum that does
not match (the line was changed after it was numbered). Each is blocked.
"""

from __future__ import annotations

import re

from safety.rules import Finding
from sim_bridge import failures as fail
from sim_bridge.gcode import _TEXT_COMMANDS, _WORD_RE, Command

_HIDDEN_WORD_RE = re.compile(r"[A-Za-z][ \t]*[-+]?\.?[0-9]")
"""A G-code word (letter then number) inside a parenthesised comment."""



def line_findings(raw: str, cmd: Command | None, checksum_bad: bool) -> list[Finding]:
    """Disguise findings for one raw line and the command the reader made of it."""
    found: list[Finding] = []
    if checksum_bad:
        found.append((fail.CHECKSUM_MISMATCH, "checksum = XOR of the bytes before '*'", "mismatch",
                      "the line's checksum does not match its text: it was changed after it was numbered"))
    if cmd is None or not cmd.code:
        return found
    semi = raw.find(";")
    body = raw if semi < 0 else raw[:semi]
    if "(" in body:
        hidden, unclosed = _paren_text(body)
        if unclosed:
            found.append((fail.HIDDEN_IN_COMMENT, "parentheses closed on the same line", "unclosed '('",
                          "an unclosed '(' hides the rest of the line from the validator; a firmware without "
                          "parenthesis comments would run it"))
        elif _HIDDEN_WORD_RE.search(hidden):
            found.append((fail.HIDDEN_IN_COMMENT, "no G-code words inside ( )", f"({hidden.strip()[:60]})",
                          "G-code words inside a parenthesised comment: a firmware without parenthesis "
                          "comments would run them"))
    if cmd.is_extended or cmd.code in _TEXT_COMMANDS:
        return found
    if not body.isascii():
        found.append((fail.AMBIGUOUS_LINE, "ASCII only in commands", "non-ASCII character",
                      "a character outside ASCII in a command: firmwares read it differently"))
    text = cmd.text
    if '"' in text or "=" in text:
        return found
    seen: set[str] = set()
    for letter, number in _WORD_RE.findall(text.upper()):
        if not number:
            continue
        if letter in "GMN" and not (letter == "N" and cmd.code == "M110"):  # M110's N is the number to set
            found.append((fail.AMBIGUOUS_LINE, "one command per line", f"{letter}{number}",
                          f"a second command word {letter}{number} on the line: some firmwares run both"))
        elif letter in seen:
            found.append((fail.AMBIGUOUS_LINE, "each word once per line", f"{letter} repeated",
                          f"the word {letter} appears twice: firmwares disagree on which value counts"))
        seen.add(letter)
    return found


def _paren_text(body: str) -> tuple[str, bool]:
    """Text inside parentheses (nested ones flattened) and whether a '(' is left open."""
    inside: list[str] = []
    depth = 0
    for ch in body:
        if ch == "(":
            depth += 1
            inside.append(" ")
        elif ch == ")" and depth:
            depth -= 1
            inside.append(" ")
        elif depth:
            inside.append(ch)
    return "".join(inside), depth > 0
