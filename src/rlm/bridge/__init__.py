"""The bridge between REPL code and the host: the LM handler, its protocols, the guest runtime."""
