"""``rlm serve`` on the embedded model (no ``-b``: the CLI's default), once, end to end."""

from __future__ import annotations

import pytest

pytest.importorskip("openai")
pytest.importorskip("llama_cpp")


@pytest.mark.model
@pytest.mark.slow
def test_the_embedded_model_answers_through_the_server(launch, client, local_model_path):
    # two turns and a minute at most: the test is of the server, not of the model
    live = launch("-b", "local", "--name", "local", "--max-iterations", "2",
                  "--max-timeout", "60")
    response = client(live, timeout=300).chat.completions.create(
        model="local", messages=[
            {"role": "system", "content": "Inventory:\nbolts: 40\nnuts: 25\nwashers: 12\n"},
            {"role": "user", "content": "How many nuts are in the inventory?"}])
    extension = response.model_extra["rlm"]
    assert response.choices[0].message.content.strip()
    assert extension["stop_reason"] in {"final", "max_iterations", "timeout"}
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    [model_name] = extension["usage"]  # the embedded model made every call
    assert extension["usage"][model_name]["calls"] >= 1
    assert (live.trace_dir / f"{extension['trace_id']}.jsonl").is_file()
