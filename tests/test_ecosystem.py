"""The runner among the libraries it sits on: checkpoints and ``gfsa eval``, early stopping, ``_target_``
loggers, callbacks, tasks and backbones (a user's own package), trainer and debug presets, Optuna searches
and W&B agents, and what the console shows. Real Hydra, Lightning, Optuna, W&B (offline) and subprocesses."""

from __future__ import annotations

import inspect
import json
import math
import os
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONF_DIR, FAST, PYTHON, REPO, compose
from omegaconf import OmegaConf

from gfsa.runner import results as R
from gfsa.runner.config import RESERVED_TRAINER, normalise
from gfsa.runner.console import group_options, overrides_from_agent_args
from gfsa.runner.evaluate import evaluate, split_metrics
from gfsa.runner.selection import objective
from gfsa.runner.train import configured_callbacks, prepare, run
from gfsa.utils.errors import ConfigError

DIGITS = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
GOLDEN = REPO / "tests" / "data" / "golden_record.json"


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(extra or {})}


def _cli(*args, env: dict | None = None, timeout: int = 300):
    return subprocess.run(
        [PYTHON, "run.py", *args], cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def _gfsa(*args, timeout: int = 300):
    return subprocess.run(
        [PYTHON, "-m", "gfsa.cli", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_error(out, code: int = 2) -> str:
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


def _resolved(overrides: list[str], results: Path | None = None) -> dict:
    cfg = OmegaConf.to_container(compose(overrides, results), resolve=True)
    cfg.pop("hydra", None)
    return cfg


def _values(metrics: dict) -> dict:
    return {k: v["value"] for k, v in metrics.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------------
# best.ckpt, last.ckpt and gfsa eval


def test_eval_scores_each_checkpoint_to_the_numbers_its_record_gives(tmp_path):
    """best.ckpt holds the weights of the record's `best`, last.ckpt those of its `metrics`: scoring
    either again gives the same numbers, to the last bit."""
    rec = run(
        compose(
            [*FAST, *DIGITS, "trainer.max_epochs=3", "task.metric_select=best", "optim.lr=0.01", "with_baseline=false"],
            tmp_path,
        )
    )
    rdir = Path(rec["run_dir"])
    ck = rec["checkpoints"]
    assert ck["last"] == {"path": "checkpoints/last.ckpt", "epoch": 2, "step": 9}
    assert ck["best"]["path"] == "checkpoints/best.ckpt" and ck["best"]["epoch"] == rec["best"]["_epoch"]["value"]
    for name, recorded in (("last", rec["metrics"]), ("best", rec["best"])):
        result = evaluate(rdir, ckpt=name)
        assert result["metrics"] == _values(recorded) == result["recorded"], name
        assert result["checkpoint"]["epoch"] == ck[name]["epoch"] and result["checkpoint"]["step"] == ck[name]["step"]

    # default: the checkpoint the record reports (metric_select=best); KEY=VALUE changes the recorded config
    out = _gfsa("eval", str(rdir), "--json", "task.num_workers=0")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)  # stdout is one JSON object and nothing else
    assert data["checkpoint"]["name"] == "best" and data["metrics"] == _values(rec["best"])
    assert split_metrics(data["metrics"], ["val"], "val") == data["metrics"]
    with pytest.raises(ConfigError, match="--split test: this run's task evaluates val"):
        split_metrics(data["metrics"], ["val"], "test")


def test_eval_splits_metrics_by_their_split_and_the_ema_with_them():
    metrics = {"mae": 1.0, "test_mae": 2.0, "ema_mae": 3.0, "ema_test_mae": 4.0, "loss": 5.0, "test_loss": 6.0}
    assert split_metrics(metrics, ["val", "test"], "val") == {"mae": 1.0, "ema_mae": 3.0, "loss": 5.0}
    assert split_metrics(metrics, ["val", "test"], "test") == {"test_mae": 2.0, "ema_test_mae": 4.0, "test_loss": 6.0}


def test_eval_scores_the_ema_weights_kept_in_the_checkpoint(tmp_path):
    """optim.ema_decay: the EMA's metrics come from the callback state in the checkpoint (Lightning restores
    callbacks in a validate-only trainer too, and the EMA is built there)."""
    rec = run(compose([*FAST, *DIGITS, "+optim.ema_decay=0.5", "gfsa.layers=none"], tmp_path))
    assert "ema_acc" in rec["metrics"]
    result = evaluate(rec["run_dir"], ckpt="last")
    assert result["metrics"] == _values(rec["metrics"])


def test_eval_of_a_run_recorded_by_an_older_version(tmp_path):
    """A record whose config predates today's keys (the golden record's: no early_stopping, run.objective,
    callbacks group; logger.type) and a run dir without best.ckpt: scored from last.ckpt; asking for
    best.ckpt or a broken checkpoint is one line, exit 2."""
    golden = json.loads(GOLDEN.read_text())
    assert "early_stopping" not in golden["config"] and "type" in golden["config"]["logger"]
    overrides = [*FAST, *DIGITS, "gfsa.layers=selected", "gfsa.wK=0.2", "with_baseline=false"]  # its run
    rec = run(compose(overrides, tmp_path))
    rdir = Path(rec["run_dir"])
    old = {k: v for k, v in rec.items() if k != "checkpoints"} | {"config": golden["config"]}
    R.write_record(rdir, old)
    (rdir / "checkpoints" / "best.ckpt").unlink()
    assert evaluate(rdir)["metrics"] == _values(rec["metrics"])

    line = _one_error(_gfsa("eval", str(rdir), "--ckpt", "best"))
    assert "no checkpoint" in line and "best.ckpt" in line and "use --ckpt last" in line
    (rdir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a whole checkpoint")
    line = _one_error(_gfsa("eval", str(rdir)))
    assert "cannot score" in line and "truncated or not a checkpoint" in line
    line = _one_error(_gfsa("eval", str(tmp_path / "nope")))
    assert "no result.json" in line


# --------------------------------------------------------------------------------------------------
# early stopping


def test_early_stopping_stops_the_run_and_names_its_directory_only_when_on(tmp_path):
    rec = run(
        compose(
            [*FAST, *DIGITS, "trainer.max_epochs=5", "early_stopping.patience=1", "early_stopping.min_delta=1.0"],
            tmp_path,
        )
    )
    assert len(rec["history"]) == 2 and rec["epochs"] == 2  # the second validation did not improve by 1.0
    assert rec["early_stopping"]["epoch"] == 1 and "did not improve" in rec["early_stopping"]["reason"]

    def rdir(*overrides):
        return R.run_dir(normalise(_resolved([*FAST, *overrides], tmp_path)))

    assert rdir() == rdir("early_stopping.min_delta=0.5") == rdir("early_stopping.monitor=loss")  # off
    on = rdir("early_stopping.patience=3")
    assert on != rdir() and on != rdir("early_stopping.patience=3", "early_stopping.monitor=loss")
    assert rdir("early_stopping.patience=3", "early_stopping.monitor=val/loss") == rdir(
        "early_stopping.patience=3", "early_stopping.monitor=loss"
    )
    with pytest.raises(ConfigError, match=r"^early_stopping.monitor=accuracy: DigitsTask scores acc, loss"):
        run(compose([*FAST, "early_stopping.patience=2", "early_stopping.monitor=accuracy", "seed=3"], tmp_path))
    assert not list(tmp_path.rglob("*seed3*"))


def _fit_with_monitors(tmp_path: Path, acc_by_epoch: dict[int, float], epochs: int, patience: int):
    """A real Trainer on a tiny regression whose validation logs ``val/acc`` only in the epochs of
    ``acc_by_epoch`` (as ASR scores WER every ``task.decode_every`` epochs) and names what it scored in
    ``validation_keys``, as the suite's recipes do."""
    import lightning as L

    from gfsa.runner.monitors import BestCheckpoint, ScoredEarlyStopping

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, _):
            self.log("val/loss", self.layer(batch[0]).pow(2).mean())
            if self.current_epoch in acc_by_epoch:
                self.log("val/acc", acc_by_epoch[self.current_epoch])

        def on_validation_epoch_end(self):  # what this validation scored (Lightning keeps older values)
            self.validation_keys = {"loss", *(["acc"] if self.current_epoch in acc_by_epoch else [])}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    best = BestCheckpoint(
        dirpath=tmp_path, filename="best", monitor="val/acc", mode="max", enable_version_counter=False
    )
    stop = ScoredEarlyStopping(monitor="val/acc", mode="max", patience=patience, check_finite=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[best, stop],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(Module(), data, data)
    return trainer, best


def test_best_checkpoint_and_early_stopping_count_only_the_validations_that_score_their_metric(tmp_path):
    """Epochs without a new val/acc are passed over, although Lightning still holds the last one: the best is
    epoch 2's 0.9, and patience 2 counts epochs 4 and 6 (no improvement) and stops after epoch 6, not after
    epochs 3 and 4 (the stale 0.9, then 0.8)."""
    acc = {0: 0.5, 2: 0.9, 4: 0.8, 6: 0.7, 8: 0.95}
    trainer, best = _fit_with_monitors(tmp_path / "a", acc, epochs=10, patience=2)
    assert trainer.current_epoch == 7 and trainer.should_stop  # stopped at the end of epoch 6
    assert float(best.best_model_score) == pytest.approx(0.9) and (tmp_path / "a" / "best.ckpt").is_file()
    assert torch.load(tmp_path / "a" / "best.ckpt", weights_only=False)["epoch"] == 2


def test_a_metric_that_no_validation_scores_is_said_at_the_end(tmp_path):
    with pytest.warns(UserWarning, match="val/acc was scored by no validation of this run: no best.ckpt"):
        _fit_with_monitors(tmp_path, {}, epochs=2, patience=1)
    assert not (tmp_path / "best.ckpt").exists()


# --------------------------------------------------------------------------------------------------
# loggers and callbacks: _target_ entries


def _tensorboard_tags(folder: Path) -> set[str]:
    """Scalar tags of TensorBoard event files (TFRecord framing: length, crc, event proto, crc)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack_from("<Q", data, pos)
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + n + 4
    return tags


def test_many_loggers_at_once_log_the_run_and_its_learning_rate(tmp_path):
    from wandb_log import logged

    rec = run(compose([*FAST, *DIGITS, "logger=many", "trainer.log_every_n_steps=1", "gfsa.layers=none"], tmp_path))
    rdir = Path(rec["run_dir"])
    rows = (rdir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"lr-AdamW/pg1", "train/loss", "val/acc"} <= set(header), header
    acc = [r.split(",")[header.index("val/acc")] for r in rows[1:] if r.split(",")[header.index("val/acc")]]
    assert float(acc[-1]) == pytest.approx(rec["metrics"]["acc"]["value"])
    assert yaml.safe_load((rdir / "csv" / "hparams.yaml").read_text())["seed"] == 0  # the run's config
    assert {"lr-AdamW/pg1", "val/acc", "train/loss"} <= _tensorboard_tags(rdir / "tensorboard")
    (wandb_file,) = rdir.glob("wandb/offline-run-*/run-*.wandb")
    facts, values = logged(wandb_file)
    assert facts["id"] == rec["run_id"] and facts["tags"] == ["layers=none", "K=3", "seed=0"]
    assert "lr-AdamW/pg1" in values and values["objective"] == pytest.approx(rec["metrics"]["acc"]["value"])


def test_mlflow_logger_keeps_one_run_across_attempts(tmp_path):
    from mlflow.tracking import MlflowClient

    from gfsa.runner.loggers import mlflow_logger

    rec = run(compose([*FAST, *DIGITS, "logger=mlflow", "trainer.log_every_n_steps=1", "gfsa.layers=none"], tmp_path))
    uri = f"file:{tmp_path.resolve()}/mlruns"
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("gfsa").experiment_id])
    assert found.data.tags["gfsa_run_id"] == rec["run_id"] and found.data.tags["variant"] == "baseline"
    assert found.data.metrics["val/acc"] == pytest.approx(rec["metrics"]["acc"]["value"])
    assert "lr-AdamW/pg1" in found.data.metrics
    again = mlflow_logger("gfsa", "a requeued attempt", uri, rec["run_id"], {})  # what a resumed run creates
    assert again.run_id == found.info.run_id


def test_logger_entries_old_and_broken(tmp_path):
    """The group's earlier form (logger.type, a copied config tree) still runs; an entry that cannot be
    created is one line naming it."""
    from lightning.pytorch.loggers import CSVLogger

    from gfsa.runner.loggers import make_loggers, placeholder_values

    cfg = normalise(_resolved(FAST, tmp_path))
    values = placeholder_values(cfg, tmp_path / "run", "abc", "baseline")
    (csv,) = make_loggers({**cfg, "logger": {"type": "csv"}}, values)
    assert isinstance(csv, CSVLogger) and Path(csv.log_dir) == tmp_path / "run" / "csv"
    assert make_loggers({**cfg, "logger": {"type": "none"}}, values) == []
    with pytest.raises(ConfigError, match=r"^logger.mine: cannot create my_pkg.Nope \(.*\); install what it needs"):
        make_loggers({**cfg, "logger": {"mine": {"_target_": "my_pkg.Nope"}}}, values)


def test_callback_presets_and_the_learning_rate_monitor_without_a_logger():
    from lightning.pytorch.callbacks import LearningRateMonitor

    kinds = {}
    for option in group_options(CONF_DIR, "callbacks"):
        cfg = _resolved([f"callbacks={option}"])
        kinds[option] = {type(c).__name__ for c in configured_callbacks(cfg, has_logger=True)}
        assert not any(isinstance(c, LearningRateMonitor) for c in configured_callbacks(cfg, has_logger=False))
    assert kinds["default"] == {"LearningRateMonitor"} and kinds["none"] == set()
    assert kinds["analysis"] == {"LearningRateMonitor", "AnalysisCallback"}
    assert kinds["model_summary"] == {"LearningRateMonitor", "RichModelSummary"}


# --------------------------------------------------------------------------------------------------
# tasks, backbones and callbacks from a user's package

USER_PACKAGE = {
    "my_gfsa_ext/__init__.py": "",
    "my_gfsa_ext/tasks.py": '''
        import torch
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        from gfsa.zoo.tasks.base import DictDataset, Task


        class Parity(Task):
            """Parity of 8 random bits."""

            num_classes = 2

            def load(self):
                x = torch.randint(0, 2, (int(self.cfg["size"]), 8), generator=torch.Generator().manual_seed(0))
                n = len(x) * 3 // 4
                self.train_set = DictDataset(bits=x[:n], labels=x[:n].sum(1) % 2)
                self.val_set = DictDataset(bits=x[n:], labels=x[n:].sum(1) % 2)

            def train_dataloader(self):
                return self.loader(self.train_set, True)

            def val_dataloader(self):
                return self.loader(self.val_set, False)

            def metrics(self):
                return MetricCollection({"acc": MulticlassAccuracy(num_classes=2, average="micro")})
    ''',
    "my_gfsa_ext/models.py": """
        import torch
        from torch import nn

        from gfsa.nn.attention import apply_gfsa


        class Attention(nn.Module):
            def __init__(self, dim, num_heads):
                super().__init__()
                self.num_heads, self.qkv, self.proj = num_heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

            def forward(self, x):
                b, n, d = x.shape
                q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
                return self.proj(apply_gfsa(self, q, k, v).transpose(1, 2).reshape(b, n, d))


        class Encoder(nn.Module):
            def __init__(self, dim, depth, num_heads, num_classes):
                super().__init__()
                self.embed, self.pos = nn.Embedding(2, dim), nn.Parameter(torch.zeros(1, 8, dim))
                self.blocks = nn.ModuleList(Attention(dim, num_heads) for _ in range(depth))
                self.head = nn.Linear(dim, num_classes)

            def gfsa_attention_modules(self):
                return list(self.blocks)

            def forward(self, bits):
                x = self.embed(bits) + self.pos
                for block in self.blocks:
                    x = x + block(x)
                return self.head(x.mean(1))


        def build(cfg, task):
            return Encoder(int(cfg["dim"]), int(cfg["depth"]), int(cfg["num_heads"]), task.num_classes)
    """,
    "my_gfsa_ext/callbacks.py": """
        import json
        from pathlib import Path

        import lightning as L


        class CountValidations(L.Callback):
            def __init__(self, out):
                self.out, self.n = Path(out), 0

            def on_validation_end(self, trainer, pl_module):
                if not trainer.sanity_checking:
                    self.n += 1
                    self.out.write_text(json.dumps({"validations": self.n}))
    """,
    "my_gfsa_ext/conf/task/parity.yaml": """
        name: parity
        _target_: my_gfsa_ext.tasks.Parity
        data_dir: null
        batch_size: 32
        num_workers: 0
        metric_select: best
        size: 256
    """,
    "my_gfsa_ext/conf/backbone/tiny_encoder.yaml": """
        name: tiny_encoder
        _target_: my_gfsa_ext.models.build
        dim: 16
        depth: 2
        num_heads: 2
    """,
}


def test_a_users_package_adds_its_task_backbone_and_callback(tmp_path, monkeypatch):
    """docs/extending.md's worked example: nothing in gfsa/ or conf/ is edited."""
    pkg = tmp_path / "pkg"
    for name, text in USER_PACKAGE.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    results, count = tmp_path / "results", tmp_path / "count.json"
    out = _cli(
        f"hydra.searchpath=[file://{pkg / 'my_gfsa_ext' / 'conf'}]",
        "task=parity",
        "backbone=tiny_encoder",
        "gfsa.layers=all",
        "+callbacks.count._target_=my_gfsa_ext.callbacks.CountValidations",
        f"+callbacks.count.out={count}",
        "trainer.max_epochs=2",
        *FAST[2:],
        f"paths.results_dir={results}",
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(pkg), str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = {r["variant"]: r for _, r in R.iter_records(results)}
    assert set(records) == {"baseline", "gfsa"}  # with_baseline=auto trained its baseline too
    gfsa_rec = records["gfsa"]
    assert (gfsa_rec["backbone"], gfsa_rec["task"]) == ("tiny_encoder", "parity")
    assert gfsa_rec["gfsa"]["layers"] == [0, 1] and gfsa_rec["gfsa"]["added_parameters"] == 2 * 2
    assert json.loads(count.read_text()) == {"validations": 2}
    assert gfsa_rec["comparison"]["baseline_run"] == records["baseline"]["run_dir"]
    monkeypatch.syspath_prepend(str(pkg))  # gfsa eval rebuilds the user's task and backbone from the record
    assert evaluate(gfsa_rec["run_dir"])["metrics"] == _values(gfsa_rec["best"])


def test_a_group_names_one_builder():
    from gfsa.runner.registry import builder

    with pytest.raises(ConfigError, match="task sets both type=digits and _target_=x.Y: keep one"):
        builder("task", {"type": "digits", "_target_": "x.Y"})
    with pytest.raises(ConfigError, match=r"backbone._target_=nowhere.build: cannot import nowhere"):
        builder("backbone", {"_target_": "nowhere.build"})
    with pytest.raises(ConfigError, match="torch has no NotAModel"):
        builder("backbone", {"_target_": "torch.NotAModel"})


# --------------------------------------------------------------------------------------------------
# trainer and debug presets; Lightning's trainer arguments


def test_every_lightning_trainer_argument_passes_or_names_where_it_is_set(tmp_path):
    import lightning as L

    from gfsa.runner.train import _trainer

    base = normalise(_resolved(FAST, tmp_path))
    for name, param in inspect.signature(L.Trainer.__init__).parameters.items():
        if name == "self":
            continue
        cfg = {**base, "trainer": {**base["trainer"], name: param.default}}
        if name in RESERVED_TRAINER:
            with pytest.raises(ConfigError, match=f"^trainer.{name} is set by the run path: "):
                normalise(cfg)
            continue
        trainer = _trainer(normalise(cfg)["trainer"], False, [], tmp_path)
        assert isinstance(trainer, L.Trainer), name


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["trainer.min_epochs=2"],
            "a Lightning Trainer argument not in conf/trainer/ is added with +trainer.min_epochs=…",
        ),
        (["+trainer.logger=true"], "trainer.logger is set by the run path: loggers are the logger group's"),
        (["hparams_search=nope"], "unknown hparams_search 'nope'; choose one of: digits_optuna, optuna"),
        (["debug=nope"], "unknown debug 'nope'; choose one of: default, fdr, limit, overfit, profiler"),
    ],
)
def test_cli_bad_trainer_and_preset_input_is_one_line(tmp_path, args, message):
    line = _one_error(_cli(*args, *FAST, f"paths.results_dir={tmp_path / 'r'}"))
    assert message in line
    assert not (tmp_path / "r").exists()


def test_trainer_and_debug_presets(tmp_path):
    for option in ("cpu", "debug"):
        assert _resolved([f"trainer={option}"])["trainer"]["accelerator"] == "cpu"
    assert _resolved(["trainer=ddp"])["trainer"]["strategy"] == "ddp"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu but this machine has no usable GPU"):
            prepare(compose(["trainer=gpu"], tmp_path))
    debug = {o: _resolved([f"debug={o}"]) for o in group_options(CONF_DIR, "debug")}
    for option, cfg in debug.items():
        assert cfg["paths"]["results_dir"].endswith("/debug") and cfg["with_baseline"] is False, option
        assert cfg["trainer"]["accelerator"] == "cpu" and cfg["trainer"]["detect_anomaly"] is True, option
    assert debug["fdr"]["trainer"]["fast_dev_run"] is True and debug["profiler"]["trainer"]["profiler"] == "simple"
    assert run(compose(["debug=fdr", *FAST[2:]], tmp_path)) is None  # a smoke run: no record
    rec = run(compose(["debug=overfit", "trainer.max_epochs=2", *FAST[2:]], tmp_path))  # paths.results_dir wins
    assert rec["config"]["trainer"]["overfit_batches"] == 3 and Path(rec["run_dir"]).is_relative_to(tmp_path)
    assert rec["steps"] == 6  # the same 3 batches each epoch


@pytest.mark.timeout(300)
def test_trainer_ddp_preset_trains_two_ranks_and_prints_each_line_once(tmp_path):
    """trainer=ddp in a plain `python run.py`: Lightning starts the second rank itself (gloo on the CPU)."""
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "with_baseline=false"]
    out = _cli(*ddp, *FAST, *DIGITS, f"paths.results_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = [r for _, r in R.iter_records(tmp_path)]
    assert rec["world_size"] == 2 and rec["global_batch_size"] == 2 * 64
    both = out.stdout + out.stderr
    assert both.count("GPU available") == 1  # not once per rank, nor once per handler
    for noise in ("💡", "srun", "LeafSpec", "sync_dist=True", "does not have many workers"):
        assert noise not in both, noise


# --------------------------------------------------------------------------------------------------
# Optuna searches (hparams_search=…) and the objective


def _study(results: Path) -> dict:
    (path,) = results.glob(".multirun/*/optimization_results.yaml")
    return yaml.safe_load(path.read_text())


@pytest.mark.timeout(300)
def test_digits_optuna_search_returns_the_objective_of_each_trial(tmp_path):
    out = _cli(
        "hparams_search=digits_optuna", "hydra.sweeper.n_trials=2", *FAST, *DIGITS, f"paths.results_dir={tmp_path}"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    records = [r for _, r in R.iter_records(tmp_path)]
    assert len(records) == 2 and all(r["variant"] == "gfsa" for r in records)  # trials, no baselines
    study = _study(tmp_path)
    best = max(records, key=lambda r: r["metrics"]["acc"]["value"])
    assert study["best_value"] == best["metrics"]["acc"]["value"]
    assert set(study["best_params"]) == {"optim.lr", "optim.weight_decay", "gfsa.K", "gfsa.layers"}
    assert any(r["config"]["optim"]["lr"] == study["best_params"]["optim.lr"] for r in records)


@pytest.mark.timeout(300)
def test_a_diverged_trial_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    # A search of one's own (hydra.searchpath): one value trains, the other diverges (seed 0 tries both,
    # the diverging one first). Not the grid sampler: hydra-optuna-sweeper 1.3 crashes when the last
    # trial of a grid fails (its Study.stop guard covers completed trials only).
    (conf / "w0.yaml").write_text(
        textwrap.dedent("""
        # @package _global_
        defaults:
          - override /hydra/sweeper: optuna
          - override /hydra/sweeper/sampler: random
        hydra:
          mode: MULTIRUN
          sweeper:
            direction: maximize
            n_trials: 2
            n_jobs: 1
            max_failure_rate: 1.0
            sampler: {seed: 0}
            params: {gfsa.w0: "choice(0.0, 1e30)"}
        """)
    )
    results = tmp_path / "results"
    args = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "hparams_search=w0", "gfsa.layers=all"]
    out = _cli(*args, *FAST, *DIGITS, f"paths.results_dir={results}")
    assert out.returncode == 4, out.stderr[-3000:]  # a run of the search diverged: the suite's exit code for it
    statuses = sorted(r["status"] for _, r in R.iter_records(results))
    assert statuses == ["diverged", "finished"]
    assert "Failed experiment: Return value must be float-castable. Got 'None'" in out.stdout + out.stderr
    assert _study(results)["best_params"] == {"gfsa.w0": 0.0}


def test_the_search_direction_must_be_the_objectives(tmp_path):
    args = ["hparams_search=digits_optuna", "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=1"]
    line = _one_error(_cli(*args, *FAST, f"paths.results_dir={tmp_path}"))
    assert "hydra.sweeper.direction=minimize but the objective acc is better up" in line
    assert "set hydra.sweeper.direction=maximize" in line
    assert not list(R.iter_records(tmp_path))


def test_objective_is_the_selected_metric_or_nothing():
    def record(status="finished", select="last"):
        return {
            "status": status,
            "primary_metric": "acc",
            "selected_by": select,
            "metrics": {"acc": {"value": 0.5, "direction": "up"}, "loss": {"value": 1.5, "direction": "down"}},
            "best": {"acc": {"value": 0.75, "direction": "up"}, "_epoch": {"value": 0, "direction": "up"}},
        }

    cfg = {"run": {"objective": None}}
    assert objective(record(), cfg) == 0.5 and objective(record(select="best"), cfg) == 0.75
    assert objective(record(), {"run": {"objective": "loss"}}) == 1.5
    assert objective(record("diverged"), cfg) is None and objective(None, cfg) is None
    with pytest.raises(ConfigError, match="run.objective=f1: this run recorded acc, loss"):
        objective(record(), {"run": {"objective": "f1"}})
    nan = record()
    nan["metrics"]["acc"]["value"] = math.nan
    assert objective(nan, cfg) is None


# --------------------------------------------------------------------------------------------------
# W&B sweep agents


def test_wandb_agent_argument_styles_compose_the_same_config():
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    params = {"optim.lr": 0.003, "gfsa.layers": "all", "trainer.gradient_clip_val": None, "run.compile": True}
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    configs = [_resolved(overrides_from_agent_args(macros[m])) for m in ("args", "args_no_hyphens")]
    assert configs[0] == configs[1]
    assert configs[0]["optim"]["lr"] == 0.003 and configs[0]["trainer"]["gradient_clip_val"] is None
    assert configs[0]["run"]["compile"] is True and configs[0]["gfsa"]["layers"] == "all"
    assert overrides_from_agent_args(["--multirun", "--cfg=job", "--config-name=x"]) == [
        "--multirun",
        "--cfg=job",
        "--config-name=x",
    ]


@pytest.mark.timeout(300)
def test_a_wandb_agent_run_is_the_agents_run_without_a_baseline(tmp_path):
    """What a W&B agent starts: its environment (sweep and run id) and its default `${args}` command. The
    run logs under the agent's id with its objective; with_baseline=auto trains no baseline; the same
    parameters again find the finished run and give the agent's new run its recorded objective."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb_log import logged

    params = {"optim.lr": 0.003, "gfsa.layers": "all", "trainer.gradient_clip_val": None}
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    common = [*FAST[:-1], *DIGITS, "logger=wandb", f"paths.results_dir={tmp_path}"]
    out = _cli(*macros["args"], *common, env={"WANDB_SWEEP_ID": "sweep1", "WANDB_RUN_ID": "agentrun1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = [r for _, r in R.iter_records(tmp_path)]
    assert rec["variant"] == "gfsa" and rec["config"]["optim"]["lr"] == 0.003
    facts, values = logged(next(tmp_path.rglob("run-agentrun1.wandb")))
    assert facts["id"] == "agentrun1" and values["objective"] == rec["metrics"]["acc"]["value"]
    # the console: one line per message, no third-party noise, messages unwrapped outside a terminal
    both = out.stdout + out.stderr
    assert both.count("GPU available") == 1 and "💡" not in both and "srun" not in both and "LeafSpec" not in both
    assert any("no baseline record yet" in line and "when it finishes." in line for line in out.stdout.splitlines())

    again = _cli(*macros["args_no_hyphens"], *common, env={"WANDB_SWEEP_ID": "sweep1", "WANDB_RUN_ID": "agentrun2"})
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr[-3000:]
    facts, values = logged(next(tmp_path.rglob("run-agentrun2.wandb")))
    assert facts["id"] == "agentrun2" and values["objective"] == rec["metrics"]["acc"]["value"]
    assert len(list(R.iter_records(tmp_path))) == 1


# --------------------------------------------------------------------------------------------------
# perplexity


def test_perplexity_stays_exp_of_the_token_loss_where_softmax_then_log_overflows():
    """Why the LM task keeps its own metric (gfsa/zoo/tasks/lm.py): a confidently wrong token."""
    import torch.nn.functional as F
    from torchmetrics.text import Perplexity

    from gfsa.zoo.tasks.lm import TokenNLL

    logits = torch.zeros(1, 3, 11)
    logits[0, 0, 0] = 120.0  # the target of token 0 is 1: log-probability −120
    target = torch.tensor([[1, 2, 3]])
    ce = F.cross_entropy(logits[0], target[0], reduction="sum")
    ours = TokenNLL(exp=True)
    ours.update(ce, torch.tensor(3))
    assert ours.compute().item() == pytest.approx(math.exp(ce.item() / 3), rel=1e-9) and math.isfinite(ours.compute())
    assert math.isinf(Perplexity()(logits, target).item())
