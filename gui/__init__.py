"""The Gradio web app: thin tabs over core/. Layout and wiring only."""
