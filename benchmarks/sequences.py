"""dlexp's fit of recurrent nets vs plain PyTorch loops doing the same work, in one process: IMDB-like LSTM epochs
(fixed-length padded batches and packed sequences) and the character LSTM's training throughput.

    python benchmarks/sequences.py                 # ~3.5 min on 2 cores: 4000 sequences of 200 ids, 3 epochs, 3 repeats
    python benchmarks/sequences.py --threads 1     # the same at one intra-op thread (busy shared cores)
    python benchmarks/sequences.py --quick         # seconds: tiny sizes, checks the script works (tests)

1. LSTM (target: an epoch within 1.10x of the plain loop). The net of conf/model/lstm.yaml
   (dlexp.nets.recurrent.RecurrentClassifier: embedding 32, LSTM 32, one logit, vocabulary 10,000), RMSprop as
   experiment=imdb_recurrent (lr 1e-3, alpha 0.9), batch 128, on synthetic IMDB-like reviews: word ids >= 3,
   lengths log-normal around IMDB's median of 174 words, the last seq_len kept, padded with 0 IN FRONT (Keras'
   pad_sequences), binary labels carried by a few sentiment words. Three sides, interleaved in each repeat:
   - plain fixed: the padded (B, T) batches through net(x), exactly what dlexp computes;
   - plain packed: the same net's embedding, LSTM layer and linear layer on packed sequences. Pre-padded rows
     cannot be packed as they are (pack_padded_sequence takes the first `length` steps), so each row is rolled
     once, before training and outside the timing, so that its words come first in order (re-padded at the end;
     NOT flipped, which would read the review backwards); lengths = non-zero ids; the summary is h_n, the state
     after each sequence's own last word. It skips the padding steps, so it is a (slightly) different function:
     its loss is close to, not equal to, the others';
   - dlexp: compose() + build() as `dlexp train model=lstm optimizer=rmsprop` builds it, with an ArrayDataModule
     over the same tensors (SyntheticReviews below is its dataset.source), logger=none, callbacks=none (no
     progress bar, no checkpoints), no validation; epochs timed by a callback (cache.EpochTimer).
   Each side trains `--epochs` epochs from the same seed, in the same batch order (seed + epoch, as dlexp's
   TensorBatches); the time of an epoch after the first (steady state) is compared: ratio = dlexp / the faster
   plain loop. Every side's final-epoch mean training loss is printed: plain fixed and dlexp agree to 1e-4 when
   they did the same work.
2. Character LSTM (throughput, no target). experiment=char_lm's net and optimizer (dlexp.nets.recurrent.CharLSTM:
   embedding 32, LSTM 128; RMSprop lr 0.01), dataset=text windows of 60 characters, batch 128, `--steps` steps per
   epoch; characters/s = batch * seq_len * steps / epoch seconds, after the first epoch, plain loop vs dlexp.

All sides run in this process with the same torch.set_num_threads (`--threads`, default: all cores; 1 with --quick).
On cores busy with other work, two threads can make every op wait for a descheduled thread (10-100x slower steps):
compare runs at the same thread count, and prefer --threads 1 there.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from cache import EpochTimer
from common import cpu_model, machine, median, parser, table, verdict
from omegaconf import OmegaConf

from dlexp.config.compose import compose
from dlexp.data.sources import SourceData
from dlexp.engine.build import build
from dlexp.engine.instantiate import make
from dlexp.nets.recurrent import CharLSTM, RecurrentClassifier

TARGET = 1.10  # an LSTM epoch: dlexp / plain loop
SAME_LOSS = 1e-4  # plain fixed vs dlexp: the very same computation
PACKED_LOSS = 0.10  # plain packed vs plain fixed: the padding steps skipped (another function), relative difference


class SyntheticReviews:
    """IMDB-like word-id reviews as a dataset source: (N, seq_len) int64, pre-padded with 0, labels 0/1.

    Ids: 0 padding, words >= 3 drawn log-uniformly over the vocabulary (a rough Zipf law); review lengths
    log-normal (median 174 words, as IMDB's), cut to their last seq_len words; about 10% of the words are one of
    20 sentiment words of the review's label, so there is something to learn. Seeded: the same tensors every call.
    """

    def __init__(self, n_train: int, n_test: int, seq_len: int, vocab_size: int = 10000, seed: int = 0) -> None:
        self.n_train, self.n_test, self.seq_len, self.vocab_size, self.seed = n_train, n_test, seq_len, vocab_size, seed

    def __call__(self) -> SourceData:
        g = torch.Generator().manual_seed(self.seed)
        n, T, V = self.n_train + self.n_test, self.seq_len, self.vocab_size
        lengths = (174 * torch.exp(0.75 * torch.randn(n, generator=g))).long().clamp(10, T)
        y = torch.randint(0, 2, (n,), generator=g)
        words = 3 + torch.exp(torch.rand(n, T, generator=g) * math.log(V - 3)).long().clamp(max=V - 4)
        sentiment = V // 20 + 20 * y.view(-1, 1) + torch.randint(0, 20, (n, T), generator=g)
        words = torch.where(torch.rand(n, T, generator=g) < 0.1, sentiment, words)
        x = torch.where(torch.arange(T) >= T - lengths.view(-1, 1), words, 0)  # pre-padded: words at the end
        return SourceData(x[: self.n_train], y[: self.n_train], x[self.n_train:], y[self.n_train:])


@dataclass
class Side:
    """One side's runs: the epoch times of each run and its final-epoch mean training loss."""

    runs: list[list[float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)

    def add(self, epoch_s: list[float], loss: float) -> None:
        self.runs.append(epoch_s)
        self.losses.append(loss)
        self.threads.add(torch.get_num_threads())

    def steady(self) -> float:
        """Median over runs of each run's median epoch time after its first epoch."""
        return median([median(r[1:] if len(r) > 1 else r) for r in self.runs])


def kwargs(node) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
            if k not in ("_target_", "_partial_", "init_from", "init_include", "init_exclude")}


def seed_all(seed: int) -> None:
    """What build() seeds (pl.seed_everything), so the net starts from the same weights."""
    pl.seed_everything(seed, workers=True, verbose=False)


def orders(n: int, batch_size: int, seed: int, epoch: int, limit: int | None = None) -> list[torch.Tensor]:
    """The epoch's index batches, in dlexp's TensorBatches order (a permutation from seed + epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    batches = list(order.split(batch_size))
    return batches[:limit] if limit else batches


def plain_fit(step: Callable[[torch.Tensor], torch.Tensor], n: int, batch_size: int, seed: int, epochs: int,
              limit: int | None = None) -> tuple[list[float], float]:
    """Epochs of step(index batch) -> loss (it does forward, backward and the update); epoch times, last mean loss."""
    times, mean = [], math.nan
    for epoch in range(epochs):
        start = time.perf_counter()
        loss_sum, seen = torch.zeros(()), 0
        for idx in orders(n, batch_size, seed, epoch, limit):
            loss_sum += step(idx) * len(idx)
            seen += len(idx)
        times.append(time.perf_counter() - start)
        mean = loss_sum.item() / seen
    return times, mean


def post_padded(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-padded rows (0s first) rolled so each row's words come first, in order; and the lengths (CPU int64)."""
    T = x.shape[1]
    lengths = (x != 0).sum(1)
    idx = (torch.arange(T).view(1, -1) + (T - lengths).view(-1, 1)) % T
    return x.gather(1, idx), lengths.cpu()


def packed_logits(net: RecurrentClassifier, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The classifier on packed sequences: embedding, the LSTM's state after each row's last word, linear."""
    packed = torch.nn.utils.rnn.pack_padded_sequence(net.embed(x), lengths, batch_first=True, enforce_sorted=False)
    _, (h, _) = net.rnn.layers[0](packed)  # h (1, B, H), back in the batch's order
    return net.fc(h[-1])


def plain_lstm(cfg, train: tuple[torch.Tensor, torch.Tensor], packed: bool, epochs: int) -> tuple[list[float], float]:
    """The plain loop: RecurrentClassifier, RMSprop, BCE with logits, on fixed-length or packed batches."""
    assert cfg.model.num_layers == 1 and not cfg.model.bidirectional and cfg.model.recurrent_dropout == 0
    seed_all(cfg.seed)
    net = RecurrentClassifier(**kwargs(cfg.model))
    opt = torch.optim.RMSprop(net.parameters(), **kwargs(cfg.optimizer))
    x, y = train
    if packed:
        x, lengths = post_padded(x)  # once, before training: the data as a packing loop would store it
    target = y.float()

    def step(idx: torch.Tensor) -> torch.Tensor:
        xb = x.index_select(0, idx)
        logits = packed_logits(net, xb, lengths[idx]) if packed else net(xb)  # (B, 1)
        loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), target.index_select(0, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    net.train()
    return plain_fit(step, len(y), cfg.dataset.batch_size, cfg.seed, epochs)


def plain_char_lm(cfg, train: tuple[torch.Tensor, torch.Tensor], epochs: int, steps: int) -> tuple[list[float], float]:
    """The plain loop: CharLSTM, RMSprop, cross-entropy per character, `steps` batches per epoch."""
    seed_all(cfg.seed)
    net = CharLSTM(**kwargs(cfg.model))
    opt = torch.optim.RMSprop(net.parameters(), **kwargs(cfg.optimizer))
    x, y = train

    def step(idx: torch.Tensor) -> torch.Tensor:
        logits = net(x.index_select(0, idx))  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.index_select(0, idx).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    net.train()
    return plain_fit(step, len(y), cfg.dataset.batch_size, cfg.seed, epochs, steps)


def dlexp_fit(cfg) -> tuple[list[float], float]:
    """dlexp's own build() and Trainer.fit of the config; epoch times from a callback, last epoch's train/loss."""
    parts = build(cfg, model_name=OmegaConf.select(cfg, "model._target_").rsplit(".", 1)[-1])
    timer = EpochTimer()
    parts.trainer.callbacks.append(timer)
    parts.trainer.fit(parts.task, datamodule=parts.datamodule)
    metrics = parts.trainer.callback_metrics
    return timer.seconds, float(metrics.get("train/loss_epoch", metrics["train/loss"]))


def configs(args, run_dir: Path) -> dict:
    """The two dlexp configs, composed as `dlexp train` does; the LSTM's dataset source is SyntheticReviews."""
    common = ["trainer=cpu", "logger=none", "callbacks=none", f"run_dir={run_dir}", "trainer.limit_val_batches=0",
              f"trainer.max_epochs={args.epochs}", "dataset.batch_size=128"]
    lstm = compose(["model=lstm", "dataset=imdb_seq", "optimizer=rmsprop", f"dataset.seq_len={args.seq_len}",
                    "dataset.val_fraction=0", *common])
    lstm.dataset.source = OmegaConf.create({"_target_": f"{SyntheticReviews.__module__}.SyntheticReviews",
                                            "n_train": args.sequences, "n_test": 128, "seq_len": args.seq_len,
                                            "vocab_size": lstm.dataset.vocab_size})
    chars = ["dataset.source.max_chars=20000"] if args.quick else []
    char_lm = compose(["model=char_lstm", "dataset=text", "optimizer=rmsprop", "optimizer.lr=0.01",
                       f"trainer.limit_train_batches={args.steps}", *chars, *common])
    return {"lstm": lstm, "char_lm": char_lm}


def training_split(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """The training tensors dlexp's datamodule holds for this config (same source, same split)."""
    datamodule = make("dataset", cfg.dataset, seed=cfg.seed)
    datamodule.load()
    return datamodule.splits["train"]


def measure(cfgs: dict, args, lstm_train: tuple[torch.Tensor, torch.Tensor],
            char_train: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Side]:
    """All sides, interleaved in each repeat (fixed, packed, dlexp LSTM; plain, dlexp char LM)."""
    sides = {
        "lstm plain fixed": lambda: plain_lstm(cfgs["lstm"], lstm_train, False, args.epochs),
        "lstm plain packed": lambda: plain_lstm(cfgs["lstm"], lstm_train, True, args.epochs),
        "lstm dlexp": lambda: dlexp_fit(cfgs["lstm"]),
        "char_lm plain": lambda: plain_char_lm(cfgs["char_lm"], char_train, args.epochs, args.steps),
        "char_lm dlexp": lambda: dlexp_fit(cfgs["char_lm"]),
    }
    results = {name: Side() for name in sides}
    for i in range(args.repeats):
        for name, side in sides.items():
            epoch_s, loss = side()
            results[name].add(epoch_s, loss)
            print(f"  {name} #{i + 1}: epochs {' '.join(f'{s:.2f}' for s in epoch_s)} s, train/loss {loss:.4f}",
                  file=sys.stderr, flush=True)
    return results


def report(results: dict[str, Side], cfgs: dict, args) -> None:
    """The table, the ratio lines and the same-work lines."""
    char_cfg = cfgs["char_lm"]
    chars_per_epoch = args.steps * char_cfg.dataset.batch_size * char_cfg.dataset.seq_len
    fixed, packed, dlexp = (results[f"lstm {s}"].steady() for s in ("plain fixed", "plain packed", "dlexp"))
    best_plain = min(fixed, packed)
    ratio = dlexp / best_plain
    char_plain, char_dlexp = results["char_lm plain"].steady(), results["char_lm dlexp"].steady()
    rows = []
    for name, side in results.items():
        s = side.steady()
        rate = f"{chars_per_epoch / s:.0f} chars/s" if name.startswith("char") else f"{args.sequences / s:.0f} seq/s"
        base = char_plain if name.startswith("char") else best_plain
        runs = " / ".join(" ".join(f"{e:.2f}" for e in r[1:]) for r in side.runs)
        rows.append([name, f"{s:.3f}", runs, rate, f"{median(side.losses):.4f}", f"{s / base:.3f}",
                     f"<= {TARGET}" if name == "lstm dlexp" else "",
                     verdict(ratio, TARGET) if name == "lstm dlexp" else "", ",".join(map(str, side.threads))])
    print(table(["side", "epoch s (median)", "steady epochs s, per run", "throughput", "train/loss", "ratio",
                 "target", "verdict", "threads"], rows))
    faster = "packed" if packed < fixed else "fixed"
    print(f"ratio lstm_epoch: {ratio:.3f} (dlexp {dlexp:.3f} s / plain {faster} {best_plain:.3f} s; "
          f"target <= {TARGET}) {verdict(ratio, TARGET)}")
    print(f"ratio lstm_packed_vs_fixed: {packed / fixed:.3f} (plain packed / plain fixed epoch: {faster} is faster "
          "here)")
    print(f"ratio char_lm: {char_dlexp / char_plain:.3f} (dlexp s / plain s per epoch = plain chars/s / dlexp "
          f"chars/s: {chars_per_epoch / char_plain:.0f} vs {chars_per_epoch / char_dlexp:.0f}; no target)")
    print(same_work(results))


def same_work(results: dict[str, Side]) -> str:
    """Whether the sides' final training losses agree: exactly (dlexp vs fixed), closely (packed vs fixed)."""
    loss = {name: side.losses[0] for name, side in results.items()}
    fixed = loss["lstm plain fixed"]
    lstm_same = math.isclose(loss["lstm dlexp"], fixed, rel_tol=SAME_LOSS, abs_tol=SAME_LOSS)
    packed_close = math.isclose(loss["lstm plain packed"], fixed, rel_tol=PACKED_LOSS)
    char_same = math.isclose(loss["char_lm dlexp"], loss["char_lm plain"], rel_tol=SAME_LOSS, abs_tol=SAME_LOSS)
    shown = ", ".join(f"{name} {value:.5f}" for name, value in loss.items())
    ok = lstm_same and packed_close and char_same
    return (f"same work (final-epoch train/loss; dlexp = plain to {SAME_LOSS}, packed within {PACKED_LOSS:.0%} of "
            f"fixed): {shown}: {'agree' if ok else 'DIFFER: the sides did not do the same work'}")


def main() -> None:
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):  # per-fit banners bury the table
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|GPU available).*")
    p = parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads, every side (default: all "
                   "cores; --quick: 1, seconds even on busy shared cores)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run; the first is not timed (default 3)")
    p.add_argument("--sequences", type=int, default=None, help="LSTM training sequences (default 4000)")
    p.add_argument("--seq-len", type=int, default=None, help="LSTM sequence length (default 200)")
    p.add_argument("--steps", type=int, default=None, help="char LM steps per epoch (default 30)")
    args = p.parse_args()
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 3)
    args.epochs = args.epochs or (2 if quick else 3)
    args.sequences = args.sequences or (256 if quick else 4000)
    args.seq_len = args.seq_len or (40 if quick else 200)
    args.steps = args.steps or (3 if quick else 30)
    torch.set_num_threads(args.threads or (1 if quick else os.cpu_count()))
    print(f"sequences: dlexp fit vs plain PyTorch loops, LSTM epochs and char-LM throughput\n"
          f"CPU: {cpu_model()}; {machine()}; torch {torch.__version__}, Lightning {pl.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        cfgs = configs(args, Path(tmp))
        lstm_train, char_train = training_split(cfgs["lstm"]), training_split(cfgs["char_lm"])
        results = measure(cfgs, args, lstm_train, char_train)
    padding = (lstm_train[0] == 0).float().mean().item()
    print(f"LSTM: {args.sequences} sequences of {args.seq_len} ids ({padding:.0%} of them padding), batch 128, "
          f"{args.epochs} epochs (first not timed); char LM: {args.steps} steps of 128 x 60 per epoch, "
          f"{len(char_train[1])} windows; medians of {args.repeats} interleaved runs")
    report(results, cfgs, args)


if __name__ == "__main__":
    main()
