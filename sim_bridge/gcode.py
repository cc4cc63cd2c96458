"""G-code reader and writer.

The reader streams a program and yields one :class:`Command` per line that holds a command, with its
1-based line number. It accepts what real slicers and people write (see ``shared/data/wild-gcode``):
lower case, missing spaces (``G1X5Y5``), ``;`` and ``( … )`` comments (nested, as Skeinforge writes them),
RepRap line numbers and checksums (``N12 G1 X5*85``), CRLF and mixed line endings, Klipper extended
commands (``SET_VELOCITY_LIMIT ACCEL=500``, ``print_start bed=70``) and Bambu's long lines. Bad input —
binary data, NUL bytes, invalid UTF-8, an over-long line — gives a :class:`GcodeError` or a
:class:`GcodeWarning` naming the file and line, never a crash or a hang.

The writer is deterministic: the same commands always give the same bytes.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

MAX_LINE_BYTES = 256 * 1024
"""Longest line accepted. Bambu Studio writes ~10k-character lines; a thumbnail line is never this long."""

_WORD_RE = re.compile(r"([A-Z])[ \t]*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))?")
_CLASSIC_RE = re.compile(r"([A-Z])[ \t]*([0-9]+(?:\.[0-9]+)?)")
"""A classic command: one letter (not a run of letters, as in ``PRINT_START``), then a number."""
_EXTENDED_ARG_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S*)")
_TEXT_COMMANDS = frozenset({"M23", "M28", "M30", "M32", "M117", "M118", "M115", "M1002"})
"""Commands whose argument is free text (file names, messages), not letter/number words."""


GCODE_SUFFIXES = frozenset({".gcode", ".gco", ".g", ".nc"})
"""File-name endings that make a one-line string a path (:func:`program_path`)."""
MAX_PATH_CHARS = 1024
"""A string this long or longer is program text, never a file name."""


def program_path(program: object) -> Path | None:
    """The file a program names, or None when it is the program itself: the one rule of every backend.

    A path object is a path. A str is a file name only when it is one short line (no line break, under
    :data:`MAX_PATH_CHARS` characters) ending in a G-code suffix (:data:`GCODE_SUFFIXES`); anything else is
    program text (a model's completion can be one long line of junk). Bytes are always program text.

    >>> program_path("/tmp/cube.nc"), program_path("G28 ; home.nc\\nG1 X1"), program_path(b"cube.gcode")
    (PosixPath('/tmp/cube.nc'), None, None)
    """
    if isinstance(program, os.PathLike):
        return Path(program)
    if (isinstance(program, str) and "\n" not in program and "\r" not in program
            and len(program) < MAX_PATH_CHARS and Path(program).suffix.lower() in GCODE_SUFFIXES):
        return Path(program)
    return None


def program_source(program: str | os.PathLike[str] | bytes, name: str | None = None) -> tuple[bytes, str]:
    """The program's bytes and its name, by :func:`program_path`'s rule: a file's bytes and (unless
    ``name`` is given) its file name; program text as UTF-8 and ``name`` or ``"<string>"``. A named file that
    does not exist raises :class:`GcodeError` naming it (it is not run as a one-line program)."""
    path = program_path(program)
    if path is not None:
        if not path.is_file():
            raise GcodeError(str(path), 0, "no such file")
        return path.read_bytes(), name or path.name
    if isinstance(program, bytes):
        return program, name or "<string>"
    if not isinstance(program, str):
        raise TypeError(f"a program is a path, str or bytes, not {type(program).__name__}")
    return program.encode("utf-8"), name or "<string>"


class GcodeError(ValueError):
    """Input that cannot be read as G-code; the message names the file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.reason = message
        super().__init__(f"{source}:{line}: {message}")


@dataclass(frozen=True, slots=True)
class GcodeWarning:
    """Something in the input the reader tolerated but the user may want to know about."""

    source: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: warning: {self.message}"


