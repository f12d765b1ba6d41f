"""Language model backends: one provider per module, each implementing ``LMBackend``."""

from rlm.backends.base import LMBackend

__all__ = ["LMBackend"]
