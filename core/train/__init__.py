"""Training: the worker subprocess, its backends (Unsloth | transformers + PEFT), progress callbacks,
run folders (the contract with the GUI and other tools) and export.

Nothing here is imported at start-up: the GUI imports only core.train.runs (no torch), and the worker
imports the rest inside its own process.
"""
