"""Child process for the kill-and-resume test: a scripted DRPO compile that logs every finished LM call."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from world import World

from drpo_dspy import DRPO, AlignedResponder


def scores(prompt: str, query: str) -> list[int]:
    digest = hashlib.sha256(f"{prompt}|{query}".encode()).digest()
    return [1 + digest[0] % 4, 1 + digest[1] % 4]


def main() -> None:
    log_dir, events, resume = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "resume"

    def on_call(role: str, data: dict) -> None:
        with open(events, "a") as fh:
            fh.write(json.dumps({"role": role, **data}, sort_keys=True) + "\n")

    world = World(scores, cache=True, latency=0.02, on_call=on_call, name="resume-world")
    drpo = DRPO(**world.roles(), depth=6, n_actions=2, beam_size=2, k=0, log_dir=log_dir, progress=False,
                num_threads=4)
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=[f"query {i}" for i in range(8)],
                           resume=resume)
    print(json.dumps({"prompt": program.instructions, "levels": program.drpo_result.num_levels}))


if __name__ == "__main__":
    main()
