"""Screenshots of a search's review pages in headless Chromium: the MLflow runs list, the search's parent
run, a trial's charts, and the search's report (the PNGs of docs/images/, linked from the docs).

    python docs/screenshots.py --name ral-20261204-190000            # the search in ./mlflow.db
    python docs/screenshots.py --name N --tracking-uri sqlite:////abs/mlflow.db --out docs/images

It starts the project's lean MLflow server (``search/tracking_server.py``) on a free 127.0.0.1 port over
the search's tracking store, opens each page in Chromium through Playwright (``pip install -e
'.[screenshots]'``; the browser is the system's ``chromium``, or ``--chromium PATH``), waits for it to
render and stops the server. Reads only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.cli import run_main  # noqa: E402
from trainables.errors import InputError  # noqa: E402

#: the MLflow UI's model-training views (not its GenAI overview)
VIEW = "workflowType=machine_learning"
SIZE = {"width": 1600, "height": 1000}
SETTLE_MS = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until ``url`` answers 200 (the server is up); the server's exit or the timeout is an error."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise InputError(f"the MLflow server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise InputError(f"the MLflow server did not answer {url} within {timeout:.0f} s")


def pages(tracking_uri: str, experiment: str, name: str, base: str) -> dict[str, str]:
    """{screenshot name: URL} of the search ``name``: its trials table, parent run, and its best trial's charts."""
    from mlflow.tracking import MlflowClient

    from tracking.mlflow_runs import parent_runs

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise InputError(f"no MLflow experiment {experiment!r} in {tracking_uri}")
    eid = found.experiment_id
    parents = parent_runs(client, eid, name)
    if not parents:
        raise InputError(f"no search {name!r} in experiment {experiment!r} of {tracking_uri}")
    parent = parents[0]
    trials = client.search_runs([eid], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=500,
                                order_by=["metrics.best_val_sumr DESC"])
    if not trials:
        raise InputError(f"search {name!r} has no trial runs")
    # the trials table: the view each search stores (its trials, best first, the swept settings as columns)
    out = {"mlflow-runs-list": f"{base}/#/experiments/{eid}/runs?{VIEW}&viewStateShareKey={parent.info.run_id}",
           "mlflow-parent-run": f"{base}/#/experiments/{eid}/runs/{parent.info.run_id}?{VIEW}",
           "mlflow-trial-charts": f"{base}/#/experiments/{eid}/runs/{trials[0].info.run_id}/model-metrics?{VIEW}"}
    folder = Path(tempfile.mkdtemp(prefix="prvr-screenshots-"))
    try:
        report = client.download_artifacts(parent.info.run_id, "report", str(folder))
    except Exception as exc:  # a search without a report: the MLflow pages only
        print(f"warning: search {name} has no report artifact ({type(exc).__name__})", file=sys.stderr)
    else:
        out["report"] = Path(report, "report.html").as_uri()
    return out


def shoot(urls: dict[str, str], out: Path, chromium: str) -> list[Path]:
    """Each URL rendered in headless Chromium as ``out/<name>.png`` (waits for the page to settle)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport=SIZE)
            for shot, url in urls.items():
                page.goto(url, wait_until="load", timeout=120_000)  # the UI polls: the network is never idle
                page.wait_for_timeout(SETTLE_MS)  # the UI draws its tables and charts after the data arrives
                for label in ("Close", "Got it", "Dismiss"):  # a first-visit pop-up would cover the page
                    button = page.get_by_role("button", name=label)
                    if button.count():
                        button.first.click()
                path = out / f"{shot}.png"
                page.screenshot(path=str(path), full_page=shot == "report")
                written.append(path)
                print(f"{path}: {url}")
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="docs/screenshots.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the search whose pages are shot")
    p.add_argument("--tracking-uri", default=None, help="default: sqlite:///<working folder>/mlflow.db")
    p.add_argument("--experiment", default="prvr", help="MLflow experiment of the search")
    p.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder of the PNGs")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="Chromium binary")
    args = p.parse_args(argv)
    from tracking.mlflow_runs import default_tracking_uri

    tracking_uri = args.tracking_uri or default_tracking_uri()
    port = free_port()
    artifacts = tempfile.mkdtemp(prefix="prvr-screenshots-artifacts-")
    command = [sys.executable, str(ROOT / "search" / "tracking_server.py"), "--backend-store-uri", tracking_uri,
               "--artifacts", artifacts, "--port", str(port)]
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", server)
        shoot(pages(tracking_uri, args.experiment, args.name, base), Path(args.out), args.chromium)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the session it was started in
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(artifacts, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
