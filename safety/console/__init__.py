"""The approval console: a person reviews each program (preview, simulation, findings, diff against the
expert) and approves or rejects it; every decision goes to the append-only audit log of
:class:`~safety.approvals.ApprovalStore`. Operators watch each deployment on its live page and pause,
resume, abort, stop it or confirm its first layer; reviewers and operators are roles of the accounts, and
every action is in the console's action log (:mod:`safety.console.activity`). Run
``python -m safety.console --help``."""
