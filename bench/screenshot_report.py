"""Render an evaluation's HTML report to PNG with headless Chromium, to check that it reads well.

    python bench/screenshot_report.py runs/eval-regular/report.html --png report.png
    python bench/screenshot_report.py --demo --png bench/out/report_screenshot.png

``--demo`` first builds a report from scripted models (no real model, a few seconds): three systems over a few
prompts of each packaged set, with varied scores, refusals and lengths, so every chart has something to show.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
from pathlib import Path


def _h(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:8], 16)


def build_demo_report(out_dir: Path, *, limit: int = 6) -> Path:
    """An evaluation of scripted systems written to ``out_dir``; returns the HTML report's path."""
    import dspy

    from drpo_dspy.evaluation import EVAL_ASPECTS, evaluate, resolve_eval_set
    from drpo_dspy.testing import last_user_text, scripted_lm, system_text

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    style = {"You are a helpful assistant.": "base", "genuinely useful": "urial", "DEMO-TUNED": "tuned"}

    def base(messages, params):
        prompt = system_text(messages)
        name = next((v for k, v in style.items() if k in prompt), "base")
        query = last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
        words = 40 + _h(name, query) % 120 + {"base": 0, "urial": 60, "tuned": 110}[name]
        return f"[{name}] A reply to: {query}\n" + " ".join(["detail"] * words) + "\n<END>"

    def field(text: str, name: str) -> str | None:
        """An input field of a DSPy chat prompt (``[[ ## name ## ]]``), or None when the prompt has none."""
        found = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", text, re.S)
        return found.group(1) if found else None

    def judge(messages, params):
        text = last_user_text(messages)
        if field(text, "response") is None:  # the MT-Bench judge: question + answer, a 1-10 rating per turn
            answer, question = field(text, "answer") or "", field(text, "question") or ""
            name = answer[1:answer.index("]")] if answer.startswith("[") and "]" in answer else "base"
            lift = {"base": 0, "urial": 1, "tuned": 2}.get(name, 0)
            return {"evaluation": {"explanation": f"rated for the demo ({name})",
                                   "rating": max(1, min(10, 4 + 2 * lift + _h(name, question) % 3 - 1))}}
        response, query = field(text, "response"), field(text, "query") or ""
        name = response[1:response.index("]")]
        lift = {"base": 0, "urial": 1, "tuned": 2}[name]
        verdicts = {a: {"rationale": f"The {name} answer to '{query[:40]}': {a} judged for the demo",
                        "score": max(1, min(5, 2 + lift + _h(name, a, query) % 3 - 1))} for a in EVAL_ASPECTS}
        harmful = any(w in query.lower() for w in ("skim", "steal", "weapon", "hack", "poison", "fake", "bomb"))
        refusal = _h(name, query, "r") % 10 < (3 + 3 * lift if harmful else lift)
        return {"evaluation": {**verdicts, "refusal": refusal}}

    from drpo_dspy.evaluation.systems import StaticPromptResponder

    tuned = StaticPromptResponder("DEMO-TUNED: answer warmly, precisely and safely.", [])
    prompts, label = resolve_eval_set("all", limit=limit)
    evaluate(["base", "urial", ("tuned", tuned)], prompts, base_lm=scripted_lm(base), judge_lm=scripted_lm(judge),
             out_dir=out_dir, eval_set_name=label, num_threads=2)
    return out_dir / "report.html"


def main(argv: list[str] | None = None) -> int:
    from drpo_dspy.evaluation.screenshot import screenshot_html

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", nargs="?", type=Path, help="report.html to render")
    parser.add_argument("--demo", action="store_true", help="build a demo report from scripted models first")
    parser.add_argument("--png", type=Path, default=Path("report_screenshot.png"), help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.demo == (args.html is not None):
        parser.error("give either a report.html or --demo")
    with tempfile.TemporaryDirectory(prefix="drpo-demo-report-") as tmp:
        html = build_demo_report(Path(tmp)) if args.demo else args.html
        png = screenshot_html(html, args.png, width=args.width, height=args.height)
    print(f"wrote {png} ({png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
