"""End to end, where users meet the workbook: JupyterLab in headless Chromium.

* notebook 04 in a real JupyterLab: Run All Cells, the PredictPanel renders, an image from
  data/custom/ goes through the FileUpload's real file input, Predict shows the right digit, no
  cell shows an error; in its Draw tab, a 1, a 0 and a 7 drawn on the DrawPad's canvas with real
  mouse events are read right, and Clear leaves no prediction on the page;
* notebook 02 in a real JupyterLab: the TrainPanel trains a tiny run (progress bar to its end, the
  epoch's numbers), then Stop ends a long run after its first epoch with metrics.json kept;
* notebooks 02 and 03 executed with papermill at cheap parameters and exported to HTML as
  `labkit report` does: their figures render in the browser.

Runs whenever Debian's Chromium is at /usr/bin/chromium (`.ci/run` installs it), skips otherwise.
Screenshots go to the test's tmp dir; set LABKIT_SCREENSHOT_DIR (e.g. docs/img) to also write
panel.png, drawpad.png and ten_runs.png there.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from browser_util import chromium, chromium_missing_reason, copy_notebooks, jupyterlab, open_html, screenshot_figure
from helpers import strokes_in_box

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CUSTOM = ROOT / "data" / "custom"
UPLOAD = CUSTOM / "2_exif_01.jpg"  # a phone photo stored sideways with an EXIF orientation tag

RENDER_TIMEOUT_S = 150  # Run All Cells of 04 until the panel shows (about 30 s on one core)
PREDICT_TIMEOUT_S = 30

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_missing_reason() is not None, reason=chromium_missing_reason() or ""),
]


def save_screenshot(src: Path, name: str) -> None:
    """Copy a screenshot to LABKIT_SCREENSHOT_DIR (as `name`) when that is set."""
    out = os.environ.get("LABKIT_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, Path(out) / name)


def page_report(page, console, lab=None, limit: int = 3000) -> str:
    """The page's visible text, its console errors and the server log's tail, for failure messages."""
    try:
        text = page.locator("body").inner_text(timeout=5000)
    except Exception as e:  # the page itself may be what broke
        text = f"(could not read the page: {e})"
    text = re.sub(r"\n\s*\n+", "\n", text).strip()
    parts = [f"--- visible text of {page.url.split('?')[0]} (last {limit} chars):\n{text[-limit:]}",
             "--- browser console errors/warnings:\n" + ("\n".join(console[-30:]) or "(none)")]
    if lab is not None:
        parts.append(f"--- JupyterLab log (tail):\n{lab.log(2000)}")
    return "\n".join(parts)


def wait_or_fail(wait, message) -> None:
    """Run wait() (a Playwright wait); on its timeout fail with message() (called then), not
    with Playwright's own error chained in."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        wait()
        return
    except PlaywrightTimeout:
        pass
    pytest.fail(message(), pytrace=False)


# In JupyterLab's own model (window.jupyterapp, exposed with --LabApp.expose_app_in_browser):
# every code cell's error outputs, and the cells not yet executed or still running.
NOTEBOOK_STATE_JS = """() => {
  const app = window.jupyterapp;
  const nb = app && app.shell.currentWidget && app.shell.currentWidget.content;
  if (!nb || !nb.model) return null;
  const errors = [], pending = [];
  const cells = nb.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    if (c.executionCount === null || c.executionCount === undefined) pending.push(i);
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  }
  const running = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-InputPrompt'))
    .filter(p => p.textContent.includes('*')).length;
  return {errors, pending, running, kernel: (nb.parent && nb.parent.sessionContext
          && nb.parent.sessionContext.kernelDisplayStatus) || ''};
}"""

# Error outputs as the page shows them: stderr-rendered outputs with a traceback in them.
ERROR_OUTPUTS = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def shown_errors(page) -> list[str]:
    texts = page.locator(ERROR_OUTPUTS).all_inner_texts()
    return [t[-1500:] for t in texts if re.search(r"Traceback|Error\b", t)]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as (context, page, console):
        yield context, page, console


