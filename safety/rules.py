"""How the validator judges a command by its code, from the command table (:mod:`sim_bridge.commands`).

A command is judged in this order: forbidden (always blocked, no allow-list can lift it), then allowed (the
table's allowed and autotune commands, the printer's declared macros, the policy's ``allow_commands``), else
unknown and blocked. Codes are compared as the reader writes them: upper case, leading zeros dropped
(``M0302`` is ``M302``); a subcode (``M500.1``) is judged by its base code when the base is forbidden. Rule
ids are those of :mod:`sim_bridge.failures`.
"""

from __future__ import annotations

from sim_bridge import failures as fail
from sim_bridge.commands import UNCHECKED, deployable, forbidden_reason, spec

Finding = tuple[str, str, str, str]
"""(rule, limit, value, message) of a finding not yet tied to a line."""


def forbidden_finding(code: str, limit: str = "never in a program") -> Finding | None:
    """The finding for a forbidden ``code``, else ``None``."""
    reason = forbidden_reason(code)
    if reason is None:
        return None
    return fail.FORBIDDEN_COMMAND, limit, code, f"{code} is forbidden: it {reason}"


def code_finding(code: str, allow_commands: frozenset[str], is_macro: bool) -> Finding | None:
    """The finding for ``code`` by its code alone (forbidden, or not allowed on this printer), else ``None``."""
    found = forbidden_finding(code)
    if found is not None or deployable(code) or code in allow_commands or is_macro:
        return found
    entry = spec(code)
    why = f"it {entry.reason}; " if entry is not None and entry.safety == UNCHECKED else ""
    return (fail.UNKNOWN_COMMAND, "built-in list, the printer's macros and the policy's allow_commands", code,
            f"{code} is not a known command for this printer ({why}denied by default; add it to the "
            "policy's allow_commands if it is the printer's own)")
