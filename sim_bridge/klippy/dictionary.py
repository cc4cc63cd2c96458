"""The MCU data dictionary, derived from the installed Klippy host's own Python source.

A Klipper MCU describes itself to the host with a *data dictionary*: JSON that a firmware build writes
(``out/klipper.dict``) and the MCU sends at connect (``identify``). Klippy run with ``-o FILE`` talks to
no MCU and reads the dictionary from ``-d FILE`` instead. Its keys (Klipper's ``docs/Protocol.md``,
``docs/MCU_Commands.md``, and the host's ``msgproto.py`` that reads them):

- ``commands`` and ``responses``: message format → message id. A format is the message name followed by
  ``param=%type`` pairs (``%c`` 8-bit, ``%hu``/``%hi`` 16-bit, ``%u``/``%i`` 32-bit, ``%*s`` a byte
  buffer; every integer travels as the same variable-length quantity, so the type only bounds it). The
  host refuses a command it looks up when the format is not exactly the MCU's.
- ``enumerations``: names for parameter values; a parameter named ``pin`` or ``*_pin`` is encoded
  through the ``pin`` enumeration. A value ``[start, count]`` is a range: ``"gpiochip0/gpio0": [0, 32]``
  names 32 pins ``gpiochip0/gpio0`` … ``gpiochip0/gpio31``.
- ``config``: the firmware's constants (clock frequency, ADC and PWM ranges …).
- ``version``, ``build_versions``, ``app``: shown by the host in its log and status.

What this module reads in the host (every ``*.py`` under its ``klippy`` package, with :mod:`ast`):

- **Exact formats** the host looks up: the literal first argument of ``lookup_command`` and
  ``try_lookup_command``, both formats of ``lookup_query_command(command, response)``.
- **Commands sent only as text** (``add_config_cmd("config_stepper oid=%d step_pin=%s …" % …)`` and
  ``"allocate_oids count=%d" % …``): their name and parameter names, with types chosen as the firmware
  declares them: ``oid`` is ``%c``, a ``pin``/``*_pin`` parameter ``%u`` (it carries the ``pin``
  enumeration), any other ``%s`` value a byte buffer ``%*s``, everything else ``%u``. Where the same
  command is also looked up exactly, the exact format wins.
- **Plain command names** (``send_with_response("get_uptime", "uptime")``, ``create_command("get_clock")``).
- **Response names** the host registers handlers for (``register_response(handler, "analog_in_state",
  oid)``, ``send_with_response``'s second argument) with the parameters their handler reads
  (``params["value"]`` → ``value=%u``; ``oid=%c`` when the registration names an oid).
- **Constants** asked for without a default (``get_constant_float("CLOCK_FREQ")``): a dictionary without
  them stops the host at connect. Their values are a Linux-process MCU's (Klipper's ``src/linux``, the MCU
  that runs as a process on the host computer, the one Klipper's own test suite uses):

  - ``CLOCK_FREQ`` = 50 000 000: that MCU counts time in 20 ns ticks of the system clock;
  - ``ADC_MAX`` = 4095: it reads Linux IIO channels as 12-bit values;
  - ``PWM_MAX`` = 32768: its hardware PWM (sysfs) takes the duty as a 15-bit fraction;
  - ``STATS_SUMSQ_BASE`` = 256: the scheduler divides its sum of squared task times by 256 so the
    ``stats`` report fits 32 bits (the host multiplies it back);
  - ``MCU`` = ``linux``: the MCU type the host shows and some modules check.

  A constant the host asks for that this MCU does not have (``PCA9685_MAX`` of a Replicape cape,
  ``INDX_*`` of a toolboard) is left out: the host asks for it only when that hardware is configured.

The **pins** are the Linux-process MCU's: GPIO lines ``gpiochip0/gpio0`` … ``gpiochip7/gpio31``
(the character-device chips, 32 lines each; ``gpio0`` … ``gpio31`` are chip 0's lines by their short
names) and IIO ADC channels ``analog0`` … ``analog7``.

Two pitfalls are handled: a name that is both looked up as a command and registered as a response
(``trsync_state``: the host looks the response format up with ``lookup_command`` to build its C-side
dispatch) is kept as a response only; and message ids that fit one byte (−32 … 95 in the protocol's
variable-length encoding; older hosts accept only those) are handed out first, to the commands the host
sends during a print, then the configuration commands, then the responses. Ids 0 and 1 are the
protocol's fixed ``identify_response`` and ``identify``.

The dictionary depends only on the host, so it is cached per host version, under
``$LAYERLOOP_KLIPPY_CACHE`` or ``~/.cache/layerloop/klippy/<version>/dict.json``
(``$XDG_CACHE_HOME`` honoured); a cached file of an older derivation (:data:`DERIVATION_REVISION`) is
derived again. Command line: ``python -m sim_bridge.klippy dictionary [--out FILE]``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sim_bridge.klippy.host import KlippyHost, find_host

CACHE_ENV_VAR = "LAYERLOOP_KLIPPY_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/layerloop/klippy``)."""
DICTIONARY_NAME = "dict.json"
"""File name of a cached dictionary inside its version folder."""
DERIVATION_REVISION = 2
"""Revision of this module's derivation, kept in the dictionary (key ``layerloop``; the host ignores it): a
cached dictionary of an older revision is derived again, so a fix here reaches every cache."""