@pytest.fixture
def lab(tmp_path):
    work = tmp_path / "notebooks"
    copy_notebooks(NOTEBOOKS, work)
    with jupyterlab(work, tmp_path / "jupyter") as server:
        yield server
    # jupyterlab() stopped the server and its kernels (process group: TERM, then KILL)


def run_all_cells(page) -> None:
    """Run > Run All Cells from JupyterLab's menu bar, as a user would."""
    page.locator(".lm-MenuBar-item", has=page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$"))).click()
    item = page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")))
    item.first.click()


def open_and_run_all(page, console, lab, name: str, ready, what: str) -> float:
    """Open notebooks/`name` in JupyterLab, Run All Cells, wait until ready() (a locator check) and
    every cell has run without an error; seconds from opening to ready."""
    t0 = time.monotonic()
    page.goto(lab.url(f"lab/tree/{name}"), wait_until="domcontentloaded", timeout=60_000)

    # The notebook open, its kernel started and idle.
    wait_or_fail(lambda: page.wait_for_function(
        f"() => {{ const s = ({NOTEBOOK_STATE_JS})(); return s && s.kernel === 'idle'; }}", timeout=90_000, polling=500),
        lambda: f"{name} did not open with an idle kernel within 90 s\n{page_report(page, console, lab)}")

    run_all_cells(page)

    # Wait for the widget; stop early when a cell shows an error (Run All stops there, so the
    # widget would never come).
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    while not ready():
        state = page.evaluate(NOTEBOOK_STATE_JS) or {}
        errors = (state.get("errors") or []) + shown_errors(page)
        if errors:
            pytest.fail(f"a cell of {name} failed before the {what} rendered:\n"
                        + "\n".join(errors) + "\n" + page_report(page, console, lab))
        if time.monotonic() > deadline:
            pytest.fail(f"the {what} did not render within {RENDER_TIMEOUT_S} s of Run All Cells "
                        f"(notebook state: {state})\n{page_report(page, console, lab)}")
        page.wait_for_timeout(500)
    rendered_s = time.monotonic() - t0

    # Every cell ran, none shows an error.
    wait_or_fail(lambda: page.wait_for_function(
        f"() => {{ const s = ({NOTEBOOK_STATE_JS})(); return s && s.pending.length === 0 && s.running === 0 "
        f"&& s.kernel === 'idle'; }}", timeout=60_000, polling=500),
        lambda: f"{name}: cells still unexecuted or running 60 s after the {what} rendered: "
                f"{page.evaluate(NOTEBOOK_STATE_JS)}\n{page_report(page, console, lab)}")
    state = page.evaluate(NOTEBOOK_STATE_JS)
    assert not state["errors"] and not shown_errors(page), (
        f"cells show errors: {state['errors'] + shown_errors(page)}\n{page_report(page, console, lab)}")
    return rendered_s


def visible(locator) -> bool:
    return bool(locator.count()) and locator.first.is_visible()


UPLOAD_BUTTON = ".jp-OutputArea-output .widget-upload"


@pytest.fixture(scope="module")
def notebook_04(browser, tmp_path_factory):
    """Notebook 04 in a real JupyterLab, all cells run, the upload panel shown: (lab, page, console,
    seconds from opening to the panel). Shared by the upload and the drawing tests."""
    tmp = tmp_path_factory.mktemp("lab04")
    copy_notebooks(NOTEBOOKS, tmp / "notebooks")
    _, page, console = browser
    console.clear()
    with jupyterlab(tmp / "notebooks", tmp / "jupyter") as server:
        predict = page.locator(".jp-OutputArea-output button.jupyter-button", has_text=re.compile(r"^\s*Predict\s*$"))
        rendered_s = open_and_run_all(
            page, console, server, "04_custom_digits.ipynb",
            lambda: visible(page.locator(UPLOAD_BUTTON)) and visible(predict), "PredictPanel")
        yield server, page, console, rendered_s


def test_notebook_04_panel_predicts_in_jupyterlab(notebook_04, tmp_path):
    assert UPLOAD.exists(), UPLOAD
    lab, page, console, rendered_s = notebook_04
    upload = page.locator(UPLOAD_BUTTON)
    predict = page.locator(".jp-OutputArea-output button.jupyter-button", has_text=re.compile(r"^\s*Predict\s*$"))
    upload_tab = page.locator(".jp-OutputArea-output .lm-TabBar-tab", has_text=re.compile(r"^\s*Upload\s*$"))
    if upload_tab.count():  # the panel shares its output with the drawing pad: its tab first
        upload_tab.first.click()

    # Upload through the FileUpload's real <input type=file>: ipywidgets 8 keeps that input out of
    # the DOM and opens it when its button is clicked, so answer the file chooser it opens.
    panel = page.locator(".jp-OutputArea-output .widget-vbox", has=page.locator(".widget-upload")).last
    panel.scroll_into_view_if_needed()
    with page.expect_file_chooser(timeout=10_000) as chooser:
        upload.first.click()
    assert chooser.value.is_multiple(), "the FileUpload should accept several files (multiple=True)"
    chooser.value.set_files(str(UPLOAD))
    wait_or_fail(lambda: page.wait_for_function(  # the widget counts the files it read: "Upload images (1)"
        "() => Array.from(document.querySelectorAll('.jp-OutputArea-output .widget-upload'))"
        ".some(b => /\\(1\\)\\s*$/.test(b.textContent))", timeout=15_000, polling=200),
        lambda: f"the FileUpload did not take {UPLOAD.name} (its label: {upload.first.inner_text()!r})\n"
                f"{page_report(page, console, lab)}")

    predict.first.click()
    # The notebook stored cards for two shipped pictures; wait for the one that names this upload.
    answer = panel.locator(".widget-hbox", has_text=UPLOAD.name).filter(has_text=re.compile(r"predicted\s+\d")).first
    wait_or_fail(lambda: answer.wait_for(state="visible", timeout=PREDICT_TIMEOUT_S * 1000),
                 lambda: f"Predict produced no digit within {PREDICT_TIMEOUT_S} s for {UPLOAD.name}\n"
                         f"--- the panel says:\n{panel.inner_text()}\n{page_report(page, console, lab)}")
    text = answer.inner_text()
    digit = int(re.search(r"predicted\s+(\d)", text).group(1))
    expected = int(UPLOAD.name[0])
    panel_text = panel.inner_text()
    assert UPLOAD.name in panel_text, f"the prediction card does not name the upload:\n{panel_text}"
    assert digit == expected, f"{UPLOAD.name}: the panel predicted {digit}, expected {expected}:\n{panel_text}"
    assert "target (from the file name)" in panel_text, panel_text
    # The card's two pictures (the upload and the 28x28 the model sees) decoded in the browser.
    sizes = panel.locator("img").evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) >= 2 and all(ok and w > 0 for ok, w in sizes), f"panel images did not render: {sizes}"

    state = page.evaluate(NOTEBOOK_STATE_JS)
    assert not state["errors"] and not shown_errors(page), page_report(page, console, lab)
    shot = tmp_path / "panel.png"
    page.locator(".jp-OutputArea-output", has=page.locator(".widget-upload")).last.screenshot(path=str(shot))
    save_screenshot(shot, "panel.png")
    print(f"04 in JupyterLab: panel rendered {rendered_s:.0f} s after opening; predicted {digit} "
          f"for {UPLOAD.name}; screenshot {shot}")


