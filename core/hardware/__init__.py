"""Hardware detection, the Qwen3 catalog, the VRAM estimator and model recommendations.

Import the submodules (``core.hardware.detect``, ``.catalog``, ``.estimate``, ``.recommend``);
this package file stays empty so importing it does no work.
"""
