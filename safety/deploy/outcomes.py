"""Outcomes flow back: a person's verdict on each deployed print, and the export that feeds the real-world
dataset (``python -m safety.deploy.outcomes label|export``).

- ``label ID --outcome success|failure [--failure-mode M] [--note TEXT] --user NAME``: the person who looked
  at the part records it (a ``label`` event of the deployment, append-only).
- ``export --url URL --out DIR``: every deployment that has a label, as the inputs of
  ``python -m training.import_real``: ``gcodes/`` (the exact payload that printed, downloaded back from the
  printer and checked against the SHA-256 recorded when it started), ``history.json`` (Moonraker's job
  history: outcome, print time, filament), ``labels.csv`` (the person's verdict, the feedback file),
  ``traces/ID.jsonl`` (the telemetry) and ``provenance.json`` (who approved, who deployed, who labelled,
  when, on which printer). A deployment without a label is not exported: nothing enters training that a
  person has not judged. Then::

      python -m training.import_real --gcode DIR/gcodes --moonraker-history DIR/history.json \\
          --feedback DIR/labels.csv --out DATASET

  and ``training.sim_loop``'s real-world phase (``real_world_dataset: DATASET``) fine-tunes only on the
  programs people labelled a success.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from safety.deploy import credentials
from safety.deployments import LABEL_OUTCOMES, DeploymentStore
from sim_bridge.config import ConfigError
from sim_bridge.moonraker import MoonrakerClient, MoonrakerError

HISTORY_LIMIT = 1000
"""Jobs of Moonraker's history saved with an export."""


def labelled(store: DeploymentStore) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """(deployment, its latest label, its ``started`` state event) for every labelled deployment."""
    found = []
    for deployment in store.deployments():
        labels = store.events(deployment.id, "label")
        started = [e.body for e in store.events(deployment.id, "state") if e.body.get("state") == "started"]
        if labels and started:
            found.append((deployment, labels[-1].body, started[0]))
    return sorted(found, key=lambda item: item[0].id)


def export(store: DeploymentStore, client: MoonrakerClient, out: Path) -> list[int]:
    """Write the labelled deployments to ``out`` (see the module docstring); returns their ids."""
    (out / "gcodes").mkdir(parents=True, exist_ok=True)
    (out / "traces").mkdir(exist_ok=True)
    rows, provenance, ids = [], [], []
    for deployment, label, started in labelled(store):
        name = str(started["file"])
        payload = client.download(name)
        if hashlib.sha256(payload).hexdigest() != started.get("payload_sha256"):
            raise ConfigError(f"deployment {deployment.id}: {name} on the printer is not the payload that printed "
                              "(SHA-256 differs): not exported")
        (out / "gcodes" / name).write_bytes(payload)
        with open(out / "traces" / f"{deployment.id}.jsonl", "w", encoding="utf-8") as trace:
            for event in store.events(deployment.id, "telemetry"):
                trace.write(json.dumps({"at": event.at, **event.body}, sort_keys=True) + "\n")
        note = f"feedback from {label['user']} on deployment {deployment.id}" + (
            f": {label['note']}" if label.get("note") else "")
        rows.append({"file": name, "outcome": label["outcome"], "failure_mode": label.get("failure_mode", ""),
                     "note": note})
        provenance.append({"deployment": deployment.id, "file": name, "program_sha256": deployment.sha256,
                           "payload_sha256": started["payload_sha256"], "stage": deployment.stage,
                           "printer": deployment.printer, "printer_url": deployment.printer_url,
                           "deployed_by": deployment.started_by, "deployed_at": deployment.started_at,
                           "labelled_by": label["user"], "outcome": label["outcome"]})
        ids.append(deployment.id)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "outcome", "failure_mode", "note"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "history.json").write_text(json.dumps({"result": client.history_response(HISTORY_LIMIT)}, indent=1))
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1))
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m safety.deploy.outcomes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    label = sub.add_parser("label", help="record a person's verdict on a deployed print")
    label.add_argument("deployment", type=int)
    label.add_argument("--outcome", choices=LABEL_OUTCOMES, required=True)
    label.add_argument("--failure-mode", default="", help="what went wrong (spaghetti, layer shift, …)")
    label.add_argument("--note", default="")
    label.add_argument("--user", required=True)
    label.add_argument("--db", type=Path, default=Path("approvals.db"))
    out = sub.add_parser("export", help="write the labelled deployments as training.import_real's inputs")
    out.add_argument("--url", required=True)
    out.add_argument("--api-key-file", type=Path)
    out.add_argument("--out", type=Path, required=True)
    out.add_argument("--db", type=Path, default=Path("approvals.db"))
    args = parser.parse_args(argv)
    try:
        store = DeploymentStore(args.db)
        if args.command == "label":
            store.label(args.deployment, args.user, args.outcome, args.failure_mode, args.note)
            print(f"deployment {args.deployment}: {args.outcome} (by {args.user})")
            return 0
        client = MoonrakerClient(credentials.check_url(args.url), api_key=credentials.read_api_key(args.api_key_file))
        ids = export(store, client, args.out)
        print(f"{len(ids)} labelled deployment(s) written to {args.out}")
        return 0
    except (ConfigError, ValueError, OSError, MoonrakerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