# The pad's state as its view writes it on its root element (labkit/static/drawpad.js).
PAD_JS = """() => {
  const el = document.querySelector('.jp-OutputArea-output .labkit-drawpad');
  if (!el) return null;
  const digit = el.querySelector('.labkit-drawpad-digit');
  return {state: el.dataset.state || '', busy: el.dataset.busy || '', latency: el.dataset.latencyMs || null,
          encode: el.dataset.encodeMs || null, kernel: el.dataset.kernelMs || null,
          digit: digit ? digit.textContent.trim() : null, bars: el.querySelectorAll('.labkit-drawpad-bar').length,
          message: (el.querySelector('.labkit-drawpad-message') || {}).textContent || '',
          seen: Array.from(el.querySelectorAll('.labkit-drawpad-seen img')).filter(i => i.offsetParent !== null)
                     .map(i => [i.complete, i.naturalWidth])};
}"""
DRAW_BOX = (70, 40, 140, 200)  # where the digit is drawn, in the canvas's 280x280 pixels
DRAWN_DIGITS = (1, 0, 7)  # the screenshot shows the last


def draw_with_mouse(page, canvas, digit: int) -> None:
    """Draw DIGIT_STROKES[digit] on the canvas with real mouse events (down, moves, up per stroke)."""
    box = canvas.bounding_box()
    scale = box["width"] / 280
    for stroke in strokes_in_box(digit, DRAW_BOX):
        points = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(x, y, steps=3)
        page.mouse.up()


