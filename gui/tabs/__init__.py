"""One module per tab, each with ``build(ctx)``; the order of TABS is the order on the page.

A tab's event handlers are module-level functions ``fn(ctx, *values) -> updates``: ``ctx`` is the
page's AppContext (strings, folders, the server-wide caches in ``ctx.server``), ``values`` are the
input widgets' values. ``build`` wires them with ``bind(fn, ctx)``; tests call them directly, with
no Blocks app.
"""

from functools import partial

TABS: list[str] = ["hardware", "data", "train", "chat", "evaluate", "runs"]


def bind(fn, ctx):
    """``fn(ctx, *values)`` as a Gradio handler of ``*values``, under fn's own name (Gradio names its
    API endpoints after it). No ``functools.wraps``: Gradio reads the signature, which must not
    show ``ctx``. A handler needing gr.SelectData or gr.Progress takes them as its own parameters:
    Gradio finds those only on a plain function."""
    handler = partial(fn, ctx)
    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler
