"""`dlexp eval RUN_DIR [key=value ...]`: a classifier's test report, or a generative run's sample-quality scores.

Results go to RUN_DIR/eval/, to metrics.json (keys eval/...) and to TensorBoard (tb/). Every generative
score is stored with its protocol: sample sizes, real split, extractor, its checksum and accuracy, seed.
"""
from __future__ import annotations

import time

from dlexp.commands import options, usage
from dlexp.engine.evaluation import evaluate, record
from dlexp.engine.rundir import RunDir


def main(args: list[str]) -> int:
    positional, opts = options.parse("eval", args)
    run = RunDir.existing(options.one_run_dir("eval", positional, usage.EVAL))
    start = time.time()
    metrics, images = evaluate(run, opts)
    metrics["eval/wall_s"] = round(time.time() - start, 2)
    record(run, metrics, images)
    width = max(len(k) for k in metrics)
    for key, value in sorted(metrics.items()):
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"eval_dir: {run.eval}")
    return 0
