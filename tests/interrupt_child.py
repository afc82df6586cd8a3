"""Child process for the Ctrl-C test: ``drpo optimize`` on scripted roles, every finished LM call logged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from world import World

from drpo_dspy.cli import main

ROLES = ("base", "metrics", "judge", "optimizer")


def run() -> int:
    run_dir, events = Path(sys.argv[1]), Path(sys.argv[2])

    def on_call(role: str, data: dict) -> None:
        with open(events, "a") as fh:
            fh.write(json.dumps({"role": role, **data}, sort_keys=True) + "\n")

    World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3], latency=0.05, on_call=on_call, name="sigint")
    return main(["optimize", *[a for r in ROLES for a in (f"--{r}-model", f"scripted/sigint-{r}")],
                 "--num-queries", "40", "--depth", "30", "--n-actions", "2", "--k", "0", "--num-threads", "2",
                 "--no-progress", "--demo-query", "demo q", "--log-dir", str(run_dir), *sys.argv[3:]])


if __name__ == "__main__":
    sys.exit(run())
