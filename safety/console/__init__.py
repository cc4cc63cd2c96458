"""The approval console: a person reviews each program (preview, simulation, findings, diff against the
expert) and approves or rejects it; every decision goes to the append-only audit log of
:class:`~safety.approvals.ApprovalStore`. Run ``python -m safety.console --help``."""