@dataclass(slots=True)
class Command:
    """One command of a program.

    ``code`` is upper case: ``G1``, ``M104``, ``T0``, ``G29.2`` or an extended command name such as
    ``SET_VELOCITY_LIMIT``. ``params`` holds letter/number words of classic commands (a letter written
    without a number, as in ``G28 X``, maps to ``nan``); ``args`` holds ``KEY=VALUE`` arguments of extended
    commands (keys upper-cased, values as written). ``text`` is everything after the code, comments removed.
    """

    line: int
    code: str
    params: dict[str, float] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    text: str = ""

    @property
    def is_extended(self) -> bool:
        """True for Klipper-style extended commands (``NAME KEY=VALUE``)."""
        return not _is_classic_code(self.code)

    def get(self, letter: str, default: float | None = None) -> float | None:
        """The number written after ``letter`` (``None`` or ``default`` if absent or valueless)."""
        value = self.params.get(letter)
        if value is None or math.isnan(value):
            return default
        return value


def _is_classic_code(code: str) -> bool:
    return len(code) >= 2 and code[0].isalpha() and code[1].isdigit()


def _checksum(data: str) -> int:
    value = 0
    for byte in data.encode("latin-1", "replace"):
        value ^= byte
    return value


def _strip_paren_comments(text: str) -> tuple[str, str]:
    """Remove ``( … )`` comments, nested ones too; returns (code, comment)."""
    code: list[str] = []
    comment: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
            if depth > 1:
                comment.append(ch)
        elif ch == ")" and depth > 0:
            depth -= 1
            if depth > 0:
                comment.append(ch)
        elif depth:
            comment.append(ch)
        else:
            code.append(ch)
    return "".join(code), "".join(comment).strip()


def parse_line(raw: str, line: int = 1, source: str = "<string>",
               warnings: list[GcodeWarning] | None = None, keep_comments: bool = False) -> Command | None:
    """Parse one line of G-code; ``None`` for a blank or comment-only line.

    With ``keep_comments`` a comment-only line gives a command with an empty ``code`` (slicers put layer
    and feature markers such as ``;LAYER_CHANGE`` there).

    Comments are returned on the command (or dropped with blank lines); a bad checksum adds a warning.

    >>> parse_line("g1x5 y-2.5E.01 ; perimeter").params
    {'X': 5.0, 'Y': -2.5, 'E': 0.01}
    >>> parse_line("N12 G1 X5*85").code
    'G1'
    >>> parse_line("print_start bed=70 EXTRUDER=210").args
    {'BED': '70', 'EXTRUDER': '210'}
    """
    semi = raw.find(";")
    if semi == 0:
        comment = raw[1:].strip()
        return Command(line, "", {}, {}, comment, "") if keep_comments and comment else None
    if semi > 0:
        comment = raw[semi + 1:].strip()
        body = raw[:semi]
    else:
        comment = ""
        body = raw
    if "(" in body:
        body, paren_comment = _strip_paren_comments(body)
        comment = f"{paren_comment} {comment}".strip() if comment else paren_comment
    body = body.strip()
    if not body:
        return Command(line, "", comment=comment) if keep_comments and comment else None
    if body[0] in "Nn" and len(body) > 1 and (body[1].isdigit() or body[1] in " \t"):
        star = body.rfind("*")
        if star > 0:
            digits = body[star + 1:].strip()
            # isascii: str.isdigit() is also true of '³' and '١', which int() refuses (a fuzz finding).
            if (digits.isascii() and digits.isdigit() and warnings is not None
                    and _checksum(body[:star]) != int(digits)):
                warnings.append(GcodeWarning(source, line, f"checksum mismatch: '*{digits}' given, "
                                             f"{_checksum(body[:star])} computed; line kept"))
            body = body[:star]
        match = re.match(r"[Nn][ \t]*[-+]?[0-9]+[ \t]*", body)
        body = body[match.end():] if match else body[1:]
        if not body:
            return None
    upper = body.upper()
    match = _CLASSIC_RE.match(upper)
    if match:
        number = match.group(2)
        if number[0] == "0" and len(number) > 1:
            if "." not in number:
                number = str(int(number))
            else:
                whole, frac = number.split(".")
                number = f"{int(whole)}.{frac}"
        end = match.end()
        code = match.group(1) + number
        rest = body[end:]
        if code in _TEXT_COMMANDS:
            return Command(line, code, {}, {}, comment, rest.strip())
        rest_upper = upper[end:]
        if "=" in rest_upper:
            return Command(line, code, {}, _extended_args(rest), comment, rest.strip())
        params = {letter: float(value) if value else math.nan for letter, value in _WORD_RE.findall(rest_upper)}
        return Command(line, code, params, {}, comment, rest.strip())
    # Extended (Klipper-style) command: first word is the name, then KEY=VALUE pairs.
    parts = body.split(None, 1)
    name = parts[0].upper()
    rest = parts[1] if len(parts) > 1 else ""
    return Command(line, name, {}, _extended_args(rest), comment, rest.strip())


