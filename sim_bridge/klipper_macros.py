"""What a Klipper macro does, inferred from its G-code/Jinja text: which axes it homes, which heater targets
it sets (from which arguments, with which defaults) and whether it waits for them, whether it levels the bed,
purges or ends the print, and where it parks the toolhead. Macros it calls count as well (each once).

The inference is conservative where a wrong answer would hide a real error: homed axes that do not form
XYZ, XY or Z are not claimed, and a ``G28`` whose axes are a Jinja expression claims nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sim_bridge.config import ConfigError
from sim_bridge.foreign_config import parse_float
from sim_bridge.profiles import MacroProfile

_LEVEL_COMMANDS = frozenset({"BED_MESH_CALIBRATE", "Z_TILT_ADJUST", "QUAD_GANTRY_LEVEL", "G29"})
_END_COMMANDS = frozenset({"M84", "M18", "TURN_OFF_HEATERS"})
_JINJA_STATEMENT_RE = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.S)
_JINJA_SET_RE = re.compile(r"\{%-?\s*set\s+(\w+)\s*=(.*?)-?%\}", re.S)
_PARAM_RE = re.compile(r"params\s*(?:\.get\(\s*['\"](\w+)['\"]|\.\s*(\w+)|\[\s*['\"](\w+)['\"]\s*\])")
"""A macro argument: ``params.BED``, ``params['BED']``, ``params.get('BED', 60)``."""
_DEFAULT_RE = re.compile(r"(?:default\(|\.get\(\s*['\"]\w+['\"]\s*,)\s*([-+]?\d+(?:\.\d+)?)\s*[,)]")
"""A default number: ``|default(60)`` or ``params.get('BED', 60)``."""
_WORD_RE = re.compile(r"\b(\w+)\b")
_ARG_RE = re.compile(r"(\w+)\s*=\s*(\{[^}]*\}|\S+)")
_S_WORD_RE = re.compile(r"(?:^|[\s\d.}])S\s*(\{[^}]*\}|[-+]?[0-9.]+)", re.I)
_AXIS_WORD_RE = re.compile(r"(?:^|[\s\d.}])([XYZE])\s*(\{[^}]*\}|[-+]?[0-9.]*)", re.I)
_COMMAND_RE = re.compile(r"([GMgm]\d+(?:\.\d+)?)(?=[\sA-Za-z{]|$)|(\S+)")
_JINJA_EXPR_RE = re.compile(r"\{[^}]*\}")


@dataclass
class _MacroFacts:
    """What a macro's text shows it does."""

    axes: set[str] = field(default_factory=set)
    hotend_params: list[str] = field(default_factory=list)
    bed_params: list[str] = field(default_factory=list)
    default_hotend_c: float = 0.0
    default_bed_c: float = 0.0
    waits: bool = False
    levels: bool = False
    purges: bool = False
    ends: bool = False
    park: list[float] = field(default_factory=list)


@dataclass
class _Target:
    """A heater target expression: the params it reads, its default, or a literal number."""

    params: list[str]
    default_c: float | None
    literal_c: float | None


def infer_macros(texts: dict[str, str]) -> list[MacroProfile]:
    """What each macro does, from its G-code/Jinja text (``texts``: upper-case name → ``gcode`` option), in
    the order of ``texts``. A macro that calls another gets what the callee does, with the callee's
    parameters renamed to the caller's arguments."""
    out = []
    for index, name in enumerate(texts):
        facts = _macro_facts(name, texts, set())
        homes = ("XYZ" if facts.axes >= {"X", "Y", "Z"} else "XY" if facts.axes >= {"X", "Y"}
                 else "Z" if "Z" in facts.axes else "")
        try:
            out.append(MacroProfile(
                name=name, homes=homes, hotend_temp_params=facts.hotend_params, bed_temp_params=facts.bed_params,
                waits_for_temperature=facts.waits, default_hotend_temp_c=facts.default_hotend_c,
                default_bed_temp_c=facts.default_bed_c, levels=facts.levels, purges=facts.purges,
                ends_print=facts.ends, park_position_mm=facts.park if facts.ends else []))
        except ConfigError as exc:
            # Named as the profile's key, so the printer.cfg reader can point at the macro's section.
            raise ConfigError(f"macros[{index}].{exc}") from None
    return out


