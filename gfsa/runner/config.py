"""Every value of a run's config is checked and normalised once, where it enters (before a run
directory is named): a value users may spell several ways (``0.5`` and ``'0.5'``, ``-1`` and ``[-1]``)
becomes one value, so it names one run; a value that cannot be meant is a one-line ConfigError that
names the option and the fix. Pure Python (no torch): sweeps check hundreds of cells with it.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

from gfsa.nn.settings import GFSASettings
from gfsa.utils.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
# transformers.SchedulerType values (tests compare), plus timm's cosine and none.
SCHEDULES = (
    "none",
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "polynomial",
    "inverse_sqrt",
    "warmup_stable_decay",
    "timm_cosine",
)
# Lightning's accepted trainer.precision values (lightning.fabric.connector._PRECISION_INPUT, Lightning 2.x),
# written out so that checking a sweep never imports Lightning; the tests compare them.
PRECISIONS = (
    64,
    32,
    16,
    "64",
    "32",
    "16",
    "bf16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
# optim.schedule=timm_cosine reads these (conf/optim/deit.yaml sets them; conf/optim/adamw.yaml has no such schedule).
TIMM_COSINE_KEYS = ("schedule_interval", "warmup_epochs", "warmup_lr", "min_lr")
RESUME = ("auto", "restart")
# Trainer arguments the run path sets itself, with where each is configured instead.
RESERVED_TRAINER = {
    "logger": "loggers are the logger group's: logger=wandb|csv|tensorboard|mlflow|many|none (conf/logger/)",
    "callbacks": "callbacks are the callbacks group's: +callbacks.<name>._target_=… (conf/callbacks/)",
    "default_root_dir": "a run writes into its own run directory under paths.results_dir",
    "enable_checkpointing": "the run's checkpoints (last.ckpt, best.ckpt) are turned off with checkpoint=false",
}
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(name: str, v: Any, *, low: float | None = None, high: float | None = None, strict_low: bool = False):
    """A finite number (a numeric string counts: ``gfsa.wK='0.5'`` is ``0.5``), within bounds."""
    if isinstance(v, str) and _NUMBER.match(v.strip()):
        v = int(v) if re.match(r"^[+-]?\d+$", v.strip()) else float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name}={v!r}: expected a finite number")
    if low is not None and (v < low or (strict_low and v == low)):
        raise ConfigError(f"{name}={v!r}: must be {'>' if strict_low else '>='} {low}")
    if high is not None and v > high:
        raise ConfigError(f"{name}={v!r}: must be <= {high}")
    return v


def _float(name: str, v: Any, **bounds) -> float:
    return float(_number(name, v, **bounds))


def _int(name: str, v: Any, low: int | None = None, what: str = "an integer") -> int:
    if isinstance(v, str) and re.match(r"^[+-]?\d+$", v.strip()):
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name}={v!r}: expected {what}")
    if low is not None and v < low:
        raise ConfigError(f"{name}={v!r}: expected {what} >= {low}")
    return v


def _choice(name: str, v: Any, choices: tuple) -> Any:
    if v not in choices:
        raise ConfigError(f"{name}={v!r}: choose one of {', '.join(map(str, choices))}")
    return v


def _flag(name: str, v: Any, extra: tuple = ()) -> bool | str:
    """true/false (yes/no/1/0 as Hydra or a shell may pass them) or one of ``extra``."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in extra:
        return s
    if s in ("true", "yes", "1", "on"):
        return True
    if s in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{name}={v!r}: choose {' | '.join((*extra, 'true', 'false'))}")


def gfsa_settings(g: dict) -> GFSASettings:
    """The ``gfsa`` group as the library's typed settings (checked there, once), or a ConfigError."""
    try:
        return GFSASettings.from_mapping(g)
    except ValueError as e:  # LayerSpecError included
        raise ConfigError(str(e)) from None