def _extended_args(rest: str) -> dict[str, str]:
    return {key.upper(): value.strip("\"'") for key, value in _EXTENDED_ARG_RE.findall(rest)}


class GcodeReader:
    """Stream commands from a file, bytes, a string or an iterable of lines.

    Iterating yields :class:`Command` objects; problems that do not stop reading collect in
    ``warnings``. Reading a file never loads it whole and never hangs on a long line. Lines end at LF, CRLF,
    a lone CR or CR CR LF; with ``lf_only`` at LF alone and a CR stays in its line, as Prunt reads a file.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | Iterable[str], *,
                 name: str | None = None, max_line_bytes: int = MAX_LINE_BYTES,
                 keep_comments: bool = False, lf_only: bool = False) -> None:
        self._source = source
        self.keep_comments = keep_comments
        self.lf_only = lf_only
        self.max_line_bytes = max_line_bytes
        # The one path-or-text rule of every backend (program_path); text given with a name is text.
        self._is_path = not isinstance(source, bytes) and program_path(source) is not None
        if self._is_path:
            self.name = name or str(source)
        else:
            self.name = name or "<string>"
        self.warnings: list[GcodeWarning] = []
        self.lines_read = 0
        self.bytes_read = 0
        self.total_bytes = len(source) if isinstance(source, bytes) else 0
        self.progress: Callable[[int, int], None] | None = None
        """Called as ``progress(bytes_read, total_bytes)`` after each chunk of a file is read."""
        self._bad_utf8 = 0

    @property
    def size_bytes(self) -> int:
        """The input's size, when known before reading (bytes, or a file), else 0."""
        if isinstance(self._source, bytes):
            return len(self._source)
        if self._is_path:
            try:
                return Path(self._source).stat().st_size  # type: ignore[arg-type]
            except OSError:
                return 0
        return 0

    def _raw_lines(self, blocks: bool = False) -> Iterator[str | LineBlock]:
        src = self._source
        if isinstance(src, bytes):
            yield from _text_lines(io.BytesIO(src), self, blocks)
        elif self._is_path:
            path = Path(src)
            if not path.is_file():
                raise GcodeError(str(path), 0, "no such file")
            self.total_bytes = path.stat().st_size
            with path.open("rb") as fh:
                yield from _text_lines(fh, self, blocks)
        elif isinstance(src, str):
            # The endings of _EOL_STR_RE, as for bytes (str.splitlines would also split on form feeds and
            # U+2028, numbering lines differently from the same text read as bytes).
            lines = src.split("\n") if self.lf_only else _EOL_STR_RE.split(src)
            if lines[-1] == "":
                lines.pop()
            yield from lines
        else:
            yield from src

    def numbered_lines(self) -> Iterator[tuple[int, str]]:
        """Each line's 1-based number and text (ending removed), after the NUL, length and UTF-8 checks."""
        return self._numbered(False)  # type: ignore[return-value]

    def numbered_blocks(self) -> Iterator[tuple[int, str | LineBlock]]:
        """As :meth:`numbered_lines`, but a chunk of a file or bytes whose lines are all ASCII with LF
        endings comes whole, as a :class:`LineBlock` numbered by its first line (for
        :func:`sim_bridge.move_scan.scan_moves`); other lines come one by one as text."""
        return self._numbered(not self.lf_only)

    def _numbered(self, blocks: bool) -> Iterator[tuple[int, str | LineBlock]]:
        name = self.name
        lf_only = self.lf_only
        line_no = 0
        for text in self._raw_lines(blocks):
            if type(text) is LineBlock:
                yield line_no + 1, text
                line_no += text.count
                continue
            line_no += 1
            if "\0" in text:
                raise GcodeError(name, line_no, "NUL character in line: binary data, not G-code")
            if lf_only:
                text = text.removesuffix("\n")
            elif "\r" in text or "\n" in text:
                text = text.rstrip("\r\n")
                if "\r" in text:
                    # A lone CR (old Mac line ending) inside a line given by the caller: each part is a line.
                    for index, sub in enumerate(text.split("\r")):
                        line_no += index > 0
                        yield line_no, sub
                    continue
            yield line_no, text
        if self._bad_utf8 > 3:
            self.warnings.append(GcodeWarning(name, line_no, f"{self._bad_utf8} lines in all had invalid UTF-8"))
        if line_no == 0:
            self.warnings.append(GcodeWarning(name, 0, "file is empty: no commands"))
        self.lines_read = line_no

    def __iter__(self) -> Iterator[Command]:
        name = self.name
        warnings = self.warnings
        keep = self.keep_comments
        for line_no, text in self.numbered_lines():
            cmd = parse_line(text, line_no, name, warnings, keep)
            if cmd is not None:
                yield cmd


