"""QwenTune's library: hardware, data, training, chat and evaluation. Never imports gradio."""
