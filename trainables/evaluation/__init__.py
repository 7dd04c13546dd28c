"""Evaluation: retrieval metrics over full-corpus score matrices."""
