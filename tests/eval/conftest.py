"""The eval tests reuse the chat tests' fixtures (demo adapter, small mix, fake run)."""

from tests.chat.conftest import fake_run, peft_engine, plain_engine, random_adapter, small_mix  # noqa: F401
