"""Chat: one base model with the LoRA adapter switched per pane, streamed replies, Qwen3 thinking mode."""