LINUX_MCU_CONSTANTS: dict[str, int | str] = {
    "CLOCK_FREQ": 50_000_000,
    "ADC_MAX": 4095,
    "PWM_MAX": 32768,
    "STATS_SUMSQ_BASE": 256,
    "MCU": "linux",
}
"""The Linux-process MCU's constants (why each has its value: the module docstring)."""
GPIO_CHIPS = 8
"""GPIO character-device chips the Linux-process MCU names (``gpiochip0`` … ``gpiochip7``)."""
GPIO_LINES_PER_CHIP = 32
"""Lines per chip (``gpio0`` … ``gpio31``)."""
ANALOG_CHANNELS = 8
"""IIO ADC channels (``analog0`` … ``analog7``)."""
ANALOG_PIN_START = GPIO_CHIPS * GPIO_LINES_PER_CHIP
"""Enumeration value of ``analog0`` (after the GPIO lines)."""

IDENTIFY_MESSAGES = {"identify_response offset=%u data=%.*s": 0, "identify offset=%u count=%c": 1}
"""The protocol's two fixed messages (response 0, command 1), the same in every MCU."""
SINGLE_BYTE_IDS = [*range(2, 96), *range(-32, 0)]
"""Message ids that encode in one byte, in the order they are handed out (0 and 1 are taken)."""

_LOOKUP_CALLS = ("lookup_command", "try_lookup_command")
_TEXT_COMMAND_RE = re.compile(r"^[a-z][a-z0-9_]*( [a-z][a-z0-9_]*=\S+)+$")
"""A command written as text: ``name key=value …``."""
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_FORMAT_RE = re.compile(r"^[a-z][a-z0-9_]*( [a-z][a-z0-9_]*=%(c|hu|hi|u|i|\*s|\.\*s))*$")
"""An exact message format as the host spells it."""


class DictionaryError(RuntimeError):
    """The host's source does not give a usable dictionary (names the file and line)."""


@dataclass
class HostMessages:
    """What the host's source says about the MCU's messages (before ids are handed out)."""

    runtime_commands: dict[str, str] = field(default_factory=dict)
    """Command name → exact format, from ``lookup_command``/``lookup_query_command``."""
    config_commands: dict[str, str] = field(default_factory=dict)
    """Command name → format derived from text the host sends (``add_config_cmd``)."""
    responses: dict[str, str] = field(default_factory=dict)
    """Response name → format (exact where the host looks it up, else derived from its handler)."""
    exact_responses: set[str] = field(default_factory=set)
    """Response names whose format came from the host verbatim."""
    required_constants: set[str] = field(default_factory=set)
    """Constants the host asks for without a default."""
    where: dict[str, str] = field(default_factory=dict)
    """Message name → ``file:line`` of its first sighting (for error messages)."""


