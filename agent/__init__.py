"""Policies that write or supervise G-code: the language model, the expert planner, baselines."""
