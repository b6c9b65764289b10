"""Loggers: the ``logger`` group's ``_target_`` entries, instantiated by Hydra (conf/logger/: wandb, csv,
tensorboard, mlflow, many, none, or your own class), and W&B's offline probe and summary.

The run directory is known only once the config is hashed, so strings in a logger entry may name it and
other facts of the run as placeholders (``"{run_dir}"``, ``"{run_id}"``, …; :data:`PLACEHOLDERS`), which
:func:`make_loggers` fills in before instantiating.
"""

from __future__ import annotations

import netrc
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from gfsa.utils.errors import ConfigError, first_line

PLACEHOLDERS = ("run_dir", "run_id", "run_name", "group", "variant", "layers", "K", "seed", "results_dir")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# The logger group before it held _target_ entries (`logger.type: wandb | csv | none`): a config tree
# copied before then (GFSA_CONF_DIR) still runs.
LEGACY_TYPES = ("wandb", "csv", "none")


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


def under_wandb_agent() -> bool:
    """A W&B sweep agent started this process: it sets WANDB_SWEEP_ID, and W&B then gives the run the
    agent's id, project and entity whatever ``wandb.init`` asks for."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def wandb_logger(
    project: str | None,
    entity: str | None,
    mode: str,
    save_dir: str,
    id: str | None,
    name: str,
    group: str,
    job_type: str,
    tags: list,
    **kwargs,
):
    """Lightning's WandbLogger with the suite's mode probe (``mode: auto``) and ``resume="allow"``: a
    requeued run continues its W&B run. Under a sweep agent the agent's run id is used (W&B would ignore
    another one with a warning)."""
    from lightning.pytorch.loggers import WandbLogger

    if under_wandb_agent():
        id = None
    return WandbLogger(
        project=project,
        entity=entity,
        save_dir=save_dir,
        id=id,
        name=name,
        group=group,
        job_type=job_type,
        tags=[str(t) for t in tags],
        mode=wandb_mode(mode),
        resume="allow",
        **kwargs,
    )


def mlflow_logger(experiment_name: str, run_name: str, tracking_uri: str, gfsa_run_id: str, tags: dict, **kwargs):
    """Lightning's MLFlowLogger that continues the MLflow run of an earlier attempt of the same run
    (found by its ``gfsa_run_id`` tag), and allows MLflow 3's file store for ``file:`` URIs."""
    if str(tracking_uri).startswith("file:"):
        # MLflow 3 refuses file stores ("maintenance mode") unless this is set; the suite's default is one.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = kwargs.pop("run_id", None)
    experiment = client.get_experiment_by_name(experiment_name)
    if run_id is None and experiment is not None:
        found = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.gfsa_run_id = '{gfsa_run_id}'", max_results=1
        )
        run_id = found[0].info.run_id if found else None
    tags = {**{k: str(v) for k, v in (tags or {}).items()}, "gfsa_run_id": gfsa_run_id}
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=tags,
        run_id=run_id,
        **kwargs,
    )


def fill_placeholders(node, values: dict):
    """``"{run_dir}"`` and the other :data:`PLACEHOLDERS` in every string of ``node`` (lists and
    mappings included); other braces are left as they are."""
    if isinstance(node, str):
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
    if isinstance(node, dict):
        return {k: fill_placeholders(v, values) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [fill_placeholders(v, values) for v in node]
    return node


def placeholder_values(cfg: dict, run_dir: Path, run_id: str, variant: str) -> dict:
    g = cfg["gfsa"]
    group = f"{cfg['backbone']['name']}/{cfg['task']['name']}"
    return {
        "run_dir": str(run_dir),
        "run_id": run_id,
        "run_name": f"{group}/{run_dir.name}",
        "group": group,
        "variant": variant,
        "layers": g["layers"] if variant != "baseline" else "none",
        "K": g["K"],
        "seed": cfg["seed"],
        "results_dir": str(Path(cfg["paths"]["results_dir"]).expanduser().resolve()),
    }


def _legacy(lc: dict) -> dict:
    """``{type: wandb, project, entity, mode, tags}`` (the group's earlier form) as today's entries."""
    kind = lc["type"]
    if kind not in LEGACY_TYPES:
        raise ConfigError(
            f"logger.type={kind}: choose one of {', '.join(LEGACY_TYPES)} (or logger=<file of conf/logger/>)"
        )
    if kind == "none":
        return {}
    if kind == "csv":
        return {
            "csv": {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": "{run_dir}",
                "name": "",
                "version": "csv",
            }
        }
    return {
        "wandb": {
            "_target_": "gfsa.runner.loggers.wandb_logger",
            "project": lc["project"],
            "entity": lc["entity"],
            "mode": lc["mode"],
            "save_dir": "{run_dir}",
            "id": "{run_id}",
            "name": "{run_name}",
            "group": "{group}",
            "job_type": "{variant}",
            "tags": ["layers={layers}", "K={K}", "seed={seed}", *lc["tags"]],
        }
    }


def instantiate_entry(group: str, name: str, spec, **kwargs):
    """One ``_target_`` entry of a group, instantiated by Hydra, or a one-line ConfigError naming it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ConfigError(f"{group}.{name}: expected a mapping with _target_ (a class or function to instantiate)")
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        hint = ""
        if isinstance(cause, ImportError):
            hint = "; is its package installed and on PYTHONPATH?"
            if group == "logger":
                hint = "; install what it needs (pip install 'gfsa[loggers]' has tensorboardX and mlflow-skinny)"
        raise ConfigError(f"{group}.{name}: cannot create {spec['_target_']} ({first_line(cause)}){hint}") from None


def make_loggers(cfg: dict, values: dict) -> list:
    """The Lightning loggers of ``cfg['logger']`` (an empty list for logger=none), writing where their
    entries say (under the run directory by default)."""
    lc = cfg.get("logger") or {}  # ~logger drops the group, like logger=none
    if "type" in lc and not isinstance(lc["type"], dict):
        lc = _legacy(lc)
    return [instantiate_entry("logger", name, fill_placeholders(spec, values)) for name, spec in lc.items() if spec]


def finish_wandb(summary: dict | None = None) -> None:
    """Put the suite's numbers in the W&B summary and close the run (Lightning does not)."""
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


def report_ended_to_agent(cfg: dict, record: dict) -> None:
    """Under a W&B sweep agent, a config whose run already ended is not trained again, but the agent's
    run still gets its numbers (the recorded objective), so the search sees a value for these parameters."""
    if not under_wandb_agent():
        return
    from gfsa.runner import results as R
    from gfsa.runner.selection import objective

    entries = cfg.get("logger") or {}
    if "type" in entries and not isinstance(entries["type"], dict):
        entries = _legacy(entries)
    spec = next(
        (s for s in entries.values() if s and "_target_" in s and str(s["_target_"]).endswith("loggers.wandb_logger")),
        None,
    )
    if spec is None:
        return
    rdir = R.run_dir(cfg)
    values = placeholder_values(cfg, rdir, R.run_id(rdir), R.variant_name(cfg))
    summary = {f"val/{k}": v["value"] for k, v in R.selected_metrics(record).items() if not k.startswith("_")}
    comparison = record.get("comparison") or {}
    summary |= {
        "status": record["status"],
        "objective": objective(record, cfg),
        "improvement_pct": comparison.get("improvement_pct"),
    }
    logger = instantiate_entry("logger", "wandb", fill_placeholders(spec, values))
    logger.experiment.summary.update({k: v for k, v in summary.items() if v is not None})
    finish_wandb()
