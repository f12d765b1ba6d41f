"""REPL environments: where model-written code runs."""

from rlm.environments.base import Environment

__all__ = ["Environment"]
