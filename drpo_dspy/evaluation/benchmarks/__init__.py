"""Public benchmarks (XSTest, IFEval, HarmBench, MT-Bench) as evaluation sets, with their own scorers."""
