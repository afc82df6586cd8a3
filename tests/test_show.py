"""drpo show: the HTML view of a run's beam tree and the reward-per-level chart."""

from __future__ import annotations

import argparse
import io
import json
import re
from html import escape

import pytest
from world import World, field

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.show import add_show_parser, run_show
from drpo_dspy.teleprompt.search_report import best_path, load_trace, render_run, word_diff

TIPS = ["State what you cannot do (no internet, no actions).", "Refuse harmful requests & explain <why>.",
        "Use short sections and bullet points.", "Ask a clarifying question when the query is vague."]


class BulletWorld(World):
    """The optimizer appends one bullet per rewrite; more bullets score higher."""

    def _optimizer(self, messages, params):
        current = field(messages, "current_system_prompt")
        action = int(params.get("seed", 0)) + int(params.get("n_index", 0))
        self._record("optimizer", prompt=current, action=action)
        tip = TIPS[(2 * current.count("\n- ") + action) % len(TIPS)]
        return {"analysis": "a", "thought": "t", "new_system_prompt": f"{current}\n- {tip}"}


def _scores(prompt: str, query: str) -> list[int]:
    bullets = prompt.count("\n- ")
    return [min(5, 2 + bullets + ("<why>" in prompt)), min(5, 3 + bullets)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    world = BulletWorld(_scores)
    drpo = DRPO(**world.roles(), depth=4, n_actions=2, k=0, log_dir=tmp_path_factory.mktemp("show") / "run",
                progress=False, num_threads=2)
    program = drpo.compile(AlignedResponder("You are a helpful assistant.", examples=[], k=0),
                           trainset=["Plan a trip to Lisbon.", "How do I pick a lock?", "Explain tides.",
                                     "Write a haiku about rain.", "Summarize the causes of WW1."])
    directory = drpo.log_dir
    assert program.instructions == json.loads((directory / "summary.json").read_text())["best_prompt"]
    return directory


def test_page_holds_every_prompt_diffs_and_the_best_path(run_dir, tmp_path):
    page = render_run(run_dir, tmp_path / "view.html")
    html = page.read_text(encoding="utf-8")
    nodes = load_trace(run_dir)
    assert len(nodes) >= 7
    for node in nodes:
        assert f"id='node-{node['id']}'" in html
        assert escape(node["prompt"]) in html  # every prompt, escaped (one tip holds '<why>' and '&')
    assert "<why>" not in html and "&lt;why&gt;" in html
    assert "<ins>" in html and "Initial prompt." in html
    summary = json.loads((run_dir / "summary.json").read_text())
    path = best_path(nodes, run_dir)
    assert path[-1]["prompt"] == summary["best_prompt"] and path[0]["parent_id"] is None
    assert [n["level"] for n in path] == list(range(1, len(path) + 1))
    marked = set(re.findall(r"<div class='node best[^']*' id='node-(\d+)'", html))
    assert marked == {str(n["id"]) for n in path}
    assert html.count("&#9733; best path") == len(path)
    for node in nodes:  # per-aspect scores and rationales of every readable judgment
        for aspect, score in node["judgment"]["scores"].items():
            assert f"<td>{aspect}</td><td>{score}</td><td>r-{aspect}</td>" in html
    beam = {n["id"] for n in json.loads((run_dir / "checkpoint.json").read_text())["state"]["beam"]}
    parents = {n["parent_id"] for n in nodes}
    for node in nodes:  # a node fell out of the beam when it has no child and is not in the final beam
        card = html.split(f"id='node-{node['id']}'>", 1)[1].split("</span></div>", 1)[0].split("<details", 1)[0]
        assert ("not kept" in card) == (node["id"] not in parents | beam), node["id"]
    assert "not kept" in html
    if any(n["carried"] for n in nodes):
        assert "carried over (skip rule)" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained


def test_best_path_without_checkpoint_matches_the_ranked_search(run_dir, tmp_path):
    nodes = load_trace(run_dir)
    with_checkpoint = best_path(nodes, run_dir)
    assert best_path(nodes) == with_checkpoint  # ranking by path mean reproduces the beam's winner here


def test_chart_is_written_embedded_and_decodes(run_dir, tmp_path):
    page = render_run(run_dir, tmp_path / "out" / "view.html")
    png = (tmp_path / "out" / "reward_per_level.png").read_bytes()
    from matplotlib.image import imread

    image = imread(io.BytesIO(png), format="png")
    assert image.shape[0] > 200 and image.shape[1] > 400
    import base64

    assert base64.b64encode(png).decode("ascii") in page.read_text(encoding="utf-8")


def test_default_output_is_inside_the_run_directory(run_dir):
    page = render_run(run_dir)
    assert page == run_dir / "search.html" and (run_dir / "reward_per_level.png").is_file()


def test_word_diff_escapes_and_marks_changes():
    html = word_diff("Be kind.\n- a <b>", "Be very kind.\n- a <b>\n- c & d")
    assert "<ins> very</ins>" in html and "&lt;b&gt;" in html and "<ins>\n- c &amp; d</ins>" in html
    assert word_diff("same", "same") == "same"
    assert "<del>old</del><ins>new</ins>" in word_diff("old", "new")


def test_clear_errors_for_missing_and_foreign_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_run(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        render_run(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="not a drpo run directory"):
        render_run(tmp_path)
    (tmp_path / "trace.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        render_run(tmp_path)
    (tmp_path / "trace.jsonl").write_text('{"id": 0}\n')
    with pytest.raises(ValueError, match="line 1 is not a trace node"):
        render_run(tmp_path)
    (tmp_path / "trace.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        render_run(tmp_path)


def test_cli(run_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="drpo")
    add_show_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["show", str(run_dir), "--out", str(tmp_path / "x.html")])
    assert args.handler is run_show and run_show(args) == 0
    assert (tmp_path / "x.html").is_file() and "x.html" in capsys.readouterr().out
    with pytest.raises(ValueError, match="html"):
        run_show(parser.parse_args(["show", str(run_dir), "--out", str(tmp_path / "x.png")]))
    with pytest.raises(FileNotFoundError):
        run_show(parser.parse_args(["show", str(tmp_path / "missing")]))


def test_screenshot_is_drawn(run_dir, tmp_path):
    from drpo_dspy.evaluation.screenshot import find_chromium, screenshot_html

    if find_chromium() is None:
        pytest.skip("no chromium on PATH")
    page = render_run(run_dir, tmp_path / "view.html")
    png = screenshot_html(page, tmp_path / "view.png", width=1280, height=2000)
    from matplotlib.image import imread

    image = imread(str(png))
    assert image.shape[:2] == (2000, 1280)
    assert image[..., :3].std() > 0.05  # not a blank page


def test_settings_read_as_words_not_python_values(run_dir, tmp_path):
    html = render_run(run_dir, tmp_path / "view.html").read_text(encoding="utf-8")
    guards = html.split("<h2>Guards against judge gaming</h2>", 1)[1].split("</p>", 1)[0]
    assert "length_control: no" in guards and "refusal_penalty: n/a" in guards
    assert "None" not in guards and "False" not in guards and "True" not in guards


def test_rationales_that_are_only_numbers_are_called_out():
    from drpo_dspy.teleprompt.search_report import render_html

    def node(i, rationales):
        return {"id": i, "level": 1, "prompt": "p", "parent_id": None, "rewards": [1.0], "query": "q",
                "response": "a", "judgment": {"scores": {"helpfulness": 1, "clarity": 2}, "rationales": rationales}}

    bare = render_html([node(0, {"helpfulness": "1.0", "clarity": "2.0"})], [node(0, {})], b"", title="t")
    assert "Every rationale is empty or only a number" in bare
    reasoned = render_html([node(0, {"helpfulness": "Misses the question.", "clarity": "2.0"})], [node(0, {})],
                           b"", title="t")
    assert "Every rationale is empty or only a number" not in reasoned