def _trainer(t: dict) -> dict:
    t = dict(t)
    for key, instead in RESERVED_TRAINER.items():
        if key in t:
            raise ConfigError(f"trainer.{key} is set by the run path: {instead}")
    for key in ("max_epochs", "max_steps"):
        if t[key] is not None:
            t[key] = _int(f"trainer.{key}", t[key], low=-1, what="an integer (-1: no limit)")
    for key in ("num_nodes", "log_every_n_steps"):
        if t[key] is not None:
            t[key] = _int(f"trainer.{key}", t[key], low=1)
    acc = t["accumulate_grad_batches"]
    if acc is not None and str(acc).lower() != "auto":
        t["accumulate_grad_batches"] = _int("trainer.accumulate_grad_batches", acc, low=1, what="an integer or auto")
    for key in ("limit_train_batches", "limit_val_batches"):
        v = t[key]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"trainer.{key}={v!r}: expected a fraction (float) or a number of batches (int)")
    if t["limit_val_batches"] == 0:
        raise ConfigError(
            "trainer.limit_val_batches=0 turns validation off, and a run's results are its validation metrics: "
            "set it > 0 (a fraction or a number of batches)"
        )
    every, epochs = t.get("check_val_every_n_epoch"), t["max_epochs"]  # the first: optional (+trainer.…)
    if isinstance(every, int) and isinstance(epochs, int) and 0 < epochs < every:
        raise ConfigError(
            f"trainer.check_val_every_n_epoch={every} > trainer.max_epochs={epochs}: no validation would run; "
            f"set it <= {epochs}"
        )
    precision = t["precision"]
    if precision is not None and (isinstance(precision, bool) or precision not in PRECISIONS):
        raise ConfigError(
            f"trainer.precision={precision!r} is not a Lightning precision: "
            "use one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true"
        )
    if isinstance(t["accelerator"], str):
        t["accelerator"] = _choice("trainer.accelerator", t["accelerator"].lower(), ACCELERATORS)
    devices = t["devices"]
    if devices is not None and not (isinstance(devices, (list, str)) and not isinstance(devices, bool)):
        t["devices"] = _int("trainer.devices", devices, low=1, what="a device count, a list of ids, or auto")
    return t


def _task(task: dict) -> dict:
    task = dict(task)
    task["batch_size"] = _int("task.batch_size", task["batch_size"], low=1, what="a positive integer")
    task["num_workers"] = _int("task.num_workers", task["num_workers"], low=0, what="a non-negative integer")
    # global_batch_size: optional (imagenet's YAML states null; the presets that fix a global batch set it).
    if task.get("global_batch_size") is not None:
        task["global_batch_size"] = _int("task.global_batch_size", task["global_batch_size"], low=1)
    task["metric_select"] = _choice("task.metric_select", task["metric_select"], ("last", "best"))
    return task


def _optim(o: dict) -> dict:
    o = dict(o)
    o["name"] = _choice("optim.name", o["name"], OPTIMIZERS)
    o["lr"] = _float("optim.lr", o["lr"], low=0, strict_low=True)
    if o["weight_decay"] is not None:
        o["weight_decay"] = _number("optim.weight_decay", o["weight_decay"], low=0)
    o["no_decay"] = _no_decay(o["no_decay"])
    if o["eps"] is not None:
        o["eps"] = _number("optim.eps", o["eps"], low=0, strict_low=True)
    if o.get("momentum") is not None:  # optional: SGD's (gfsa.zoo.recipes.common.SGD_MOMENTUM otherwise)
        o["momentum"] = _number("optim.momentum", o["momentum"], low=0)
    if o["betas"] is not None:
        betas = o["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f"optim.betas={betas!r}: expected two numbers, e.g. [0.9, 0.999]")
        o["betas"] = [_number("optim.betas", b, low=0, high=1) for b in betas]
    if o["warmup_steps"] is not None:
        o["warmup_steps"] = _int("optim.warmup_steps", o["warmup_steps"], low=0)
    if o["warmup_ratio"] is not None:
        o["warmup_ratio"] = _number("optim.warmup_ratio", o["warmup_ratio"], low=0, high=1)
    if o["lr_batch_base"] is not None:
        o["lr_batch_base"] = _number("optim.lr_batch_base", o["lr_batch_base"], low=0, strict_low=True)
    if o.get("ema_decay") is not None:  # optional: the DeiT recipe's (conf/optim/deit.yaml)
        o["ema_decay"] = _number("optim.ema_decay", o["ema_decay"], low=0, high=1)
    if o["schedule"] is not None:
        _choice("optim.schedule", o["schedule"], SCHEDULES)
    if o["schedule"] == "timm_cosine":
        missing = [k for k in TIMM_COSINE_KEYS if k not in o]
        if missing:
            raise ConfigError(
                f"optim.schedule=timm_cosine needs optim.{', optim.'.join(missing)}: use optim=deit (which sets them) "
                "or pass them"
            )
        _choice("optim.schedule_interval", o["schedule_interval"], ("epoch", "step"))
    return o


def _no_decay(v: Any) -> list[str]:
    """``optim.no_decay``: a set of rules and name substrings, in one order (it names the run)."""
    if v is None:
        return []
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(e, str) and e.strip() for e in v):
        raise ConfigError(
            f"optim.no_decay={v!r}: expected a list, e.g. [1d, model] (timm's rule), [bias, LayerNorm.weight] "
            "(name substrings) or [] (decay every parameter)"
        )
    return sorted({e.strip() for e in v})


