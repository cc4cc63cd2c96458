"""Gymnasium environments whose actions are G-code and whose rewards come from simulated prints."""
