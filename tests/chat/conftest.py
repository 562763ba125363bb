"""Session fixtures of the chat tests (the eval tests import them too)."""

from __future__ import annotations

import pytest

from tests.chat.fixtures import conv, make_adapter, make_mix, make_run


@pytest.fixture(scope="session")
def random_adapter(demo_model_path, tmp_path_factory):
    return make_adapter(demo_model_path, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="session")
def small_mix(tmp_path_factory):
    train = [conv("What is the capital of France?", "Paris."),
             conv("What is 2 + 3?", "The answer is \\boxed{5}.", reasoning="2 plus 3 is 5.")]
    evals = [conv("What is 6 * 7?", "It is \\boxed{42}.", reasoning="6 times 7 is 42."),
             conv("Say hello.", "Hello!"),
             conv("What is 10 / 4?", "2.5", expected_answer="5/2")]
    return make_mix(tmp_path_factory.mktemp("mix") / "mix", train, evals)


@pytest.fixture(scope="session")
def fake_run(demo_model_path, random_adapter, small_mix, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return make_run(runs, "demo-lora-test", demo_model_path, random_adapter, small_mix)


@pytest.fixture(scope="session")
def peft_engine(demo_model_path, random_adapter, demo_tokenizer):
    """A ChatEngine over the demo model with the random adapter (loaded the plain PEFT way)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.chat.engine import ChatEngine

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model_path), random_adapter)
    return ChatEngine(model, demo_tokenizer)


@pytest.fixture(scope="session")
def plain_engine(demo_model_path, demo_tokenizer):
    from transformers import AutoModelForCausalLM

    from core.chat.engine import ChatEngine

    return ChatEngine(AutoModelForCausalLM.from_pretrained(demo_model_path), demo_tokenizer)
