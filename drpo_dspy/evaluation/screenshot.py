"""Rendering an HTML report to PNG with headless Chromium (for checks and previews; optional).

Chromium runs with networking features switched off and a throw-away profile; the report itself loads nothing
from outside its file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot_html(html: str | Path, png: str | Path, *, width: int = 1280, height: int = 2000,
                    timeout: float = 90.0, chromium: str | None = None) -> Path:
    """Render ``html`` (a file) to ``png`` at ``width`` x ``height`` pixels; returns the PNG path.

    Raises:
        FileNotFoundError: no Chromium on PATH, or the HTML file is missing.
        RuntimeError: Chromium failed or wrote no image.
    """
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"HTML file {html} does not exist")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    if png.exists():
        png.unlink()
    with tempfile.TemporaryDirectory(prefix="drpo-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
            html.as_uri(),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return png
