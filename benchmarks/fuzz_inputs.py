"""The fuzz campaign's inputs: the seed corpus and the mutations (see ``benchmarks/fuzz_campaign.py``).

Every input is a pure function of ``(campaign seed, index)`` and the corpus: ``make_input`` draws from its
own ``random.Random(f"{seed}:{index}")``, so any input can be regenerated alone (``--replay INDEX``) and a
campaign can stop and resume at any chunk without changing what the later inputs are.

Seeds are the safety golden files (must_allow, must_block), the test fixtures (``tests/fixtures/**``) and the
wild corpus (its ``MANIFEST.json``). A seed-based input is a window of 20-400 lines of one file (the whole
file when it is short), usually after the file's own start code (homing, heating), so the simulator gets
past "home first" and the mutations reach the moves; then 1-4 stacked mutations. A few inputs are pure
random bytes or random command lines built from the command table.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sim_bridge.commands import COMMANDS
from tests.conftest import WILD_DIR  # the one rule for finding the wild corpus

ROOT = Path(__file__).resolve().parents[1]
PRINTERS = ("ender3-klipper", "corexy300-klipper", "mk3s-marlin", "prunt-sim")
KLIPPER_PRINTERS = ("ender3-klipper", "corexy300-klipper")
"""The printers the Klippy batch backend runs (it writes a Klipper printer.cfg for them)."""
MIN_WINDOW_LINES, MAX_WINDOW_LINES = 20, 400
KLIPPY_MAX_LINES = 60
"""Klippy inputs stay short: each Klippy run starts a host (~0.5 s) and a failure costs prefix runs."""
PRELUDE_MAX_LINES = 60
"""Most command lines of a file's start code put before a window."""
_NUMBER_RE = re.compile(rb"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_E_RE = re.compile(rb"^\s*G[01]\b.*?\bE(-?[0-9.]+)", re.IGNORECASE)
_START_DONE_RE = re.compile(rb"^\s*(M109|M190|TEMPERATURE_WAIT|PRINT_START|START_PRINT|G28)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Seed:
    """One corpus file, split once into lines (each without its LF; a CR stays, as in a CRLF file)."""

    name: str
    origin: str
    lines: list[bytes]
    prelude: list[bytes]
    """The file's start code: its command lines up to the last homing/heating wait near the top."""


@dataclass
class FuzzInput:
    """One generated input and how it was made."""

    index: int
    data: bytes
    seeds: list[str]
    mutations: list[str]
    form: str
    """How targets get it: ``bytes``, ``str`` (decoded text), ``path`` (a file) or ``lines`` (an iterable of
    str, the reader only)."""
    printer: str
    deposition: bool
    klippy: bool = False
    reader_options: dict[str, object] = field(default_factory=dict)


def _prelude(lines: list[bytes]) -> list[bytes]:
    commands = [(i, line) for i, line in enumerate(lines[:3000]) if line.strip() and not line.lstrip().startswith(b";")]
    last = max((n for n, (_i, line) in enumerate(commands) if _START_DONE_RE.match(line)), default=-1)
    return [line for _i, line in commands[: last + 1]][-PRELUDE_MAX_LINES:]


def load_seeds() -> list[Seed]:
    """The corpus, in a fixed order (the campaign's inputs depend on it; the report records its size)."""
    found: list[tuple[str, str, Path]] = []
    golden = ROOT / "tests" / "safety_golden"
    for kind in ("must_allow", "must_block"):
        found += [(f"golden/{kind}/{p.name}", f"golden_{kind}", p) for p in sorted((golden / kind).glob("*.gcode"))]
    fixtures = ROOT / "tests" / "fixtures"
    found += [(f"fixtures/{p.relative_to(fixtures)}", "fixture", p) for p in sorted(fixtures.rglob("*.gcode"))]
    wild = WILD_DIR
    if (wild / "MANIFEST.json").is_file():
        manifest = json.loads((wild / "MANIFEST.json").read_text())
        found += [(f"wild/{e['file']}", "wild", wild / e["file"]) for e in manifest["files"]]
    seeds = []
    for name, origin, path in found:
        lines = path.read_bytes().split(b"\n")
        seeds.append(Seed(name, origin, lines, _prelude(lines)))
    return seeds


# -- tokens ------------------------------------------------------------------------------------------
CLASSIC_CODES = sorted(c for c in COMMANDS if re.fullmatch(r"[GMT][0-9.]+", c))
EXTENDED_CODES = sorted(c for c in COMMANDS if c not in CLASSIC_CODES)
ODD_CODES = ["G999", "M9999", "G1.5", "G01", "g1", "m104", "T3", "T-1", "G0001", "M862.9", "G", "M", "N", "*",
             "PRINT_START", "START_PRINT", "print_end", "_HIDDEN", "M117.1", "G28.1", "G29.2", "M486"]
LETTERS = "XYZEFSPRTIJKABCDHLOQUVW"
EXT_KEYS = ["ACCEL", "VELOCITY", "SQUARE_CORNER_VELOCITY", "ACCEL_TO_DECEL", "MINIMUM_CRUISE_RATIO", "Z",
            "Z_ADJUST", "MOVE", "MOVE_SPEED", "NAME", "HEATER", "TARGET", "SENSOR", "MINIMUM", "MAXIMUM", "FAN",
            "SPEED", "EXTRUDER", "BED", "X", "Y", "E", "STEPPER", "DISTANCE", "VALUE", "MSG", "LENGTH", "PIN"]
EXTREME_NUMBERS = ["1e308", "-1e308", "1e309", "-1e309", "nan", "NaN", "inf", "-inf", "Infinity", "-0", "-0.0",
                   "0", "-1", "1e-320", "5e-324", "2.2250738585072014e-308", "9" * 40, "-" + "9" * 40,
                   "0." + "0" * 60 + "1", "1" + "0" * 400, "4294967296", "-2147483649", "18446744073709551616",
                   ".", "-", "+", "1e", "1e+", "..5", "1..2", "0x1F", "1_000", "\u0661\u0662", "\uff11",
                   "1,5", "12abc", "--1", "+-1", "1e-9999", "1e9999"]
UNICODE_BITS = ["\u00e9", "\u0413", "\u2028", "\u2029", "\ufeff", "\U0001f600", "\u00a0", "\u200b", "\u0085",
                "\u000b", "\u000c", "\u001c", "\u202e", "\uff27\uff11"]


def _number(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.55:
        return f"{rng.uniform(-50, 350):.{rng.randint(0, 5)}f}"
    if r < 0.75:
        return str(rng.randint(-1000, 100_000))
    return rng.choice(EXTREME_NUMBERS)


def _checksum(line: str) -> int:
    value = 0
    for byte in line.encode("utf-8", "replace"):
        value ^= byte
    return value


def token_line(rng: random.Random) -> str:
    """A random command line: a classic or extended command (from the command table or an odd one) with
    random words, sometimes numbered and checksummed as a print host sends it, sometimes with a comment."""
    r = rng.random()
    if r < 0.5:
        code = rng.choice(CLASSIC_CODES)
    elif r < 0.85:
        code = rng.choice(EXTENDED_CODES)
    else:
        code = rng.choice(ODD_CODES)
    words = []
    for _ in range(rng.randint(0, 5)):
        if code[0] in "GMTgmt" and rng.random() < 0.85:
            letter = rng.choice(LETTERS)
            words.append(letter if rng.random() < 0.1 else letter + _number(rng))
        else:
            value = _number(rng) if rng.random() < 0.7 else rng.choice(["extruder", "heater_bed", '"a b"', "'x'",
                                                                          "", "=", "{x}", "[0]"])
            words.append(f"{rng.choice(EXT_KEYS)}={value}")
    sep = "" if rng.random() < 0.15 else " "
    line = sep.join([code, *words])
    if rng.random() < 0.2:
        line = f"N{rng.choice([rng.randint(0, 999), -1, 10**12])} {line}"
        star = _checksum(line) if rng.random() < 0.6 else rng.choice([rng.randint(0, 255), 256, -3, 99999])
        line = f"{line}*{star}"
    if rng.random() < 0.15:
        line += rng.choice([" ; comment", ";", " (paren)", " (unclosed", " ((nested) x)", " ; M112"])
    return line


# -- mutations ----------------------------------------------------------------------------------------
LineMutation = Callable[[random.Random, list[bytes], list[Seed]], list[bytes]]


def _some(rng: random.Random, lines: list[bytes]) -> int:
    return rng.randrange(len(lines)) if lines else 0


def mut_line_delete(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    for _ in range(rng.randint(1, 5)):
        if lines:
            start = _some(rng, lines)
            del lines[start:start + rng.choice([1, 1, 1, 2, 10])]
    return lines


def mut_line_duplicate(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    if lines:
        i = _some(rng, lines)
        block = lines[i:i + rng.choice([1, 1, 3, 20])]
        times = rng.choice([1, 2, 5, 50, 300]) if len(block) == 1 else rng.choice([1, 2, 5])
        lines[i:i] = block * times
    return lines


def mut_line_swap(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    for _ in range(rng.randint(1, 4)):
        if len(lines) > 1:
            i, j = _some(rng, lines), _some(rng, lines)
            lines[i], lines[j] = lines[j], lines[i]
    if len(lines) > 2 and rng.random() < 0.2:
        lines.reverse()
    return lines


def mut_number(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    for _ in range(rng.randint(1, 6)):
        with_numbers = [i for i in (_some(rng, lines) for _ in range(8)) if lines and _NUMBER_RE.search(lines[i])]
        if not with_numbers:
            return lines
        i = with_numbers[0]
        found = list(_NUMBER_RE.finditer(lines[i]))
        m = rng.choice(found)
        old = m.group()
        r = rng.random()
        if r < 0.6:
            new = rng.choice(EXTREME_NUMBERS).encode("utf-8")
        elif r < 0.8:
            try:
                value = float(old)
            except ValueError:
                value = 1.0
            new = repr(rng.choice([-value, value * 1e6, value * 1e-6, value + 1e-9, value * 1000.0])).encode()
        else:
            new = old + b"0" * rng.randint(1, 30) + b"1"  # many digits
        lines[i] = lines[i][: m.start()] + new + lines[i][m.end():]
    return lines


def mut_token_insert(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    for _ in range(rng.randint(1, 6)):
        token = token_line(rng).encode("utf-8")
        i = _some(rng, lines)
        if lines and rng.random() < 0.25:  # into an existing line, not as a line of its own
            cut = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:cut] + b" " + token + b" " + lines[i][cut:]
        else:
            lines.insert(i, token)
    return lines


def mut_control(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    """Control characters, NUL, invalid UTF-8, odd unicode, and CRLF / CR-only / mixed line endings."""
    kind = rng.choice(["nul", "ctrl", "bad_utf8", "unicode", "crlf", "cr_only", "mixed_eol", "bom", "crcrlf"])
    if not lines:
        lines = [b""]
    if kind == "crlf":
        return [line.rstrip(b"\r") + b"\r" for line in lines]
    if kind == "crcrlf":
        return [line.rstrip(b"\r") + b"\r\r" for line in lines]
    if kind == "cr_only":
        return [b"\r".join(line.rstrip(b"\r") for line in lines)]
    if kind == "bom":
        lines[0] = b"\xef\xbb\xbf" + lines[0]
        return lines
    for _ in range(rng.randint(1, 4)):
        i = _some(rng, lines)
        if kind == "mixed_eol":
            lines[i] += rng.choice([b"\r", b"\r\r", b"\rG1 X1"])
            continue
        insert = {"nul": b"\0", "ctrl": bytes([rng.choice([*range(1, 9), 11, 12, *range(14, 32), 127])]),
                  "bad_utf8": rng.choice([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80\x80", b"\xf8"]),
                  "unicode": rng.choice(UNICODE_BITS).encode("utf-8")}[kind]
        cut = rng.randint(0, len(lines[i]))
        lines[i] = lines[i][:cut] + insert + lines[i][cut:]
    return lines


def mut_long_line(rng: random.Random, lines: list[bytes], _seeds: list[Seed]) -> list[bytes]:
    """A very long line: mostly a few kB (Bambu-like), sometimes just under or just over the reader's limit."""
    r = rng.random()
    size = rng.randint(1000, 20_000) if r < 0.8 else rng.choice([256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1])
    pattern = rng.choice([b"G1 X1 Y1 ", b";", b"X", b"9", b" ", b"(", b"E0.1", b"\xe9", b"\t"])
    body = (pattern * (size // len(pattern) + 1))[:size]
    lines.insert(_some(rng, lines), rng.choice([b"G1 X", b";", b"", b"M117 ", b"RESPOND MSG="]) + body)
    return lines


def mut_splice(rng: random.Random, lines: list[bytes], seeds: list[Seed]) -> list[bytes]:
    other = rng.choice(seeds)
    start = rng.randrange(max(len(other.lines), 1))
    part = other.lines[start:start + rng.randint(5, 150)]
    how = rng.random()
    if how < 0.5:
        lines[_some(rng, lines):_some(rng, lines)] = part  # replace a span (maybe empty) with the other file's
    elif how < 0.8:
        lines += part
    else:
        merged: list[bytes] = []
        for a, b in zip(lines, part, strict=False):
            merged += [a, b]
        lines = merged + lines[len(part):]
    return lines


LINE_MUTATIONS: dict[str, LineMutation] = {
    "line_delete": mut_line_delete, "line_duplicate": mut_line_duplicate, "line_swap": mut_line_swap,
    "number": mut_number, "token_insert": mut_token_insert, "control_chars": mut_control,
    "long_line": mut_long_line, "splice": mut_splice,
}
BYTE_MUTATIONS = ("byte_flip", "truncate")
MUTATION_WEIGHTS = {"byte_flip": 12, "truncate": 6, "line_delete": 10, "line_duplicate": 8, "line_swap": 8,
                    "number": 22, "token_insert": 20, "control_chars": 8, "long_line": 2, "splice": 6}


def mut_bytes(rng: random.Random, data: bytes, kind: str) -> bytes:
    buf = bytearray(data)
    if kind == "truncate":
        return bytes(buf[: rng.randint(0, len(buf))])
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        if not buf:
            buf.append(rng.randrange(256))
            continue
        pos = rng.randrange(len(buf))
        op = rng.random()
        if op < 0.5:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.75:
            buf[pos] = rng.randrange(256)
        elif op < 0.9:
            buf.insert(pos, rng.randrange(256))
        else:
            del buf[pos]
    return bytes(buf)


def _window(rng: random.Random, seed: Seed, max_lines: int) -> list[bytes]:
    lines = seed.lines
    if len(lines) <= max_lines and rng.random() < 0.5:
        return list(lines)
    length = int(math.exp(rng.uniform(math.log(min(MIN_WINDOW_LINES, max_lines)), math.log(max_lines))))
    start = 0 if rng.random() < 0.2 else rng.randrange(max(len(lines) - length, 1))
    window = lines[start:start + length]
    if start > 0 and rng.random() < 0.75:
        # The file's start code, then its extruder position where the window starts (absolute E), so the
        # window's first moves run as in the file instead of stopping at "home first" or a huge extrusion.
        last_e = next((m.group(1) for line in reversed(lines[max(start - 2000, 0):start])
                       if (m := _E_RE.match(line))), None)
        window = [*seed.prelude, *([b"G92 E" + last_e] if last_e else []), *window]
    return window


def make_input(campaign_seed: int, index: int, seeds: list[Seed], klippy: bool = False) -> FuzzInput:
    """Input ``index`` of the campaign ``campaign_seed`` (the same every time)."""
    rng = random.Random(f"{campaign_seed}:{index}")
    printer = rng.choice(KLIPPER_PRINTERS if klippy else (*PRINTERS, "corexy300-klipper"))
    mutations: list[str] = []
    used: list[str] = []
    r = rng.random()
    max_lines = KLIPPY_MAX_LINES if klippy else MAX_WINDOW_LINES
    if r < 0.03 and not klippy:
        data = rng.randbytes(rng.randint(0, 4000))
        mutations = ["random_bytes"]
    elif r < 0.08:
        data = "\n".join(token_line(rng) for _ in range(rng.randint(1, max_lines // 2))).encode("utf-8")
        mutations = ["random_commands"]
    else:
        seed = rng.choice(seeds)
        used.append(seed.name)
        lines = _window(rng, seed, max_lines)
        if rng.random() < 0.04:
            mutations.append("none")
            n_mut = 0
        else:
            n_mut = 1 + (rng.random() < 0.45) + (rng.random() < 0.2) + (rng.random() < 0.1)
        kinds = rng.choices(list(MUTATION_WEIGHTS), weights=list(MUTATION_WEIGHTS.values()), k=n_mut)
        if klippy:
            kinds = [k for k in kinds if k != "long_line"]  # Klippy's prefix runs re-read every line
        for kind in (k for k in kinds if k in LINE_MUTATIONS):
            lines = LINE_MUTATIONS[kind](rng, lines, seeds)
            mutations.append(kind)
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.9 else b"")
        for kind in (k for k in kinds if k in BYTE_MUTATIONS):
            data = mut_bytes(rng, data, kind)
            mutations.append(kind)
    form = rng.choices(["bytes", "str", "path", "lines"], weights=[65, 15, 12, 8])[0]
    reader_options: dict[str, object] = {}
    if rng.random() < 0.2:
        reader_options = {"max_line_bytes": rng.choice([16, 80, 1024, 256 * 1024]),
                          "keep_comments": rng.random() < 0.5, "lf_only": rng.random() < 0.3}
    return FuzzInput(index, data, used, mutations, form, printer, rng.random() < 0.5, klippy, reader_options)