def _macro_facts(name: str, texts: dict[str, str], seen: set[str]) -> _MacroFacts:
    """Infer what macro ``name`` does from its text (and the macros it calls, once each).

    Homed axes that do not form XYZ, XY or Z are under-reported (``G28 X`` alone counts as no homing):
    claiming an axis homed that is not would hide a real "Must home axis first".
    """
    seen = seen | {name}
    facts = _MacroFacts()
    text = texts[name]
    variables: dict[str, _Target] = {}
    for var, expr in _JINJA_SET_RE.findall(text):
        variables[var.lower()] = _target(expr, variables)
    relative = False
    for raw in _JINJA_STATEMENT_RE.sub("\n", text).split("\n"):
        line = raw.strip()
        if not line or line.startswith("{"):
            continue
        match = _COMMAND_RE.match(line)
        if match is None:
            continue
        command, rest = match.group(0).upper(), line[match.end():]
        if command in ("M104", "M109", "M140", "M190"):
            match = _S_WORD_RE.search(rest)
            hotend = command in ("M104", "M109")
            _heat(facts, hotend, _target(match.group(1), variables) if match else None,
                  waits=command in ("M109", "M190"))
        elif command in ("SET_HEATER_TEMPERATURE", "TEMPERATURE_WAIT"):
            args = {k.upper(): v for k, v in _ARG_RE.findall(rest)}
            heater = args.get("HEATER" if command == "SET_HEATER_TEMPERATURE" else "SENSOR", "").lower()
            expr = args.get("TARGET" if command == "SET_HEATER_TEMPERATURE" else "MINIMUM")
            if heater.startswith("extruder") or heater == "heater_bed":
                _heat(facts, heater.startswith("extruder"), _target(expr, variables) if expr else None,
                      waits=command == "TEMPERATURE_WAIT")
        elif command == "G28":
            literal = _JINJA_EXPR_RE.sub(" ", rest)
            axes = {a.upper() for a in re.findall(r"[XYZxyz]", literal)}
            if axes or not literal.strip():  # "G28 {axes}" homes we cannot tell what: claim nothing
                facts.axes |= axes or {"X", "Y", "Z"}
        elif command in _LEVEL_COMMANDS:
            facts.levels = True
        elif command in _END_COMMANDS:
            facts.ends = True
        elif command in ("G90", "G91"):
            relative = command == "G91"
        elif command in ("G0", "G1"):
            words = {k.upper(): v for k, v in _AXIS_WORD_RE.findall(rest)}
            if "E" in words and not words["E"].startswith("-") and ("X" in words or "Y" in words):
                facts.purges = True
            x, y = parse_float(words.get("X", "")), parse_float(words.get("Y", ""))
            if not relative and x is not None and y is not None:
                facts.park = [x, y]
        elif command in texts and command not in seen:
            _merge_call(facts, _macro_facts(command, texts, seen), rest, variables)
        elif command not in texts and ("PURGE" in command or "PRIME_LINE" in command):
            facts.purges = True  # e.g. KAMP's LINE_PURGE, defined in a file we were not given
    return facts


def _target(expr: str, variables: dict[str, _Target]) -> _Target:
    params: list[str] = []
    default = None
    for groups in _PARAM_RE.findall(expr):
        name = next(g for g in groups if g).upper()
        if name not in params:
            params.append(name)
    for word in _WORD_RE.findall(_PARAM_RE.sub(" ", expr)):
        known = variables.get(word.lower())
        if known is not None:
            params.extend(p for p in known.params if p not in params)
            default = default if default is not None else (known.default_c or known.literal_c)
    match = _DEFAULT_RE.search(expr)
    if match:
        default = float(match.group(1))
    literal = parse_float(expr.strip().strip("{}").strip())
    return _Target(params, default, literal)


def _heat(facts: _MacroFacts, hotend: bool, target: _Target | None, *, waits: bool) -> None:
    if target is not None and not target.params and target.literal_c == 0.0:
        return  # "M104 S0" switches the heater off
    facts.waits = facts.waits or waits
    if target is None:
        return
    params = facts.hotend_params if hotend else facts.bed_params
    params.extend(p for p in target.params if p not in params)
    default = target.literal_c if target.literal_c is not None else target.default_c
    if default is not None and default > 0:
        if hotend and not facts.default_hotend_c:
            facts.default_hotend_c = default
        elif not hotend and not facts.default_bed_c:
            facts.default_bed_c = default


def _merge_call(facts: _MacroFacts, callee: _MacroFacts, args_text: str,
                variables: dict[str, _Target]) -> None:
    """Fold a called macro's facts into the caller's; its params are renamed to the caller's arguments."""
    args = {k.upper(): _target(v, variables) for k, v in _ARG_RE.findall(args_text)}
    facts.axes |= callee.axes
    for hotend in (True, False):
        mine = facts.hotend_params if hotend else facts.bed_params
        default = callee.default_hotend_c if hotend else callee.default_bed_c
        for param in callee.hotend_params if hotend else callee.bed_params:
            passed = args.get(param)
            if passed is not None:
                mine.extend(p for p in passed.params if p not in mine)
                given = passed.literal_c if passed.literal_c is not None else passed.default_c
                default = given if given else default  # what the caller passes wins over the callee's
        if hotend:
            facts.default_hotend_c = facts.default_hotend_c or default
        else:
            facts.default_bed_c = facts.default_bed_c or default
    facts.waits = facts.waits or callee.waits
    facts.levels = facts.levels or callee.levels
    facts.purges = facts.purges or callee.purges
    facts.ends = facts.ends or callee.ends
    if callee.park:
        facts.park = callee.park