_EOL_RE = re.compile(rb"\r{0,2}\n|\r")
_EOL_STR_RE = re.compile(r"\r{0,2}\n|\r")
_LF_RE = re.compile(rb"\n")
"""Line endings: LF, CRLF, a lone CR (old Mac files), and CR CR LF (a CRLF file converted to CRLF once more,
as in IceSL and Creality Print output) counted as one ending, as ``grep -n`` and Klipper count it."""
_READ_CHUNK_BYTES = 64 * 1024


def _decode(raw: bytes, line_no: int, reader: GcodeReader) -> str:
    if b"\0" in raw:
        raise GcodeError(reader.name, line_no, "NUL byte in line: this is binary data, not text G-code "
                         "(a binary .bgcode file must be converted to text first)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        reader._bad_utf8 += 1
        if reader._bad_utf8 <= 3:
            reader.warnings.append(GcodeWarning(reader.name, line_no, f"invalid UTF-8 at byte {exc.start}; "
                                                "read as Latin-1"))
        return raw.decode("latin-1")


class LineBlock(NamedTuple):
    """Whole lines of a file, ASCII with LF endings (each line ends with one), checked as lines are."""

    data: bytes
    count: int
    """Number of lines."""


def _text_lines(fh: io.BufferedIOBase | io.BytesIO, reader: GcodeReader, blocks: bool = False
                ) -> Iterator[str | LineBlock]:
    """Decoded lines without their endings, with the checks of :class:`GcodeReader`.

    Chunks with only LF endings and no NUL byte (nearly all slicer output) are split and decoded whole;
    others go line by line through ``_EOL_RE``. With ``blocks``, such a chunk that is all ASCII comes as
    one :class:`LineBlock`.
    """
    limit = reader.max_line_bytes
    eol = _LF_RE if reader.lf_only else _EOL_RE
    pending = b""
    line_no = 0
    while True:
        chunk = fh.read(_READ_CHUNK_BYTES)
        reader.bytes_read += len(chunk)
        if reader.progress is not None:
            reader.progress(reader.bytes_read, reader.total_bytes)
        data = pending + chunk
        if (reader.lf_only or b"\r" not in data) and b"\0" not in data:
            parts = data.split(b"\n")
            if chunk:
                pending = parts.pop()
            else:
                pending = b""
                if parts[-1] == b"":
                    parts.pop()
            if parts and max(map(len, parts)) > limit:
                first = next(i for i, part in enumerate(parts) if len(part) > limit)
                raise GcodeError(reader.name, line_no + first + 1, _too_long_message(limit))
            joined = b"\n".join(parts)
            if blocks and parts and joined.isascii():
                line_no += len(parts)
                yield LineBlock(joined + b"\n", len(parts))
            else:
                try:
                    lines = joined.decode("utf-8").split("\n") if parts else []
                except UnicodeDecodeError:
                    lines = [_decode(part, line_no + i + 1, reader) for i, part in enumerate(parts)]
                line_no += len(lines)
                yield from lines
        else:
            # CRs at the end may start a CRLF or CR CR LF: decide once more data is read (or the input ends).
            hold = 0 if not chunk or reader.lf_only else 2 if data.endswith(b"\r\r") else 1 if data.endswith(b"\r") else 0
            start = 0
            for match in eol.finditer(data, 0, len(data) - hold):
                line_no += 1
                if match.start() - start > limit:
                    raise GcodeError(reader.name, line_no, _too_long_message(limit))
                yield _decode(data[start:match.start()], line_no, reader)
                start = match.end()
            pending = data[start:]
            if not chunk and pending:
                line_no += 1
                if len(pending) > limit:
                    raise GcodeError(reader.name, line_no, _too_long_message(limit))
                yield _decode(pending, line_no, reader)
                pending = b""
        if not chunk:
            return
        if len(pending) > limit + 2:
            raise GcodeError(reader.name, line_no + 1, _too_long_message(limit))


def _too_long_message(limit: int) -> str:
    return f"line is longer than {limit} bytes (limit max_line_bytes); is this really a G-code file?"


def read_gcode(source: str | os.PathLike[str] | bytes | Iterable[str], *, name: str | None = None
               ) -> tuple[list[Command], list[GcodeWarning]]:
    """Read a whole program: its commands and the reader's warnings."""
    reader = GcodeReader(source, name=name)
    commands = list(reader)
    return commands, reader.warnings


def format_number(value: float, decimals: int = 5) -> str:
    """Shortest fixed-point text for ``value`` with at most ``decimals`` decimals.

    >>> format_number(1.50000), format_number(-0.0), format_number(12.0)
    ('1.5', '0', '12')
    """
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def _exact_number(value: float) -> str:
    """Shortest fixed-point text with at least 5 decimals' precision that reads back as exactly ``value``."""
    for decimals in range(5, 18):
        text = format_number(value, decimals)
        if float(text) == value:
            return text
    return format_number(value, 17)


_PARAM_ORDER = "XYZEABCIJKRFPST"


def format_command(code: str, params: dict[str, float] | None = None, *, args: dict[str, str] | None = None,
                   comment: str = "", decimals: int | None = 5) -> str:
    """Format one command deterministically (letters in X Y Z E … F order, then the rest A–Z).

    ``decimals=None`` writes each number with as many decimals as it needs to read back exactly. An
    argument value holding whitespace is quoted (``MSG="Heating bed"``).

    >>> format_command("G1", {"F": 1800, "X": 10, "E": 0.41582})
    'G1 X10 E0.41582 F1800'
    >>> format_command("SET_VELOCITY_LIMIT", args={"ACCEL": "500"})
    'SET_VELOCITY_LIMIT ACCEL=500'
    """
    words = [code]
    if params:
        for letter in sorted(params, key=lambda k: (_PARAM_ORDER.find(k) % 100 if k in _PARAM_ORDER else 50, k)):
            value = params[letter]
            if math.isnan(value):
                words.append(letter)
            else:
                number = _exact_number(value) if decimals is None else format_number(value, decimals)
                words.append(letter + number)
    if args:
        words.extend(f"{key}={_quote_arg(value)}" for key, value in args.items())
    line = " ".join(words)
    return f"{line} ; {comment}" if comment else line


def _quote_arg(value: str) -> str:
    if not value or not any(ch.isspace() for ch in value):
        return value
    return f"'{value}'" if '"' in value else f'"{value}"'


def write_gcode(commands: Iterable[Command | str], path: str | os.PathLike[str]) -> None:
    """Write commands (or pre-formatted lines) to ``path`` with LF line endings."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for cmd in commands:
            fh.write((cmd if isinstance(cmd, str) else to_text(cmd)) + "\n")


def to_text(cmd: Command) -> str:
    """The canonical text of a parsed command (round-trips through :func:`parse_line`)."""
    if cmd.code in _TEXT_COMMANDS:
        line = f"{cmd.code} {cmd.text}".rstrip()
        return f"{line} ; {cmd.comment}" if cmd.comment else line
    return format_command(cmd.code, cmd.params, args=cmd.args, comment=cmd.comment, decimals=None)