def wait_pad(page, condition: str, timeout_s: float, message) -> dict:
    """Wait until the pad's state (PAD_JS, as `s`) meets the JavaScript `condition`; that state."""
    wait_or_fail(lambda: page.wait_for_function(
        f"() => {{ const s = ({PAD_JS})(); return !!s && ({condition}); }}", timeout=timeout_s * 1000, polling=50),
        message)
    return page.evaluate(PAD_JS)


def test_notebook_04_drawpad_reads_digits_drawn_with_the_mouse(notebook_04, tmp_path):
    lab, page, console, _ = notebook_04
    draw_tab = page.locator(".jp-OutputArea-output .lm-TabBar-tab", has_text=re.compile(r"^\s*Draw\s*$"))
    assert draw_tab.count(), f"no 'Draw' tab beside the upload panel in 04\n{page_report(page, console, lab)}"
    draw_tab.first.click()
    pad = page.locator(".jp-OutputArea-output .labkit-drawpad").first
    canvas = pad.locator("canvas.labkit-drawpad-canvas")
    clear = pad.locator("button.labkit-drawpad-clear")
    wait_or_fail(lambda: canvas.wait_for(state="visible", timeout=15_000),
                 lambda: f"the DrawPad's canvas did not show\n{page_report(page, console, lab)}")
    pad.scroll_into_view_if_needed()

    # The notebook set pad.image to a drawing of a 7 from the custom set: its prediction shows.
    s = wait_pad(page, "s.state === 'predicted'", 15, lambda: f"the pad shows no prediction of the notebook's "
                 f"drawing: {page.evaluate(PAD_JS)}\n{page_report(page, console, lab)}")
    assert s["digit"] == "7" and s["bars"] == 10, s

    latencies, parts = {}, {}  # ms: stroke end to shown; (stroke end to sent, sent to answered)
    for digit in DRAWN_DIGITS:
        clear.click()
        s = wait_pad(page, "s.state === 'empty' && s.busy === '0'", 15,
                     lambda: f"Clear did not empty the pad: {page.evaluate(PAD_JS)}")
        assert s["digit"] == "" and s["bars"] == 0 and not s["seen"], s
        draw_with_mouse(page, canvas, digit)
        s = wait_pad(page, "s.state === 'predicted' && s.busy === '0' && s.latency !== null", PREDICT_TIMEOUT_S,
                     lambda: f"no prediction {PREDICT_TIMEOUT_S} s after drawing a {digit}: {page.evaluate(PAD_JS)}\n"
                             f"{page_report(page, console, lab)}")
        assert s["digit"] == str(digit), f"drew a {digit} with the mouse, the pad predicted {s['digit']}: {s}"
        assert s["bars"] == 10 and s["seen"] and all(ok and w == 28 for ok, w in s["seen"]), s
        latencies[digit] = float(s["latency"])
        parts[digit] = (float(s["encode"]), float(s["kernel"]))

    shot = tmp_path / "drawpad.png"
    page.locator(".jp-OutputArea-output", has=page.locator(".labkit-drawpad")).last.screenshot(path=str(shot))
    save_screenshot(shot, "drawpad.png")

    # Clear: the page shows no prediction, also once the kernel has answered.
    clear.click()
    s = wait_pad(page, "s.state === 'empty' && s.busy === '0'", 15,
                 lambda: f"Clear did not empty the pad: {page.evaluate(PAD_JS)}")
    assert s["digit"] == "" and s["bars"] == 0 and not s["seen"], s
    assert not re.search(r"predicted", pad.inner_text()), pad.inner_text()
    errors = [c for c in console if "pageerror" in c or "drawpad" in c.lower()]
    assert not errors, f"the page logged errors: {errors}"
    print("04 in JupyterLab: DrawPad read " + ", ".join(f"{d}" for d in latencies)
          + " drawn with the mouse; stroke end to prediction shown: "
          + ", ".join(f"{d}: {ms:.0f} ms (debounce + PNG {parts[d][0]:.0f} ms, kernel round trip {parts[d][1]:.0f} ms)"
                      for d, ms in latencies.items()) + f"; screenshot {shot}")


