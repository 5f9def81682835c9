"""Evaluation: the one metrics module."""
