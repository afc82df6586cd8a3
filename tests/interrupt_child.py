"""Child process for the Ctrl-C tests: ``drpo optimize`` on scripted roles, every LM call logged (with
``DRPO_TEST_SLOW_AFTER_LEVEL_1=1``, every base call after the first level takes a minute)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from world import World

from drpo_dspy.cli import main

ROLES = ("base", "metrics", "judge", "optimizer")


def run() -> int:
    # A process started in the background by a non-interactive shell inherits SIGINT as ignored (and Python keeps
    # it so): restore the terminal's behaviour, which is what these tests are about.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_dir, events = Path(sys.argv[1]), Path(sys.argv[2])

    slow = os.environ.get("DRPO_TEST_SLOW_AFTER_LEVEL_1") == "1"

    def on_call(role: str, data: dict) -> None:
        with open(events, "a") as fh:
            fh.write(json.dumps({"role": role, **data}, sort_keys=True) + "\n")
        if slow and role == "base" and (run_dir / "checkpoint.json").exists():
            time.sleep(60)  # an answer that takes long, like a local model on a busy CPU

    World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3], latency=0.05, on_call=on_call, name="sigint")
    return main(["optimize", *[a for r in ROLES for a in (f"--{r}-model", f"scripted/sigint-{r}")],
                 "--num-queries", "40", "--depth", "30", "--n-actions", "2", "--k", "0", "--num-threads", "2",
                 "--no-progress", "--demo-query", "demo q", "--log-dir", str(run_dir), *sys.argv[3:]])


if __name__ == "__main__":
    sys.exit(run())