def test_notebook_02_trainpanel_trains_and_stops_in_jupyterlab(lab, browser, tmp_path):
    import json

    import nbformat

    out = tmp_path / "out02"
    # A tiny setting, injected after the parameters cell as papermill does (in the test's copy).
    nb_path = lab.root / "02_train.ipynb"
    nb = nbformat.read(str(nb_path), as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    cell = nbformat.v4.new_code_cell(f"epochs = 1\nlimit_train = 1000\nout_dir = {str(out)!r}")
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    nbformat.write(nb, str(nb_path))

    _, page, console = browser
    console.clear()
    panel = page.locator(".jp-OutputArea-output .labkit-trainpanel").first
    train = panel.locator("button", has_text=re.compile(r"^\s*Train\s*$"))
    stop = panel.locator("button", has_text=re.compile(r"^\s*Stop\s*$"))
    status = panel.locator(".labkit-train-status")
    rows = panel.locator(".labkit-train-epochs tbody tr")
    bar = panel.locator(".labkit-train-progress .progress-bar")
    open_and_run_all(page, console, lab, "02_train.ipynb", lambda: visible(train), "TrainPanel")
    panel.scroll_into_view_if_needed()
    assert stop.is_disabled() and train.is_enabled()

    # Train at the notebook's tiny setting (1 epoch of 1,000 images): the bar reaches its end and
    # the epoch's numbers appear.
    t0 = time.monotonic()
    train.click()
    wait_or_fail(lambda: status.get_by_text(re.compile(r"^done")).wait_for(timeout=120_000),
                 lambda: f"training did not finish: {status.inner_text()!r}\n{page_report(page, console, lab)}")
    trained_s = time.monotonic() - t0
    width = bar.evaluate("b => b.style.width")
    assert width == "100%", f"progress bar at {width!r} after training"
    assert re.search(r"epoch 1/1 · step 8/8", panel.inner_text()), panel.inner_text()
    assert rows.count() == 1, panel.inner_text()
    cells = rows.first.locator("td").all_inner_texts()
    assert cells[0] == "1" and all(re.fullmatch(r"\d+\.\d+", c) for c in cells[1:]), cells
    assert 0 < float(cells[4]) <= 1, cells  # test accuracy
    assert panel.locator(".labkit-train-curve").evaluate("img => img.complete && img.naturalWidth > 0")

    # Stop: 50 epochs of all 60,000 images, stopped once the first epoch's numbers show.
    panel.locator(".widget-inline-hbox", has_text="epochs").locator("input").fill("50")
    panel.locator(".widget-inline-hbox", has_text="training images").locator("input").fill("0")
    page.keyboard.press("Tab")  # the text boxes sync on blur
    page.wait_for_timeout(300)
    train.click()
    wait_or_fail(lambda: page.wait_for_function(
        "() => document.querySelectorAll('.labkit-trainpanel .labkit-train-epochs tbody tr').length >= 1 "
        "&& /epoch \\d+\\/50/.test(document.querySelector('.labkit-trainpanel').innerText)",
        timeout=180_000, polling=200),
        lambda: f"no epoch of the 50-epoch run finished: {panel.inner_text()}\n{page_report(page, console, lab)}")
    stop.click()
    wait_or_fail(lambda: status.get_by_text(re.compile(r"^stopped")).wait_for(timeout=60_000),
                 lambda: f"Stop did not end training: {status.inner_text()!r}\n{page_report(page, console, lab)}")
    shown = rows.count()
    assert 1 <= shown < 50 and train.is_enabled() and stop.is_disabled(), panel.inner_text()
    saved = json.loads((out / "panel" / "metrics.json").read_text())
    assert len(saved["runs"][0]["epochs"]) == shown and saved["config"]["epochs"] == 50, saved["runs"][0]["epochs"]
    assert saved["config"]["limit_train"] is None
    errors = [c for c in console if "pageerror" in c]
    assert not errors, f"the page logged errors: {errors}"
    panel.screenshot(path=str(tmp_path / "trainpanel.png"))
    print(f"02 in JupyterLab: TrainPanel trained 1 epoch of 1,000 images in {trained_s:.1f} s (click to 'done'); "
          f"stopped a 50-epoch run after {shown} finished epoch(s); screenshot {tmp_path / 'trainpanel.png'}")


def execute_cheap(name: str, params: dict, out_dir: Path) -> Path:
    """Execute notebooks/`name` with papermill at `params` (all must be declared), as `labkit
    report` does, and export it to HTML with labkit.notebooks_runner.export_html."""
    import nbformat
    import papermill as pm

    from labkit.notebooks_runner import export_html

    nb = NOTEBOOKS / name
    # Names assigned in the cell tagged "parameters" (papermill's inspect_notebook misses those
    # annotated `int | None`, but execute_notebook injects any name).
    cells = nbformat.read(str(nb), as_version=4).cells
    source = "\n".join(c.source for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = set(re.findall(r"^([A-Za-z_]\w*)\s*[:=]", source, flags=re.M))
    missing = set(params) - declared
    assert not missing, f"{name} no longer declares the parameter(s) {sorted(missing)} this test sets to keep it cheap"
    target = out_dir / name
    failure = None
    try:
        pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(out_dir),
                            progress_bar=False, kernel_name="python3", execution_timeout=300)
    except pm.PapermillExecutionError as e:
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(e.traceback[-3:]) if e.traceback else "")
        failure = f"{name} failed at {params} in cell [{e.exec_count}] with {e.ename}: {e.evalue}\n{tb}\nexecuted notebook: {target}"
    if failure:
        pytest.fail(failure, pytrace=False)
    return export_html(target)


