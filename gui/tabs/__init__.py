"""One module per tab, each with ``build(ctx)``; the order of TABS is the order on the page."""

TABS: list[str] = ["hardware", "data", "train", "chat", "evaluate", "runs"]
