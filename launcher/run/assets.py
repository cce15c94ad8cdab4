"""Build a job's embedded assets (``builtin_assets: digits``) into the cache when missing.

The demo's data and "pretrained" checkpoint are made from scikit-learn's digits by
``launcher.data.demo_assets`` (it needs mxnet, so it runs as a child process like every
other mxnet process of mxft). They are built into the model prefix's folder once and
reused; a build of an older version of the assets is replaced.
"""
from __future__ import annotations

import os
import sys

from cluster.local import LocalTransport
from cluster.supervise import Supervisor
from launcher.data import demo_assets, extras
from launcher.report.console import Console
from launcher.spec.jobspec import JobSpec


def ensure_built(job: JobSpec, *, console: Console) -> None:
    """Run ``python -m launcher.data.demo_assets DIR`` unless a complete build of this version is there.

    The build's own output goes to DIR/build.log (and to the console with -v).
    """
    out_dir = os.path.dirname(job.model.prefix)
    if demo_assets.is_built(out_dir):
        return
    extras.require("sklearn", package="scikit-learn", extra="demo",
                   needed_for=f"building the {job.builtin_assets} demo assets", source=job.source)
    console(f"[mxft] building the {job.builtin_assets} demo assets into {out_dir} (once; about a minute)")
    os.makedirs(out_dir, exist_ok=True)
    code_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with Supervisor(echo=console, relay=console.relay) as group:
        group.start("assets", LocalTransport(), (sys.executable, "-m", "launcher.data.demo_assets", out_dir),
                    env={"PYTHONPATH": code_dir, "PYTHONUNBUFFERED": "1"},
                    log_path=os.path.join(out_dir, "build.log"), primary=True)
        group.wait()
