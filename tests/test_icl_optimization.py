"""Offline ICL answer optimization: best-kept rule, early stop, round limit, failures, provenance, CLI."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from drpo_dspy.cli.optimize_icl import add_optimize_icl_parser
from drpo_dspy.clients.metering import Meter
from drpo_dspy.retrievers.bank import AlignmentBank, ICLExample
from drpo_dspy.teleprompt.icl_optimization import optimization_summary, optimize_bank, optimize_examples
from drpo_dspy.testing import scripted_lm
from tests.world import field

ASPECTS = ("Helpfulness", "Clarity", "Depth")


class IclWorld:
    """Scripted metrics, judge and rewriter LMs.

    ``judge(answer)`` gives the scores (None: unreadable output). ``rewrite(query, answer, n)`` gives the n-th
    rewrite of that query (None: unreadable output). Rationales name the answer, so critiques can be traced.
    """

    def __init__(self, judge: Callable[[str], list[int] | None],
                 rewrite: Callable[[str, str, int], str | None] = lambda q, a, n: f"{q}#{n}",
                 aspects: tuple[str, ...] = ASPECTS, judge_delay: Callable[[str], float] = lambda a: 0.0,
                 cached_rewriter: bool = False):
        self.judge_fn, self.rewrite_fn, self.aspects, self.judge_delay = judge, rewrite, list(aspects), judge_delay
        self.lock = threading.Lock()
        self.rewrites: dict[str, list[dict[str, str]]] = defaultdict(list)  # primary rewriter calls per query
        self.judged: list[str] = []
        self.metrics_lm = scripted_lm(self._metrics)
        self.judge_lm = scripted_lm(self._judge)
        self.rewriter_lm = scripted_lm(self._rewriter, cache=cached_rewriter)

    def lms(self) -> dict[str, Any]:
        return {"metrics_lm": self.metrics_lm, "judge_lm": self.judge_lm, "rewriter_lm": self.rewriter_lm}

    def _metrics(self, messages, params):
        return {"query_analysis": "scripted", "reasoning": "scripted choice", "selected_aspects": self.aspects,
                "proposed_aspect": ""}

    def _judge(self, messages, params):
        answer = field(messages, "response")
        time.sleep(self.judge_delay(answer))
        with self.lock:
            self.judged.append(answer)
        scores = self.judge_fn(answer)
        if scores is None:
            return "Scores: excellent overall, no structure here."
        return {"evaluations": {a: {"rationale": f"why {answer} {a}", "score": s}
                                for a, s in zip(self.aspects, scores, strict=True)}}

    def _rewriter(self, messages, params):
        query, answer = field(messages, "query"), field(messages, "response")
        with self.lock:
            calls = self.rewrites[query]
            if "response_format" not in params:  # the JSON-adapter retry after a parse failure is not a new call
                calls.append({"response": answer, "critique": field(messages, "critique")})
            n = len(calls)
        new = self.rewrite_fn(query, answer, n)
        if new is None:
            return "I would rather not use the requested format."
        return {"analysis": "a", "thought": "t", "new_response": new}


def table(scores: dict[str, list[int] | None], default: list[int] | None = None) -> Callable[[str], list[int] | None]:
    return lambda answer: scores.get(answer, default)


def run(world: IclWorld, examples: list[Any], **kwargs: Any) -> list[ICLExample]:
    kwargs.setdefault("num_threads", 1)
    return optimize_examples(examples, **world.lms(), **kwargs)


def rounds_of(example: ICLExample) -> list[dict[str, Any]]:
    return [p for p in example.provenance if p.get("stage") == "icl_optimization"]


def test_best_is_kept_and_ties_go_to_the_newer_answer():
    world = IclWorld(table({"a#0": [3, 3, 3], "a#1": [4, 3, 3], "a#2": [3, 3, 3], "a#3": [4, 4, 2],
                            "a#4": [2, 2, 2], "a#5": [1, 1, 1]}))
    [result] = run(world, [("a", "a#0")], rounds=5)
    assert result.answer == "a#3"  # 10 ties a#1's 10 and is newer; later answers score lower
    assert [r["kept"] for r in rounds_of(result)] == [True, True, False, True, False, False]
    assert [r["total"] for r in rounds_of(result)] == [9, 10, 9, 10, 6, 3]
    # every rewrite starts from the latest answer and its critique, not from the best one
    calls = world.rewrites["a"]
    assert [c["response"] for c in calls] == ["a#0", "a#1", "a#2", "a#3", "a#4"]
    assert all(f"why {c['response']} Depth" in c["critique"] for c in calls)
    assert optimization_summary(result) == {"seed_total": 9, "best_total": 10, "max_total": 15, "rounds": 5,
                                            "failures": 0, "num_aspects": 3}


def test_stops_early_once_every_aspect_scores_5():
    world = IclWorld(table({"a#0": [3, 3, 3], "a#1": [4, 4, 4], "a#2": [5, 5, 5]}, default=[1, 1, 1]))
    meter = Meter()
    [result] = run(world, [("a", "a#0")], rounds=5, meter=meter)
    assert result.answer == "a#2"
    assert len(world.rewrites["a"]) == 2
    assert meter.requests["rewriter"] == 2 and meter.requests["judge"] == 3 and meter.requests["metrics"] == 1
    assert [r["round"] for r in rounds_of(result)] == [0, 1, 2]


def test_a_perfect_seed_is_not_rewritten():
    world = IclWorld(table({}, default=[5, 5, 5]))
    [result] = run(world, [("a", "seed answer")], rounds=5)
    assert result.answer == "seed answer"
    assert world.rewrites == {}
    assert len(rounds_of(result)) == 1


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_round_limit(rounds):
    world = IclWorld(table({}, default=[3, 3, 3]))
    [result] = run(world, [("a", "a#0")], rounds=rounds)
    assert len(world.rewrites["a"]) == rounds
    assert [r["round"] for r in rounds_of(result)] == list(range(rounds + 1))
    assert result.answer == (f"a#{rounds}" if rounds else "a#0")  # equal totals: the newest answer wins


def test_provenance_records_every_round():
    world = IclWorld(table({"a#0": [3, 4, 2], "a#1": [4, 4, 4], "a#2": [2, 4, 4]}))
    seed = ICLExample("a", "a#0", [{"source": "seed file"}])
    [result] = run(world, [seed], rounds=2)
    assert result.provenance[0] == {"source": "seed file"}
    assert seed.answer == "a#0" and len(seed.provenance) == 1  # the input is not modified
    rounds = rounds_of(result)
    assert [r["answer"] for r in rounds] == ["a#0", "a#1", "a#2"]
    assert rounds[0]["scores"] == {"Helpfulness": 3, "Clarity": 4, "Depth": 2}
    assert rounds[2]["scores"] == {"Helpfulness": 2, "Clarity": 4, "Depth": 4}
    assert rounds[1]["rationales"]["Clarity"] == "why a#1 Clarity"
    assert [r["total"] for r in rounds] == [9, 12, 10]
    assert [r["kept"] for r in rounds] == [True, True, False]
    assert all(r["aspects"] == list(ASPECTS) and r["max_total"] == 15 and r["failure"] is None for r in rounds)
    assert rounds[0]["reasoning"] == "scripted choice"
    assert result.answer == "a#1"
    json.dumps(result.to_dict())  # provenance is plain JSON


def test_unreadable_rounds_keep_the_best_answer_and_are_counted():
    # a#1 is best; a#2's judgment is garbage; the 3rd rewrite is garbage; a#4 scores below a#1
    world = IclWorld(table({"a#0": [3, 3, 3], "a#1": [4, 4, 4], "a#2": None, "a#4": [3, 3, 4]}),
                     rewrite=lambda q, a, n: None if n == 3 else f"{q}#{n}")
    meter = Meter()
    [result] = run(world, [("a", "a#0")], rounds=4, meter=meter)
    assert result.answer == "a#1"
    rounds = rounds_of(result)
    assert [r["failure"] for r in rounds] == [None, None, "judge:parse_failure", "rewriter:parse_failure", None]
    assert [r["kept"] for r in rounds] == [True, True, False, False, False]
    assert rounds[2]["answer"] == "a#2" and rounds[2]["total"] is None and rounds[2]["scores"] == {}
    assert rounds[3]["answer"] is None
    # after each failure the rewriter starts again from the latest answer that was judged, with its critique
    calls = world.rewrites["a"]
    assert [c["response"] for c in calls] == ["a#0", "a#1", "a#1", "a#1"]
    assert all("why a#1 Helpfulness" in c["critique"] for c in calls[1:])
    assert meter.failures["judge"]["parse_failure"] == 1
    assert meter.failures["rewriter"]["parse_failure"] == 1
    assert optimization_summary(result)["failures"] == 2


def test_a_retry_after_a_failed_round_is_not_served_from_the_cache():
    world = IclWorld(table({"a#0": [3, 3, 3], "a#2": [4, 4, 4]}), cached_rewriter=True,
                     rewrite=lambda q, a, n: None if n == 1 else f"{q}#{n}")
    [result] = run(world, [("a", "a#0")], rounds=2)
    assert [c["response"] for c in world.rewrites["a"]] == ["a#0", "a#0"]  # the same request reached the LM twice
    assert result.answer == "a#2"


def test_an_unreadable_seed_judgment_is_replaced_by_the_first_judged_rewrite():
    world = IclWorld(table({"a#0": None, "a#1": [2, 2, 2], "a#2": [1, 1, 1]}))
    [result] = run(world, [("a", "a#0")], rounds=2)
    assert result.answer == "a#1"
    assert [r["kept"] for r in rounds_of(result)] == [True, True, False]
    assert "could not be read" in world.rewrites["a"][0]["critique"]


def test_rewriter_markers_are_stripped():
    world = IclWorld(table({}, default=[5, 5, 4]), rewrite=lambda q, a, n: f"<START>\n{q} better {n}\n<END>")
    [result] = run(world, [{"query": "a", "answer": "<START>\nplain\n<END>"}], rounds=1)
    assert world.rewrites["a"][0]["response"] == "plain"
    assert result.answer == "a better 1"


def test_parallel_results_come_back_in_input_order():
    tags = [f"t{i}" for i in range(6)]
    # the first example is judged slowly, so it finishes last
    world = IclWorld(lambda answer: [4, 4, 4] if answer.endswith("#1") else [3, 3, 3],
                     judge_delay=lambda answer: 0.5 if answer.startswith("t0") else 0.005)
    inputs: list[Any] = [(t, f"{t}#0") for t in tags[:2]]
    inputs += [{"query": t, "answer": f"{t}#0"} for t in tags[2:4]]
    inputs += [ICLExample(t, f"{t}#0", []) for t in tags[4:]]
    results = run(world, inputs, rounds=2, num_threads=4)
    assert [r.query for r in results] == tags
    assert [r.answer for r in results] == [f"{t}#1" for t in tags]
    assert world.judged[-1].startswith("t0")  # they did finish out of order


def test_optimize_bank_returns_a_new_bank():
    world = IclWorld(table({}, default=[5, 5, 5]))
    bank = AlignmentBank([ICLExample("a", "x", []), ICLExample("b", "y", [])])
    new = optimize_bank(bank, **world.lms(), rounds=1, num_threads=2)
    assert isinstance(new, AlignmentBank) and new is not bank
    assert [e.query for e in new.examples] == ["a", "b"]
    assert all(e.provenance == [] for e in bank.examples)
    assert all(rounds_of(e) for e in new.examples)


@pytest.mark.parametrize("bad", [[("a", "")], [{"query": "a"}], [("a",)], [{"query": "", "answer": "x"}]])
def test_bad_examples_are_rejected(bad):
    world = IclWorld(table({}, default=[5, 5, 5]))
    with pytest.raises(ValueError):
        run(world, bad)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="drpo")
    add_optimize_icl_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def improving_world() -> IclWorld:
    """Each rewrite appends ' (improved)'; each one adds a point per aspect, from 3 up to 5."""
    return IclWorld(lambda answer: [min(5, 3 + answer.count("(improved)"))] * 3,
                    rewrite=lambda q, a, n: f"<START>\n{a} (improved)\n<END>")


def test_cli_end_to_end_with_the_published_format(tmp_path, capsys):
    examples = tmp_path / "icl.json"
    examples.write_text(json.dumps({"How do I boil an egg?": "<START>\nBoil it.\n<END>",
                                    "Tell me a joke.": "<START>\nNo.\n<END>",
                                    "Unused?": "<START>\nCut by --limit.\n<END>"}), encoding="utf-8")
    out = tmp_path / "bank" / "optimized.json"
    args = _cli(["optimize-icl", "--examples", str(examples), "--rounds", "5", "--limit", "2", "--num-threads", "2",
                 "--out", str(out), "--no-progress"])
    world = improving_world()
    assert args.handler(args, lms={"metrics": world.metrics_lm, "judge": world.judge_lm,
                                   "rewriter": world.rewriter_lm}) == 0
    printed = capsys.readouterr().out
    assert "9/15" in printed and "15/15" in printed and "rewriter=4" in printed
    loaded = AlignmentBank.load(out)
    assert [e.query for e in loaded.examples] == ["How do I boil an egg?", "Tell me a joke."]
    assert loaded.examples[0].answer == "Boil it. (improved) (improved)"
    rounds = rounds_of(loaded.examples[0])
    assert [r["total"] for r in rounds] == [9, 12, 15] and all(r["kept"] for r in rounds)


def test_cli_reads_jsonl_and_defaults_to_the_seed_examples(tmp_path, capsys):
    from drpo_dspy.datasets import load_seed_examples

    world = improving_world()
    lms = {"metrics": world.metrics_lm, "judge": world.judge_lm, "rewriter": world.rewriter_lm}
    args = _cli(["optimize-icl", "--rounds", "1", "--limit", "3", "--no-progress"])
    assert args.handler(args, lms=lms) == 0
    assert "not saved" in capsys.readouterr().out
    assert sorted(world.rewrites) == sorted(e["query"] for e in load_seed_examples()[:3])

    path = tmp_path / "icl.jsonl"
    path.write_text('{"query": "q1", "answer": "a1"}\n\n{"query": "q2", "answer": "a2"}\n', encoding="utf-8")
    out = tmp_path / "out.json"
    args = _cli(["optimize-icl", "--examples", str(path), "--rounds", "1", "--out", str(out), "--no-progress"])
    assert args.handler(args, lms=lms) == 0
    assert [e.answer for e in AlignmentBank.load(out).examples] == ["a1 (improved)", "a2 (improved)"]


def test_cli_rejects_bad_files(tmp_path):
    world = improving_world()
    lms = {"metrics": world.metrics_lm, "judge": world.judge_lm, "rewriter": world.rewriter_lm}
    bad = tmp_path / "bad.json"
    bad.write_text('[{"query": "q"}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.json"):
        args = _cli(["optimize-icl", "--examples", str(bad), "--no-progress"])
        args.handler(args, lms=lms)
    with pytest.raises(FileNotFoundError):
        args = _cli(["optimize-icl", "--examples", str(tmp_path / "missing.json"), "--no-progress"])
        args.handler(args, lms=lms)
