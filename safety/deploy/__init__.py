"""Controlled deployment to a Klipper printer: the one path by which layerloop moves a printer.

``python -m safety.deploy PROGRAM --printer PROFILE --url URL --stage dry-run|first-layer|full --db DB``
(:mod:`safety.deploy.__main__`) runs :class:`safety.deploy.run.Deployment`:

1. the gate (:mod:`safety.gate`) on the live printer's state (read through Moonraker, not a file), with
   the printer's dead-man switch present (:mod:`safety.deploy.deadman`);
2. the gate's payload uploaded, downloaded back and compared by SHA-256 before anything starts;
3. the print started, its telemetry followed (:class:`sim_bridge.moonraker_watch.TelemetryWatcher`:
   websocket, polling only where the websocket never connects), shown live, logged
   (:mod:`safety.deployments`);
4. watchdogs (:mod:`safety.deploy.watchdogs`) and operators' requests acted on; at each layer change the
   supervisor's proposal goes through :class:`safety.gate.LiveTuning`, one command at a time;
5. the dead-man switch re-armed while the deployment watches, so a deployment killed on our side leaves
   the printer paused (and, unattended for 10 minutes, cancelled with its heaters off).

Credentials: :mod:`safety.deploy.credentials`. What each piece defends against: docs/safety.md.
"""
