"""Datasets, supervised fine-tuning, reinforcement learning on simulator rewards, evaluation."""
