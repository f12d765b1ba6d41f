"""The RLM engine: limits, prompts, parsing, the iteration loop and its drivers.

Nothing here names a concrete backend, environment or transport: they are passed in.
"""
