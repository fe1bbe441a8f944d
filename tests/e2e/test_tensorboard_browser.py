"""What a user sees in TensorBoard, checked in a real headless Chromium (driven by Playwright): `tensorboard --logdir
outputs` on loopback over a two-job sweep and a GAN run made by the installed `dlexp`. The scalars dashboard lists the
runs' train/loss and val/acc, the images tab shows the GAN's sample grid, the HPARAMS tab one row per sweep job with
its test/acc. Screenshots are kept in the test's tmp dir. Skipped with the reason where Chromium or Playwright is
absent (.ci/run installs Debian's chromium; Playwright comes with the test extra)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import dlexp_bin

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium for TensorBoard: apt-get install chromium")
TINY = ["trainer=debug", "logger=tensorboard", "threads=1", "channels_last=false"]


def dlexp(cwd: Path, *args: str) -> str:
    """The installed `dlexp` in cwd; returns the directory named on its last stdout line (contract C1)."""
    result = subprocess.run([dlexp_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1].split(": ", 1)[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Any]:
    """A two-optimizer sweep (3 epochs) on digits and a one-epoch DCGAN that writes a sample grid, in one outputs/."""
    work = tmp_path_factory.mktemp("tensorboard")
    sweep = Path(dlexp(work, "train", "-m", *TINY, "trainer.max_epochs=3", "optimizer=sgd,adam"))  # lines, not dots
    gan = Path(dlexp(work, "train", "model=dcgan", *TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=4"))
    return {"dir": work, "jobs": sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file()), "gan": gan}


@pytest.fixture(scope="module")
def board(work) -> Iterator[str]:
    """`tensorboard --logdir outputs` on 127.0.0.1, a port of its own choosing; its URL. Stopped after the module."""
    tensorboard = shutil.which("tensorboard") or str(Path(sys.executable).parent / "tensorboard")
    log = work["dir"] / "tensorboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([tensorboard, "--logdir", "outputs", "--host", "127.0.0.1", "--port", "0"],
                                cwd=work["dir"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:\d+/", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield found.group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's), driven by Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install '.[test]'")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path):
    """A 1400x1000 tab; its screenshot lands in the test's tmp dir whatever the outcome."""
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.set_default_timeout(60_000)
    yield tab
    tab.screenshot(path=str(tmp_path / "tensorboard.png"))
    tab.close()


def tb_run(run_dir: Path, work: dict[str, Any]) -> str:
    """TensorBoard's name for a run: its events folder relative to --logdir."""
    return str((run_dir / "tb").relative_to(work["dir"] / "outputs"))


@needs_chromium
def test_scalars_dashboard_lists_train_loss_and_val_acc_and_draws_every_jobs_line(page, board, work):
    from playwright.sync_api import expect

    page.goto(board + "#scalars&tagFilter=train%2Floss%7Cval%2Facc")
    expect(page.get_by_text("tag: val/acc", exact=True).first).to_be_visible()
    tags = {t.strip() for t in page.get_by_text("tag: ").all_inner_texts()}
    assert {"tag: train/loss_epoch", "tag: train/loss_step", "tag: val/acc", "tag: val/acc_best"} <= tags
    for job in work["jobs"]:
        expect(page.get_by_text(tb_run(job, work), exact=True)).to_be_visible()  # in the runs selector
    for tag in ("train/loss_epoch", "val/acc"):
        card = page.locator("tf-scalar-card").filter(has=page.get_by_text(f"tag: {tag}", exact=True))
        drawn = card.locator("path.line")
        deadline = time.monotonic() + 60
        while (lines := sum(len(d or "") > 10 for d in drawn.evaluate_all("ps => ps.map(p => p.getAttribute('d'))"))) \
                < len(work["jobs"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lines >= len(work["jobs"]), f"{tag}: {lines} lines drawn for {len(work['jobs'])} sweep jobs"


@needs_chromium
def test_images_tab_shows_the_gans_sample_grid(page, board, work):
    from playwright.sync_api import expect

    page.goto(board + "#images")
    expect(page.get_by_text("tag: samples/grid", exact=True)).to_be_visible()
    image = page.locator("tf-image-loader img").first
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shown = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    [png] = sorted((work["gan"] / "samples").glob("*.png"))
    width, height = int.from_bytes(png.read_bytes()[16:20], "big"), int.from_bytes(png.read_bytes()[20:24], "big")
    assert shown == [width, height]  # the grid the run saved, decoded by the browser


@needs_chromium
def test_hparams_tab_shows_every_sweep_job_with_its_test_accuracy(page, board, work):
    from playwright.sync_api import expect

    page.goto(board + "#hparams")
    expect(page.get_by_text("Trial ID", exact=True)).to_be_visible()
    names = {tb_run(job, work) for job in [*work["jobs"], work["gan"]]}
    cells = page.locator("vaadin-grid-cell-content")
    expect(cells.filter(has_text=tb_run(work["jobs"][-1], work))).to_have_count(1)
    texts = [t.strip() for t in cells.all_text_contents()]
    rows: dict[str, list[str]] = {}
    for text in texts:  # cells in reading order: a trial id, then that row's values
        if text in names:
            rows[text] = []
        elif rows:
            rows[list(rows)[-1]].append(text)
    assert set(rows) == names
    for job in work["jobs"]:
        metrics = json.loads((job / "metrics.json").read_text())
        optimizer = yaml.safe_load((job / "config.yaml").read_text())["optimizer"]["_target_"]
        row = rows[tb_run(job, work)]
        numbers = [float(t) for t in row if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", t)]
        assert any(abs(n - metrics["test/acc"]) <= 1e-4 for n in numbers), (row, metrics["test/acc"])
        assert optimizer in row
