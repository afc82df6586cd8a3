"""Every extra the documentation, the notebooks and the package's messages tell users to install exists."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
             ["optional-dependencies"])

# pip install -e ".[local,dev]"  ·  pip install "drpo-dspy[serve]"  ·  the `[local]` extra / the ``[serve]`` extra
PATTERNS = (re.compile(r"(?<![\w)\]])\.\[([\w\-, ]+)\]"), re.compile(r"drpo-dspy\[([\w\-, ]+)\]"),
            re.compile(r"`+\[([\w\-, ]+)\]`+ extra"))


def _texts() -> dict[str, str]:
    paths = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "notebooks").glob("*.py"),
             *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "drpo_dspy").rglob("*.py"),
             *(ROOT / "signatures").rglob("*.py")]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}


def _mentions(text: str) -> list[tuple[int, str]]:
    """(line, extra) of every extra named in ``text``."""
    found = []
    for pattern in PATTERNS:
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found += [(line, name.strip()) for name in match.group(1).split(",") if name.strip()]
    return found


def test_the_patterns_find_extras():
    text = 'pip install -e ".[local,report]"\npip install "drpo-dspy[serve]" and the ``[gemma]`` extra'
    assert sorted(name for _, name in _mentions(text)) == ["gemma", "local", "report", "serve"]


def test_every_extra_named_in_docs_notebooks_and_messages_exists():
    texts = _texts()
    assert "README.md" in texts and "notebooks/01_quickstart.ipynb" in texts
    unknown = [f"{path}:{line}: [{name}]" for path, text in texts.items() for line, name in _mentions(text)
               if name not in EXTRAS]
    assert unknown == [], f"extras that pyproject.toml does not define (it has {sorted(EXTRAS)})"
    assert sum(len(_mentions(text)) for text in texts.values()) > 10  # the scan sees the install commands


def test_drpo_serve_points_at_the_extra_that_holds_its_web_stack():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    web = {name for name, requirements in config.items() if any(r.startswith("uvicorn") for r in requirements)}
    texts = _texts()
    about_serve = {path: text for path, text in texts.items()
                   if path == "docs/serve.md" or path.startswith("drpo_dspy/serve/")}
    named = {(path, name) for path, text in about_serve.items() for _, name in _mentions(text)}
    assert named and all(name in web for _, name in named), named
    assert 'pip install "drpo-dspy[serve]"' in texts["drpo_dspy/cli/serve.py"]
