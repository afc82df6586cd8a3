"""Importing drpo_dspy changes nothing in the user's process but the one litellm variable it documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_import_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_WAIT_POLICY",
                        "GOMP_SPINCOUNT", "LITELLM_LOCAL_MODEL_COST_MAP")}
    script = ("import json, os; before = dict(os.environ); import drpo_dspy, drpo_dspy.cli, drpo_dspy.evaluation; "
              "after = dict(os.environ); print(json.dumps({k: after.get(k) for k in set(before) ^ set(after) "
              "| {k for k in before if before[k] != after.get(k)}}))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