def _string(node: ast.AST | None) -> str | None:
    """A literal string argument, or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _template(node: ast.AST) -> str | None:
    """Text of a command built as ``"fmt" % args`` or as an f-string (placeholders as ``%s``/``%d``)."""
    literal = _string(node)
    if literal is not None:
        return literal
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _string(node.left)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            text = _string(value)
            parts.append(text if text is not None else "%d")
        return "".join(parts)
    return None


def _param_type(name: str, placeholder: str) -> str:
    """The firmware type of a parameter the host sends as text."""
    if name == "oid":
        return "%c"
    if name == "pin" or name.endswith("_pin"):
        return "%u"  # encoded through the `pin` enumeration
    if placeholder == "%s":
        return "%*s"  # a hex byte buffer (data=, shutdown_msg=, serial=)
    return "%u"


def _text_to_format(text: str) -> str:
    """``config_endstop oid=%d pin=%s pull_up=%d`` → ``config_endstop oid=%c pin=%u pull_up=%u``."""
    name, *pairs = text.split()
    params = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        params.append(f"{key}={_param_type(key, value)}")
    return " ".join([name, *params])


def _handler_keys(tree: ast.Module, handler: ast.AST) -> list[str]:
    """Keys a response handler reads from its params (``params["value"]``), in first-read order."""
    if isinstance(handler, ast.Attribute):
        target = handler.attr
    elif isinstance(handler, ast.Name):
        target = handler.id
    else:
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == target:
            args = [a.arg for a in node.args.args if a.arg != "self"]
            return _subscript_keys(node, args[0]) if args else []
    return []


def _subscript_keys(scope: ast.AST, variable: str) -> list[str]:
    """String keys read from ``variable`` in ``scope`` (``v["k"]`` and ``v.get("k")``), ``#…`` keys skipped."""
    keys: list[str] = []
    for node in ast.walk(scope):
        key = None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == variable:
            key = _string(node.slice)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == variable and node.args):
            key = _string(node.args[0])
        if key and not key.startswith("#") and _NAME_RE.match(key) and key not in keys:
            keys.append(key)
    return keys


def _functions(tree: ast.Module) -> Iterator[tuple[ast.AST, ast.Call]]:
    """Every call with its enclosing function (or the module)."""
    def walk(scope: ast.AST, node: ast.AST) -> Iterator[tuple[ast.AST, ast.Call]]:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            if isinstance(child, ast.Call):
                yield scope, child
            yield from walk(inner, child)
    yield from walk(tree, tree)


