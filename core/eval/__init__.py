"""Before/after evaluation of a run: held-out loss, thinking-mode control, answer accuracy, serving."""