REPORT_NOTEBOOKS = {
    "02_train.ipynb": {"epochs": 1, "limit_train": 2000},  # plus out_dir: the tmp dir
    # resume=False: train afresh with the code under test, not runs cached in outputs/runs/
    "03_evaluate_10_runs.ipynb": {"runs": 2, "epochs": 1, "limit_train": 2000, "resume": False},
}


@pytest.mark.parametrize("name", list(REPORT_NOTEBOOKS))
def test_report_html_figures_render(name, browser, tmp_path):
    if not (NOTEBOOKS / name).exists():
        pytest.skip(f"notebooks/{name} does not exist (yet): nothing to export")
    params = dict(REPORT_NOTEBOOKS[name])
    out = tmp_path / "report"
    out.mkdir()
    if name.startswith("02"):
        params["out_dir"] = str(out / "02_train")
    t0 = time.monotonic()
    html = execute_cheap(name, params, out)
    executed_s = time.monotonic() - t0

    _, page, console = browser
    console.clear()
    images = open_html(page, html)
    figures = [i for i in images if i["output"]]
    broken = [i for i in images if not i["width"]]
    assert figures, f"{html.name}: no figure (<img> in an output) in the page\n{page_report(page, console)}"
    assert not broken, f"{html.name}: {len(broken)} image(s) did not render: {broken}\n{page_report(page, console)}"
    assert any("plots.curves" in i["source"] for i in figures), (
        f"{html.name}: no rendered figure from plots.curves; figures from: {[f['source'][:80] for f in figures]}")

    if name.startswith("03"):  # the ten-run figure (here at runs=2) for the README
        shot = tmp_path / "ten_runs.png"
        assert screenshot_figure(page, images, shot, "plots.curves")
        save_screenshot(shot, "ten_runs.png")
    print(f"{name}: executed in {executed_s:.0f} s; {len(figures)} figures rendered in {html.name}")