def _assigned_name(scope: ast.AST, call: ast.Call) -> str | None:
    """The variable a call's result is assigned to (``params = serial.send_with_response(…)``)."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and node.value is call and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                return target.id
    return None


class _Scanner:
    def __init__(self) -> None:
        self.found = HostMessages()
        self._responses_from_handlers: dict[str, tuple[bool, list[str]]] = {}

    def exact(self, fmt: str, where: str, response: bool) -> None:
        if not _FORMAT_RE.match(fmt):
            raise DictionaryError(f"{where}: {fmt!r} is not a message format")
        name = fmt.split()[0]
        table = self.found.responses if response else self.found.runtime_commands
        known = table.get(name) if not response or name in self.found.exact_responses else None
        if known is not None and known != fmt:
            # The MCU can hold one format per name: the host would fail one of the two lookups.
            raise DictionaryError(f"{where}: {fmt!r} disagrees with {known!r} at {self.found.where[name]}")
        self.found.where.setdefault(name, where)
        table[name] = fmt
        if response:
            self.found.exact_responses.add(name)

    def text(self, text: str, where: str) -> None:
        text = " ".join(text.split())
        if _NAME_RE.match(text):
            self.found.config_commands.setdefault(text, text)
        elif _TEXT_COMMAND_RE.match(text):
            fmt = _text_to_format(text)
            self.found.config_commands.setdefault(fmt.split()[0], fmt)
        else:
            return
        self.found.where.setdefault(text.split()[0], where)

    def handler_response(self, name: str, with_oid: bool, keys: list[str], where: str) -> None:
        if not _NAME_RE.match(name):
            return  # "#unknown", "#output": the host's own catch-alls
        seen_oid, seen_keys = self._responses_from_handlers.get(name, (False, []))
        merged = seen_keys + [key for key in keys if key not in seen_keys]
        self._responses_from_handlers[name] = (seen_oid or with_oid, merged)
        self.found.where.setdefault(name, where)

    def scan(self, path: Path, label: str) -> None:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError) as exc:
            raise DictionaryError(f"{path}: cannot read the host's source: {exc}") from None
        for scope, call in _functions(tree):
            where = f"{label}:{call.lineno}"
            if isinstance(call.func, ast.Attribute):
                self._call(tree, scope, call, call.func.attr, where)
            elif isinstance(call.func, ast.Name) and call.func.id == "register_response" and len(call.args) >= 3:
                # module-level helpers taking the MCU first: register_response(mcu, handler, "name …")
                self._register(tree, call.args[1:], where)
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
                text = _string(node.left)
                if text and _TEXT_COMMAND_RE.match(text) and "%" in text:
                    self.text(text, f"{label}:{node.lineno}")

    def _call(self, tree: ast.Module, scope: ast.AST, call: ast.Call, method: str, where: str) -> None:
        args = call.args
        first = _string(args[0]) if args else None
        if method in _LOOKUP_CALLS and first:
            self.exact(first, where, response=False)
        elif method == "lookup_query_command" and len(args) >= 2:
            if first:
                self.exact(first, where, response=False)
            reply = _string(args[1])
            if reply:
                self.exact(reply, where, response=True)
        elif method == "add_config_cmd" and args:
            text = _template(args[0])
            if text:
                self.text(text, where)
        elif method == "create_command" and first:
            self.text(first, where)
        elif method == "send_with_response" and len(args) >= 2:
            if first:
                self.text(first, where)
            reply = _string(args[1])
            variable = _assigned_name(scope, call)
            if reply:
                self.handler_response(reply, False, _subscript_keys(scope, variable) if variable else [], where)
        elif method == "register_response" and len(args) >= 2:
            self._register(tree, args, where)
        elif method.startswith("get_constant") and method != "get_constants" and len(args) == 1 \
                and not call.keywords and first:
            self.found.required_constants.add(first)

    def _register(self, tree: ast.Module, args: list[ast.expr], where: str) -> None:
        name = _string(args[1])
        if not name:
            return
        if " " in name:  # a full response format
            self.exact(name, where, response=True)
            return
        self.handler_response(name, len(args) >= 3, _handler_keys(tree, args[0]), where)

    def finish(self) -> HostMessages:
        found = self.found
        fixed = {fmt.split()[0] for fmt in IDENTIFY_MESSAGES}
        for table in (found.runtime_commands, found.config_commands, found.responses):
            for name in fixed & set(table):
                del table[name]  # the protocol's own, with fixed ids
        self._responses_from_handlers = {n: v for n, v in self._responses_from_handlers.items() if n not in fixed}
        for name, (with_oid, keys) in self._responses_from_handlers.items():
            if name in found.exact_responses:
                continue
            params = (["oid=%c"] if with_oid or "oid" in keys else []) + \
                [f"{key}=%u" for key in keys if key != "oid"]
            found.responses.setdefault(name, " ".join([name, *params]))
        for name, fmt in list(found.runtime_commands.items()):
            if name in found.responses:
                # looked up as a command only to build the C-side dispatch of a response (trsync_state)
                found.responses[name] = fmt if name not in found.exact_responses else found.responses[name]
                found.exact_responses.add(name)
                del found.runtime_commands[name]
        for name in list(found.config_commands):
            if name in found.runtime_commands or name in found.responses:
                del found.config_commands[name]
        return found


def scan_host(source_dir: Path) -> HostMessages:
    """Read every ``*.py`` of the host's ``klippy`` package (see the module docstring for what is read)."""
    source_dir = Path(source_dir)
    files = sorted(source_dir.rglob("*.py"))
    if not files:
        raise DictionaryError(f"{source_dir}: no Python source (is this the host's klippy package?)")
    scanner = _Scanner()
    for path in files:
        scanner.scan(path, str(path.relative_to(source_dir)))
    return scanner.finish()


