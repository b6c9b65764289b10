"""Loggers: W&B (offline by itself when it cannot reach its server), CSV, or none."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from gfsa.utils.errors import ConfigError

LOGGERS = ("wandb", "csv", "none")


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_mode(requested: str | None = "auto") -> str:
    """``online`` or ``offline`` (or ``disabled``): WANDB_MODE wins, then the config, then auto.

    auto: online only with an API key and a reachable server, so runs never hang or fail on a
    cluster node without network; the offline run can be synced later with ``wandb sync``.
    """
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if requested and requested != "auto":
        return requested
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme == "https" else 80)
    return "online" if _has_api_key(host) and _reachable(host, port) else "offline"


def make_logger(cfg: dict, run_dir: Path, run_id: str, run_name: str, variant: str):
    """A Lightning logger for ``cfg['logger']`` writing under the run directory (or False)."""
    kind = cfg["logger"]["type"]
    if kind == "none":
        return False
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="", version="csv")
    if kind != "wandb":
        raise ConfigError(f"logger={kind}: choose one of {', '.join(LOGGERS)}")
    from lightning.pytorch.loggers import WandbLogger

    lc = cfg["logger"]
    g = cfg["gfsa"]
    layers = g["layers"] if variant != "baseline" else "none"
    return WandbLogger(
        project=lc["project"],
        entity=lc["entity"],
        save_dir=str(run_dir),
        id=run_id,
        name=run_name,
        group=f"{cfg['backbone']['name']}/{cfg['task']['name']}",
        job_type=variant,
        tags=[f"layers={layers}", f"K={g['K']}", f"seed={cfg['seed']}", *lc["tags"]],
        config=cfg,
        mode=wandb_mode(lc["mode"]),
        resume="allow",
    )


def finish_wandb(summary: dict | None = None) -> None:
    """Put the suite's numbers in the W&B summary and close the run (Lightning does not)."""
    import sys

    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is not None:
        try:
            if summary:
                wandb.run.summary.update({k: v for k, v in summary.items() if v is not None})
            wandb.finish()
        except Exception as e:  # noqa: BLE001 - Slurm signals every process of a preempted job, W&B's service too
            print(f"warning: closing the W&B run failed ({e!r}); the results record is unaffected", file=sys.stderr)