def metric_name(v: Any) -> str | None:
    """A metric as the record names it: ``val/acc`` and ``acc`` are one name."""
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise ValueError(v)
    v = v.strip()
    return v.removeprefix("val/")


def _early_stopping(es: dict) -> dict:
    es = dict(es)
    if es["patience"] is not None:
        es["patience"] = _int(
            "early_stopping.patience", es["patience"], low=0, what="a number of validations (or null)"
        )
    es["min_delta"] = _number("early_stopping.min_delta", es["min_delta"], low=0)
    if es["stopping_threshold"] is not None:
        es["stopping_threshold"] = _number("early_stopping.stopping_threshold", es["stopping_threshold"])
    try:
        es["monitor"] = metric_name(es["monitor"])
    except ValueError:
        raise ConfigError(
            f"early_stopping.monitor={es['monitor']!r}: a metric name such as acc or loss (or null)"
        ) from None
    if es["patience"] is None and es["stopping_threshold"] is None:  # off: the other keys change nothing
        es["min_delta"], es["monitor"] = 0.0, None
    return es


def _run(r: dict) -> dict:
    r = dict(r)
    try:
        r["objective"] = metric_name(r["objective"])
    except ValueError:
        raise ConfigError(f"run.objective={r['objective']!r}: a metric name such as acc or loss (or null)") from None
    if r["lock_timeout"] is not None:
        r["lock_timeout"] = _number("run.lock_timeout", r["lock_timeout"], low=0)
    if not isinstance(r["ignore"], list):
        raise ConfigError(f"run.ignore={r['ignore']!r}: expected a list of dotted keys")
    r["compile"] = _flag("run.compile", r["compile"])
    return r


def _backbone(b: dict) -> dict:
    # An hf backbone without a model: said first (the task's tokenizer follows it). _target_ ones have no type.
    if "_target_" not in b and b["type"] == "hf" and b["pretrained"] is None:
        raise ConfigError(
            f"backbone.pretrained is not set: backbone={b['name']} loads any transformers model, pass "
            "backbone.pretrained=<hub id or local dir written by save_pretrained>"
        )
    return b


def normalise(cfg: dict) -> dict:
    """The resolved config (every key of conf/, whose YAML holds the defaults) with every value checked
    and in one form; raises ConfigError."""
    cfg = copy.deepcopy(cfg)
    cfg["seed"] = _int("seed", cfg["seed"])
    cfg["with_baseline"] = _flag("with_baseline", cfg["with_baseline"], extra=("auto",))
    cfg["checkpoint"] = _flag("checkpoint", cfg["checkpoint"])
    cfg["resume"] = _choice("resume", str(cfg["resume"]).lower(), RESUME)
    cfg["run"] = _run(cfg["run"])
    cfg["early_stopping"] = _early_stopping(cfg["early_stopping"])
    cfg["gfsa"] = gfsa_settings(cfg["gfsa"]).to_config()
    for group, check in (("trainer", _trainer), ("task", _task), ("optim", _optim), ("backbone", _backbone)):
        cfg[group] = check(cfg[group])
    results = cfg["paths"]["results_dir"]
    if results is not None and not str(results).strip():
        raise ConfigError("paths.results_dir is empty: pass paths.results_dir=<dir> (or set GFSA_RESULTS_DIR)")
    return cfg


def with_run_defaults(cfg: dict) -> dict:
    """A config recorded by an older version of the suite, completed with the run-level keys that
    conf/config.yaml has gained since (``resume``, ``run.lock_timeout``, the ``callbacks`` group, ...) and the
    group keys of :data:`gfsa.runner.results.ADDED_KEYS` at their old behaviour's value (``optim.no_decay``, ...),
    so the run can be built again (``gfsa analyze``, ``gfsa eval``). Recorded values always win."""
    import yaml

    from gfsa.utils.resources import conf_dir

    base = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    out = copy.deepcopy(cfg)
    for key, value in base.items():
        if key in ("defaults", "hydra"):
            continue
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = {**value, **out[key]}
    out.setdefault("callbacks", {})
    from gfsa.runner.results import ADDED_KEYS

    for dotted, neutral in ADDED_KEYS.items():  # group keys added since, at the value those runs computed with
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = copy.deepcopy(neutral)
    return out
