"""The HTML report renders in headless Chromium (skipped when no chromium is on PATH)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from drpo_dspy.evaluation.screenshot import find_chromium, screenshot_html

BENCH = Path(__file__).resolve().parent.parent / "bench" / "screenshot_report.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("screenshot_report", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    html = _load_bench().build_demo_report(tmp_path / "report", limit=2)
    # The demo evaluates every packaged set, the public benchmarks included: the page is about 7,500 pixels long
    # and the general charts come after the benchmark sections, so the screenshot takes the whole page.
    png = screenshot_html(html, tmp_path / "shot.png", width=1280, height=8000)
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    assert rgb.size == (1280, 8000)
    assert png.stat().st_size > 50_000  # text, tables and charts, not a blank page
    colours = set(rgb.resize((320, 500)).getdata())
    assert len(colours) > 200
    # the charts' bars (embedded base64 PNGs) are drawn: look for the first two palette colours
    pixels = list(rgb.getdata())
    for target in ((0x4C, 0x72, 0xB0), (0xDD, 0x84, 0x52)):
        close = sum(1 for p in pixels[::7] if sum(abs(a - b) for a, b in zip(p, target, strict=True)) < 12)
        assert close > 200, f"no chart colour {target} in the screenshot"


def test_screenshot_reports_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        screenshot_html(tmp_path / "nope.html", tmp_path / "x.png", chromium="/bin/true")