def pin_enumeration() -> dict[str, list[int]]:
    """The Linux-process MCU's pin names as enumeration ranges."""
    # "gpioN" is the same MCU's short name for chip 0's lines (what older configs, and the reference configs
    # in tests/fixtures/klipper, use); the host decodes values with the later name, gpiochip0/gpioN.
    pins = {"gpio0": [0, GPIO_LINES_PER_CHIP]}
    pins.update({f"gpiochip{chip}/gpio0": [chip * GPIO_LINES_PER_CHIP, GPIO_LINES_PER_CHIP]
                 for chip in range(GPIO_CHIPS)})
    pins["analog0"] = [ANALOG_PIN_START, ANALOG_CHANNELS]
    return pins


def _message_ids(count: int) -> Iterator[int]:
    yield from SINGLE_BYTE_IDS[:count]
    yield from range(96, 96 + max(0, count - len(SINGLE_BYTE_IDS)))


def build_dictionary(found: HostMessages, host_name: str, host_version: str) -> dict[str, object]:
    """The data dictionary (JSON-ready) for what :func:`scan_host` found."""
    ordered = ([found.runtime_commands[n] for n in sorted(found.runtime_commands)]
               + [found.config_commands[n] for n in sorted(found.config_commands)])
    responses = [found.responses[n] for n in sorted(found.responses)]
    ids = list(_message_ids(len(ordered) + len(responses)))
    commands = {"identify offset=%u count=%c": 1, **dict(zip(ordered, ids, strict=False))}
    replies = {"identify_response offset=%u data=%.*s": 0, **dict(zip(responses, ids[len(ordered):], strict=True))}
    constants = {name: value for name, value in LINUX_MCU_CONSTANTS.items()
                 if name in found.required_constants or name == "MCU"}
    return {
        "app": "layerloop",
        "version": f"derived-for-{host_name}-{host_version}",
        "build_versions": f"derived by sim_bridge.klippy.dictionary from {host_name} {host_version} (no firmware build)",
        "license": "derived facts; no firmware code",
        "config": constants,
        "enumerations": {"pin": pin_enumeration()},
        "commands": commands,
        "responses": replies,
        "output": {},
        "layerloop": {"derivation": DERIVATION_REVISION, "host": f"{host_name} {host_version}"},
    }


def derive_dictionary(host: KlippyHost | None = None) -> dict[str, object]:
    """Derive the dictionary from the installed host's source (no cache)."""
    host = host or find_host()
    return build_dictionary(scan_host(host.source_dir), host.executable.name, host.version)


def cache_dir() -> Path:
    """Folder of the cached dictionaries (``$LAYERLOOP_KLIPPY_CACHE`` or the user cache folder)."""
    named = os.environ.get(CACHE_ENV_VAR)
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "layerloop" / "klippy"


def dictionary_path(host: KlippyHost | None = None, refresh: bool = False) -> Path:
    """The cached dictionary file for the installed host, derived and written first when missing."""
    host = host or find_host()
    # Keyed by fork and version: a Klipper and a Kalico of the same version string have different commands.
    path = cache_dir() / f"{host.fork}-{host.version}" / DICTIONARY_NAME
    if not refresh and _cached_revision(path) == DERIVATION_REVISION:
        return path
    write_dictionary(derive_dictionary(host), path)
    return path


def _cached_revision(path: Path) -> int | None:
    """The derivation revision of a cached dictionary (None when missing or unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stamp = data.get("layerloop") if isinstance(data, dict) else None
    return stamp.get("derivation") if isinstance(stamp, dict) else None


def write_dictionary(dictionary: dict[str, object], path: Path) -> None:
    """Write ``dictionary`` atomically (a concurrent reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        json.dump(dictionary, tmp, indent=1, sort_keys=True)
        tmp.write("\n")
    os.chmod(tmp.name, 0o644)  # a cache others may read, not a secret
    os.replace(tmp.name, path)
