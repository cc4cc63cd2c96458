"""The command line shared by the trainers that run from one YAML config (``training.sft``, ``training.grpo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sim_bridge.config import ConfigError, load_yaml


def add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """``--seed N`` and ``--set KEY=VALUE`` (repeatable; nested keys with dots), applied over the YAML."""
    parser.add_argument("--seed", type=int, help="the config's seed (as --set seed=N)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, nested keys with dots (grpo.max_steps=300); repeatable")


def config_main(argv: list[str] | None, prog: str, description: str, config_type: type,
                train: Callable[[Any], Path]) -> int:
    """``prog --config FILE [--seed N] [--set KEY=VALUE ...]``: load ``config_type`` from the YAML file with the
    overrides (validated), run ``train`` on it and print the final model's folder; a bad config exits 2 with
    the key, value and allowed range."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True)
    add_override_arguments(parser)
    args = parser.parse_args(argv)
    try:
        final = train(load_yaml(config_type, args.config, args.set, args.seed))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"final model: {final}")
    return 0
