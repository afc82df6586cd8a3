"""How llama.cpp's threads wait for each other (OpenMP), set before llama.cpp loads."""

from __future__ import annotations

import os

THREAD_SPIN_COUNT = 300  # measured: bench/probe_thread_wait.py


def set_thread_wait_policy() -> None:
    """Choose how llama.cpp's threads wait for each other, unless the user chose (``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` set).

    llama.cpp's CPU backend meets its threads at an OpenMP barrier after every operation, some 600 per generated
    token. libgomp's default spins up to 300,000 times at each: on a 2-core machine shared with busy processes a
    spinning thread holds the core its partner needs, and generation slows ~10x. Passive waiting alone sleeps at
    once, and waking a sleeping core costs more than the operation (a token took 21 ms instead of 7 on a quiet
    machine). A short spin (300) gets the quiet machine's speed and stays in passive waiting's range under load
    (``bench/probe_thread_wait.py``). libgomp reads these once, when llama_cpp first loads it: they are
    set just before that, so importing drpo_dspy alone changes nothing in the process.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["GOMP_SPINCOUNT"] = str(THREAD_SPIN_COUNT)
