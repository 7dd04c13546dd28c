"""Rooms where their folders say: what one trial runs (``trainables/``: its data, models, training) needs
nothing from the driver's side (``search/``) or from MLflow tracking (``tracking/``)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_search import ROOT

TRIAL_SIDE = ["trainables.data.remote", "trainables.data.source", "trainables.data.s3", "trainables.training.loop",
              "trainables.trial", "trainables.tune_checkpoints", "trainables.models.mssl", "trainables.plugins.ral"]


def test_the_trial_modules_import_nothing_from_the_driver_or_tracking():
    code = (f"import json, sys; import {', '.join(TRIAL_SIDE)}; "
            "print(json.dumps(sorted({m for m in sys.modules if m.split('.')[0] in ('search', 'tracking')})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
