"""Helpers for the end-to-end browser test (tests/test_browser.py): a JupyterLab server started
from this environment on a free loopback port, and headless Debian Chromium driven by Playwright."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser download
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_missing_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        return (f"no Chromium at {CHROMIUM}: install Debian's chromium package "
                "(apt-get install chromium; .ci/run does) to run the browser test")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (it was started with start_new_session), then
    SIGKILL whatever is left of it after `grace` seconds; reap `proc`."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    if pgid is not None:  # the kernels the server started share its group: no one left behind
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=grace)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class JupyterLab:
    """A running `python -m jupyter lab`: url(path) gives a tokenised address; log() its output."""

    def __init__(self, proc: subprocess.Popen, port: int, token: str, log_path: Path, root: Path):
        self.proc, self.port, self.token, self.log_path, self.root = proc, port, token, log_path, root
        self.base = f"http://127.0.0.1:{port}"

    def url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no server log)"


@contextmanager
def jupyterlab(root: Path, home: Path, timeout: float = 90.0):
    """JupyterLab serving `root` on 127.0.0.1 with a random token; Jupyter's config, data and
    runtime dirs (and IPython's) isolated under `home`. Stopped, with its kernels, on exit."""
    port, token = free_port(), secrets.token_hex(24)
    env = dict(os.environ)
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env.pop("JUPYTER_TOKEN", None)
    # No "get notified about Jupyter news?" toast over the page (and its screenshots).
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text('{"checkForUpdates": false, "fetchNews": "false"}')
    env.setdefault("OMP_NUM_THREADS", "1")  # the kernel's torch: one thread is plenty for 04
    log_path = home / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={home / 'workspaces'}",
           f"--LabApp.user_settings_dir={home / 'settings'}",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: read cell outputs from the model
           "--ServerApp.allow_root=True"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    lab = JupyterLab(proc, port, token, log_path, root)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {proc.returncode} before serving:\n{lab.log()}")
            try:
                with urllib.request.urlopen(lab.url("api/status"), timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer on {lab.base} within {timeout:.0f} s:\n{lab.log()}")
            time.sleep(0.25)
        yield lab
    finally:
        stop_process_group(proc)


@contextmanager
def chromium(user_data_dir: Path):
    """A headless Debian Chromium under Playwright (persistent context in a fresh profile dir):
    yields (context, page, console) where console collects the page's console errors."""
    from playwright.sync_api import sync_playwright

    user_data_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=False)
        try:
            page = context.pages[0] if context.pages else context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            yield context, page, console
        finally:
            context.close()


def copy_notebooks(src: Path, dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(nb, dst / nb.name)) for nb in sorted(src.glob("*.ipynb"))]


# Every <img> of a page: loaded (complete) and decoded (naturalWidth > 0), with its cell's source.
IMAGES_JS = """() => Array.from(document.querySelectorAll('img')).map(img => {
  const cell = img.closest('.jp-Cell');
  const src = cell && cell.querySelector('.jp-InputArea');
  return {complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
          output: !!img.closest('.jp-OutputArea-output'), source: src ? src.innerText.slice(0, 400) : ''};
})"""


def open_html(page, html: Path) -> list[dict]:
    """Open an exported notebook (file://), wait for its images to load; IMAGES_JS's list."""
    page.goto(Path(html).resolve().as_uri(), wait_until="domcontentloaded", timeout=30_000)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=30_000, polling=200)
    return page.evaluate(IMAGES_JS)


def screenshot_figure(page, images: list[dict], out: Path, match: str = "plots.curves", nth: int = 0) -> bool:
    """Screenshot the nth output figure whose cell's source contains `match`; False when none."""
    hits = [i for i, img in enumerate(images) if img["output"] and match in img["source"]]
    if len(hits) <= nth:
        return False
    page.locator("img").nth(hits[nth]).screenshot(path=str(out))
    return True


if __name__ == "__main__":  # screenshot a figure of an exported notebook, e.g. for docs/img
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="Screenshot a figure of an exported notebook (HTML) in headless Chromium.")
    ap.add_argument("html", type=Path)
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--match", default="plots.curves", help="text in the source of the figure's cell")
    ap.add_argument("--nth", type=int, default=0, help="which of the matching figures (0: first)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, chromium(Path(tmp) / "profile") as (_, page, _console):
        if not screenshot_figure(page, open_html(page, a.html), a.out, a.match, a.nth):
            sys.exit(f"{a.html}: no figure #{a.nth} in a cell containing {a.match!r}")
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e3:.0f} kB)")
