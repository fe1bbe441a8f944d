"""Every command's help text, with the option grammar they share; light (no torch, no Hydra): `--help` reads it."""
from __future__ import annotations

from dlexp.config.compose import default_choices, groups

MAIN = """\
usage: dlexp SUBCOMMAND [overrides...]

Config-driven deep-learning experiments: Hydra config groups composed into a PyTorch Lightning run.

subcommands:
  train [-m] [overrides]   train, test and summarise one run (-m: a sweep over comma-separated values)
  resume RUN_DIR           continue a run (or a sweep's unfinished jobs) from its last checkpoint
  eval RUN_DIR             test report of a classifier; FID/KID/IS/precision-recall of a GAN or VAE run
  sample RUN_DIR [n=64]    images from a GAN or VAE run (seed=0 mode=grid|interpolate|latent_map steps=8 single=true
                           out=DIR), or mode=codes: a plot of an autoencoder's 2-d codes
  compare SWEEP_DIR|RUN_DIR...  the runs' table, best first, and a PNG of their curves and samples
  list [GROUP]             the choices of every config group (or of one) with a one-line description
  runs [DIR] [--json]      every run and sweep job under outputs/ (or DIR), newest first: status, best, test, age
                           (sort=best status=interrupted model=mlp ...)

examples:
  dlexp train                                       convnet on the offline digits dataset
  dlexp train model=mlp model.activation=elu optimizer=nesterov scheduler=exponential
  dlexp train dataset=fashion_mnist model=convnet trainer.max_epochs=2
  dlexp train experiment=optimizers                 one of the notes' experiments (dlexp list experiment)
  dlexp train -m optimizer=sgd,momentum,adam regularizer=none,l2
  dlexp compare outputs/multirun/2026-11-22_10-40-00_d4e5f6   (metric=val/loss out=FILE.png)
  dlexp train model=wgan_gp dataset=mnist
  dlexp sample outputs/runs/2026-11-22_10-31-07_a1b2c3 n=64 mode=interpolate
  dlexp list model
  dlexp runs status=interrupted               what stopped, with the command that continues each

Every run writes outputs/runs/<date>_<time>_<hex>/ with config.yaml, overrides.yaml, metrics.json,
train.log, checkpoints/ and tb/ (tensorboard --logdir outputs). `dlexp train --help` for overrides.
"""

TRAIN = """\
usage: dlexp train [-m] [key=value | group=choice | +key=value | ~key ...]

Hydra override grammar: group=choice picks a config file, key=value changes one value,
+key=value adds a key, a,b,c sweeps (with -m), [a,b] combines several files of one group
(regularizer=[l2,dropout], callbacks=[default,early_stopping]).

groups (default first; `dlexp list GROUP` describes each choice):
{groups}

common keys:
  seed=42                     repeatable CPU runs (trainer.deterministic=true for bitwise)
  dataset.batch_size=64       dataset.val_fraction=0.1  dataset.flip=true  dataset.translate=2
  trainer.max_epochs=10       trainer=debug (a few batches, seconds)  trainer=gpu
  optimizer.lr=0.001          optimizer.weight_decay=0
  monitor=val/acc monitor_mode=max   the metric for best checkpoint and early stopping
  model.init_from=RUN_DIR     load matching weights (model.init_include / model.init_exclude regexes)
  ckpt_path=last|FILE         continue the latest run (or FILE's run) in its own directory (= dlexp resume)
  on_nan=stop|skip            a NaN/inf loss stops the run (exit 1) or skips that batch
  callbacks.checkpoint.every_n_train_steps=100   also write last.ckpt every 100 steps
  paths.data_dir=DIR          where datasets are looked for (env DLEXP_DATA_DIR)

Hydra's own flags work too: --cfg job prints the composed config, --info shows the search path.
"""

RESUME = """\
usage: dlexp resume RUN_DIR|SWEEP_DIR [key=value ...]

Continue a run in its own directory from checkpoints/last.ckpt, or a sweep's unfinished jobs (completed ones are
skipped). Only keys that do not change the run so far may be set: trainer.max_epochs, trainer.max_steps, logging,
validation/test limits, checkpoint and sample frequency.
"""

EVAL = """\
usage: dlexp eval RUN_DIR [key=value ...]

A classifier's test report (accuracy, per-class accuracy, confusion matrix, most confidently wrong images), or a GAN
or VAE run's FID/KID/IS/precision/recall with their protocol. Written to RUN_DIR/eval/ and metrics.json (eval/...).
options (conf/eval.yaml): n_real=1000 n_fake=1000 seed=0 extractor=RUN_DIR backbone=domain|inception weights=PATH
  kid_subsets=10 kid_subset_size=100 k=3 n_wrong=16 extractor_epochs=5 batch_size=256
"""

SAMPLE = """\
usage: dlexp sample RUN_DIR [key=value ...]

Images from a GAN or VAE run (its EMA generator when it kept one), or a plot of an autoencoder's 2-d codes;
line plots and a .npy of 1-D signals (ECG GANs); text from a character language model at several temperatures.
options (conf/sample.yaml): n=64 seed=0 mode=grid|interpolate|latent_map|codes steps=8 single=false out=DIR
  language models: prompt=TEXT temperature=0,0.2,0.5,1.0,1.2 (0: greedy) length=400
"""

COMPARE = """\
usage: dlexp compare SWEEP_DIR | RUN_DIR [RUN_DIR ...] [key=value ...]

The runs' table, best first, and one PNG of their curves (and last sample grids).
options (conf/compare.yaml): metric=NAME (default: each run's monitor) out=FILE.png
"""

LIST = """\
usage: dlexp list [GROUP]

The choices of every config group (or of one) with a one-line description.
"""

RUNS = """\
usage: dlexp runs [DIR] [key=value ...] [--json]

Every run and sweep job under outputs/ (or DIR), newest first: name (sweep/job for a sweep's jobs), experiment, model,
dataset, status, the monitored metric's best value, the main test metric, epochs, wall time, age. Status is what
metrics.json says: completed, interrupted (the `dlexp resume` command that continues it is printed), failed; or
unfinished (no metrics.json yet: still running, or killed) or unreadable (a damaged file; the reason is printed).
options (conf/runs.yaml): sort=age|name|experiment|model|dataset|status|best|test|epochs|wall reverse=true
  status=completed|interrupted|failed|unfinished|unreadable model=NAME dataset=NAME experiment=NAME (a,b: either)
--json: a list of objects (path, status, monitor, best, test_metric, test, wall_s, age_s, resume, reason, ...)
"""


def train() -> str:
    """dlexp train --help: the grammar, every group with its default and choices, the common keys."""
    defaults = default_choices()
    lines = [f"  {g:<12} {defaults.get(g) or '-':<12} {', '.join(c)}" for g, c in groups().items()
             if g not in ("hydra", "paths")]
    return TRAIN.format(groups="\n".join(lines))


def text(command: str) -> str:
    """The help text of one command."""
    return train() if command == "train" else {"resume": RESUME, "eval": EVAL, "sample": SAMPLE, "compare": COMPARE,
                                               "list": LIST, "runs": RUNS}[command]
