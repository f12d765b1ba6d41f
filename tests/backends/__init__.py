"""Backend tests: the contract every backend keeps, and the openai-compatible one."""
