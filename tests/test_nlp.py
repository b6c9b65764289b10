"""GLUE and causal language modelling through the real run path (gfsa.runner.train.run / run_job).

Checkpoints are tiny random versions of BERT, ALBERT, RoBERTa and GPT-2 with tokenizers of the
real classes, saved with save_pretrained; data are files in the official layouts (GLUE TSVs, PTB
and WikiText text files). Metrics are checked against scikit-learn/scipy, also when their states
are reduced across two gloo processes, and every preset and paper-table cell must compose.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, FAST, PYTHON, REPO, compose
from omegaconf import OmegaConf
from scipy import special, stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from gfsa.ops.tables import EXPERIMENTS_DIR, load_table
from gfsa.runner import results as R
from gfsa.runner.registry import resolve
from gfsa.runner.train import run, run_job
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo import text as H

NLP_PRESETS = [f"glue/{m}" for m in ("bert_base", "albert_base", "roberta_base")] + [
    f"lm/gpt2_{d}" for d in ("ptb", "wikitext2", "wikitext103")
]
NLP_TABLES = ("glue", "causal_lm")


@pytest.fixture(scope="module")
def nlp(tmp_path_factory):
    root = tmp_path_factory.mktemp("nlp")
    texts = H.sentences(300)
    ckpt = {k: H.build_checkpoint(k, root / "ckpt" / k, texts) for k in ("bert", "albert", "roberta", "gpt2")}
    glue = H.write_glue(root / "glue")
    ptb = H.write_ptb(root / "ptb")
    wikis = {
        "wikitext2": H.write_wikitext(root / "wikitext2"),
        "wikitext103": H.write_wikitext(root / "wikitext103", "tokens"),
    }
    return SimpleNamespace(ckpt=ckpt, glue=glue, ptb=ptb, **wikis)


def _overrides(nlp, backbone: str, task: str, data_dir, *extra: str, init: str = "random") -> list[str]:
    ckpt = nlp.ckpt["roberta" if backbone == "codebert" else backbone]
    length = "task.block_size=32" if not task.startswith("glue/") else "task.max_length=48"
    return [
        f"backbone={backbone}",
        f"backbone.pretrained={ckpt}",
        f"backbone.init={init}",
        f"task={task}",
        f"task.data_dir={data_dir}",
        length,
        "task.batch_size=4",
        "task.eval_batch_size=8",
        "task.num_workers=0",
        "seed=0",
        *extra,
        *FAST,
    ]


def _check_record(
    rec: dict, task: str, metrics: set[str], direction: str, added: int, losses: tuple[str, ...] = ("loss",)
) -> None:
    assert rec["status"] == "finished" and rec["task"] == task
    assert set(rec["metrics"]) == metrics | set(losses)
    for name in metrics:
        assert rec["metrics"][name]["direction"] == direction and math.isfinite(rec["metrics"][name]["value"])
    assert all(rec["metrics"][name]["direction"] == "down" for name in losses)
    assert rec["gfsa"]["added_parameters"] == added
    assert R.load_record(rec["run_dir"])["run_id"] == rec["run_id"]


# (task, backbone, gfsa.layers, metrics); added parameters = heads × patched layers (ALBERT: one shared layer)
GLUE_CASES = [
    ("cola", "bert", "all", {"mcc"}),
    ("sst2", "albert", "all", {"acc"}),
    ("mrpc", "roberta", "selected", {"f1", "acc"}),
    ("qqp", "bert", "none", {"f1", "acc"}),
    ("stsb", "roberta", "all", {"pearson", "spearman"}),
    ("mnli", "bert", "all", {"acc_m", "acc_mm"}),
    ("qnli", "albert", "none", {"acc"}),
    ("rte", "roberta", "all", {"acc"}),
]


@pytest.mark.parametrize(("task", "backbone", "layers", "metrics"), GLUE_CASES, ids=[c[0] for c in GLUE_CASES])
def test_glue_task_runs_end_to_end(nlp, results_dir, task, backbone, layers, metrics):
    init = "pretrained" if backbone == "albert" else "random"  # the saved weights load too
    rec = run(
        compose(_overrides(nlp, backbone, f"glue/{task}", nlp.glue, f"gfsa.layers={layers}", init=init), results_dir)
    )
    patched = {"none": 0, "all": H.LAYERS, "selected": H.LAYERS // 2}[layers]
    added = H.HEADS * (min(patched, 1) if backbone == "albert" else patched)
    _check_record(rec, task, metrics, "up", added)
    assert rec["primary_metric"] == {"mrpc": "f1", "qqp": "f1", "stsb": "spearman", "mnli": "acc_m", "cola": "mcc"}.get(
        task, "acc"
    )
    assert len(rec["gfsa"]["layers"]) == patched


def test_glue_gfsa_pairs_with_its_baseline(nlp, results_dir):
    """run_job with with_baseline=true (what run.py does for a single run) trains the baseline first."""
    cfg = compose(
        _overrides(
            nlp,
            "bert",
            "glue/sst2",
            nlp.glue,
            "gfsa.layers=all",
            "gfsa.K=4",
            "gfsa.w0=-0.01",
            "gfsa.dropout_order=before",
            "with_baseline=true",
        ),
        results_dir,
    )
    rec = run_job(cfg)
    base = R.load_record(R.run_dir(R.baseline_config(OmegaConf.to_container(cfg, resolve=True))))
    assert base["variant"] == "baseline" and base["gfsa"]["added_parameters"] == 0
    cmp = rec["comparison"]
    assert cmp["baseline_run"] == base["run_dir"] and cmp["metric"] == "acc"
    want, _ = R.improvement(rec["metrics"]["acc"]["value"], base["metrics"]["acc"]["value"], "up")
    assert cmp["improvement_pct"] == pytest.approx(want)
    assert rec["gfsa"]["added_parameters"] == H.HEADS * H.LAYERS


LM_CASES = [("ptb", "ptb", "all"), ("wikitext2", "wikitext2", "selected"), ("wikitext103", "wikitext103", "none")]


@pytest.mark.parametrize(("task", "data", "layers"), LM_CASES, ids=[c[0] for c in LM_CASES])
def test_causal_lm_runs_end_to_end(nlp, results_dir, task, data, layers):
    extra = [f"gfsa.layers={layers}", "gfsa.K=7", "gfsa.dropout_order=before"]
    cfg = compose(_overrides(nlp, "gpt2", task, getattr(nlp, data), *extra, "with_baseline=true"), results_dir)
    rec = run_job(cfg)
    patched = {"none": 0, "all": H.LAYERS, "selected": H.LAYERS // 2}[layers]
    _check_record(rec, task, {"perplexity"}, "down", H.HEADS * patched)
    m = rec["metrics"]
    assert m["perplexity"]["value"] == pytest.approx(math.exp(m["loss"]["value"]), rel=1e-6)
    if layers != "none":  # paired with the baseline that run_job trained first; perplexity is never 0
        assert rec["comparison"]["improvement_pct"] is not None


def _task(nlp, task: str, data_dir, **extra):
    cfg = compose(_overrides(nlp, "gpt2" if not task.startswith("glue/") else "bert", task, data_dir))
    t = OmegaConf.to_container(cfg.task, resolve=True) | extra
    return resolve("task", t["type"])(OmegaConf.create(t))


def test_lm_blocks_follow_run_clm(nlp):
    """Tokens of every line, concatenated, cut into blocks; PTB lines stripped, WikiText lines kept."""
    for name, data, fname in (("ptb", nlp.ptb, "ptb.train.txt"), ("wikitext2", nlp.wikitext2, "wiki.train.raw")):
        task = _task(nlp, name, data)
        task.setup("fit")
        lines = (data / fname).read_text().splitlines(keepends=True)
        lines = [ln.strip() for ln in lines] if name == "ptb" else [ln if ln.strip() else "" for ln in lines]
        ids = [i for ln in lines for i in task.tokenizer(ln)["input_ids"]]
        n = len(ids) // 32
        assert task.train_set.blocks.shape == (n, 32)
        assert task.train_set.blocks.flatten().tolist() == ids[: n * 32]
        assert task.train_set[0]["input_ids"].dtype == torch.long


def test_glue_tsv_layouts_are_read_column_by_column(nlp, tmp_path):
    """Each task's TSV gives the sentence columns and the hub's label ids (no quoting, as GLUE's processors)."""
    for task, folder in H.GLUE_FOLDERS.items():
        t = _task(nlp, f"glue/{task}", nlp.glue)
        _, rows = H.glue_rows(folder, "train", 24, seed=10 * list(H.GLUE_FOLDERS).index(task))
        first, second, labels = t.read_tsv(f"{folder}/train.tsv")
        cols = {
            "cola": (3, None, 1),
            "sst2": (0, None, 1),
            "mrpc": (3, 4, 0),
            "qqp": (3, 4, 5),
            "stsb": (7, 8, 9),
            "mnli": (8, 9, -1),
            "qnli": (1, 2, 3),
            "rte": (1, 2, 3),
        }[task]
        assert first == [str(r[cols[0]]) for r in rows]
        assert second == (None if cols[1] is None else [str(r[cols[1]]) for r in rows])
        names = {"mnli": H.MNLI_LABELS, "qnli": H.NLI_LABELS, "rte": H.NLI_LABELS}.get(task)
        expect = [
            float(r[cols[2]]) if task == "stsb" else names.index(r[cols[2]]) if names else int(r[cols[2]]) for r in rows
        ]
        assert labels == expect
    # A sentence with an unbalanced quote stays one field; the task's own folder works as data_dir too.
    d = tmp_path / "SST-2"
    H.write_tsv(d / "train.tsv", [['he said " hi', 1], ["ok", 0]], ["sentence", "label"])
    shutil.copy(nlp.glue / "SST-2" / "dev.tsv", d / "dev.tsv")
    t = _task(nlp, "glue/sst2", d)
    t.check()
    assert t.read_tsv("train.tsv") == (['he said " hi', "ok"], None, [1, 0])


def test_mnli_scores_both_dev_sets(nlp):
    task = _task(nlp, "glue/mnli", nlp.glue)
    task.setup("fit")
    labels = task.val_set.labels
    assert labels.shape == (24, 2) and labels[:12, 1].eq(0).all() and labels[12:, 1].eq(1).all()


# --------------------------------------------------------------------------------------------------
# metrics against scikit-learn / scipy, in one process and reduced across two


def _glue_inputs(task: str, n: int = 40):
    g = torch.Generator().manual_seed(0)
    if task == "stsb":
        return torch.randn(n, 1, generator=g), torch.rand(n, generator=g) * 5
    k = 3 if task == "mnli" else 2
    logits, y = torch.randn(n, k, generator=g), torch.randint(0, k, (n,), generator=g)
    return logits, torch.stack([y, torch.arange(n) % 2], 1) if task == "mnli" else y


def _reference(task: str, logits, labels) -> dict:
    if task == "stsb":
        p, y = logits.squeeze(-1).numpy(), labels.numpy()
        return {"pearson": stats.pearsonr(p, y)[0], "spearman": stats.spearmanr(p, y)[0]}
    pred = logits.argmax(-1).numpy()
    if task == "mnli":
        y, s = labels[:, 0].numpy(), labels[:, 1].numpy()
        return {"acc_m": accuracy_score(y[s == 0], pred[s == 0]), "acc_mm": accuracy_score(y[s == 1], pred[s == 1])}
    y = labels.numpy()
    out = {"acc": accuracy_score(y, pred), "f1": f1_score(y, pred), "mcc": matthews_corrcoef(y, pred)}
    return {k: out[k] for k in {"cola": ["mcc"], "mrpc": ["f1", "acc"], "qqp": ["f1", "acc"]}.get(task, ["acc"])}


def _lm_inputs():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(6, 9, 11, generator=g), torch.randint(0, 11, (6, 9), generator=g)
    labels[0, 5:] = -100  # ignored positions (transformers' convention)
    return logits, labels


def _lm_reference(logits, labels) -> dict:
    logp = special.log_softmax(logits[:, :-1].double().numpy(), axis=-1)
    y = labels[:, 1:].numpy()
    keep = y != -100
    nll = -np.take_along_axis(logp, np.where(keep, y, 0)[..., None], -1)[..., 0][keep]
    return {"loss": nll.mean(), "perplexity": math.exp(nll.mean())}


@functools.cache
def _task_cfg(option: str):
    """A task's config as its YAML gives it (tasks read every key from there)."""
    return compose([option]).task


def _glue_metrics(task: str, logits, labels, world: int = 1, rank: int = 0) -> dict:
    from gfsa.zoo.tasks.glue import GlueTask

    t = GlueTask(_task_cfg(f"task=glue/{task}"))
    m = t.metrics()
    for chunk in range(rank, 4, world):  # several batches, every world-th on this rank
        sl = slice(chunk * len(labels) // 4, (chunk + 1) * len(labels) // 4)
        m.update(*t.metric_inputs(logits[sl], labels[sl]))
    return {k: float(v) for k, v in m.compute().items()}


def _lm_metrics(logits, labels, world: int = 1, rank: int = 0) -> dict:
    from gfsa.zoo.recipes.lm import token_nll
    from gfsa.zoo.tasks.lm import CausalLMTask

    m = CausalLMTask(_task_cfg("task=ptb")).metrics()
    for i in range(rank, len(labels), world):  # batches of one block
        m.update(*token_nll(logits[i : i + 1], labels[i : i + 1]))
    return {k: float(v) for k, v in m.compute().items()}


def test_glue_and_lm_metrics_match_sklearn_scipy():
    for task in H.GLUE_FOLDERS:
        got, want = _glue_metrics(task, *_glue_inputs(task)), _reference(task, *_glue_inputs(task))
        assert got == pytest.approx(want, abs=1e-5), task
    assert _lm_metrics(*_lm_inputs()) == pytest.approx(_lm_reference(*_lm_inputs()), rel=1e-6)


def _ddp_rank(rank: int, world: int, port: int, out: str, before_teardown=None) -> None:
    """One gloo rank: metrics updated with this rank's batches, then computed (states all-reduced)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        got = {t: _glue_metrics(t, *_glue_inputs(t), world, rank) for t in H.GLUE_FOLDERS}
        got["lm"] = _lm_metrics(*_lm_inputs(), world, rank)
        Path(out, f"{rank}.json").write_text(json.dumps(got))
        dist.barrier()
        if before_teardown is not None:  # rank 0 hosts the TCP store: it must outlive the other rank
            before_teardown()
    finally:
        dist.destroy_process_group()


def test_metrics_reduce_across_processes(tmp_path):
    """Two gloo ranks (this process and a spawned one), each with half the batches, get full-data values."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    other = multiprocessing.get_context("spawn").Process(target=_ddp_rank, args=(1, 2, port, str(tmp_path)))
    other.start()
    try:
        _ddp_rank(0, 2, port, str(tmp_path), before_teardown=lambda: other.join(timeout=300))
    finally:
        if other.is_alive():
            other.kill()
    assert other.exitcode == 0
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        for task in H.GLUE_FOLDERS:
            assert got[task] == pytest.approx(_reference(task, *_glue_inputs(task)), abs=1e-5), (rank, task)
        assert got["lm"] == pytest.approx(_lm_reference(*_lm_inputs()), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# bad input: one-line ConfigError naming the file or option, nothing left behind


def _fails(cfg, *needles: str) -> str:
    """``run(cfg)`` raises a one-line ConfigError containing ``needles`` and writes nothing."""
    with pytest.raises(ConfigError) as e:
        run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    assert not any(Path(cfg.paths.results_dir).iterdir()), "a failed run left files behind"
    return msg


def test_glue_folder_missing_a_split(nlp, results_dir, tmp_path):
    glue = tmp_path / "glue"
    shutil.copytree(nlp.glue / "CoLA", glue / "CoLA")
    (glue / "CoLA" / "dev.tsv").unlink()
    _fails(
        compose(_overrides(nlp, "bert", "glue/cola", glue, "gfsa.layers=all"), results_dir),
        "CoLA/dev.tsv",
        "task.data_dir",
    )


def test_glue_row_with_missing_fields(nlp, results_dir, tmp_path):
    glue = tmp_path / "glue"
    shutil.copytree(nlp.glue / "RTE", glue / "RTE")
    with open(glue / "RTE" / "train.tsv", "a") as f:
        f.write("99\tonly one sentence\n")
    _fails(compose(_overrides(nlp, "roberta", "glue/rte", glue), results_dir), "RTE/train.tsv line 26", "fields")


def test_qqp_skips_rows_with_missing_fields_and_counts_them(nlp, tmp_path):
    """The official QQP TSVs hold a few short rows; transformers' processor skips them, and so does the suite."""
    from gfsa.zoo.tasks.glue import GlueTask

    glue = tmp_path / "glue"
    shutil.copytree(nlp.glue / "QQP", glue / "QQP")
    clean = GlueTask(compose(_overrides(nlp, "bert", "glue/qqp", glue)).task)
    first, second, labels = clean.read_tsv("QQP/train.tsv")
    with open(glue / "QQP" / "train.tsv", "a") as f:
        f.write("900\t901\t902\ta question without its pair\n")
    with pytest.warns(UserWarning, match=r"QQP/train.tsv: skipped 1 rows with missing fields"):
        assert clean.read_tsv("QQP/train.tsv") == (first, second, labels)


def test_unknown_hub_name_offline(nlp, results_dir):
    cfg = compose(
        [*_overrides(nlp, "bert", "glue/cola", nlp.glue), "backbone.pretrained=gfsa-tests/no-such-model"], results_dir
    )
    _fails(cfg, "backbone.pretrained=gfsa-tests/no-such-model", "local dir")


def test_hub_datasets_offline_name_data_dir(nlp, results_dir):
    _fails(compose(_overrides(nlp, "bert", "glue/cola", "null"), results_dir), "nyu-mll/glue", "task.data_dir=")
    _fails(compose(_overrides(nlp, "gpt2", "ptb", "null"), results_dir), "ptb_text_only", "task.data_dir=")


def test_script_only_hub_dataset_names_data_dir(nlp, results_dir, tmp_path):
    """datasets >= 4 refuses loading scripts (PTB's hub dataset is one) with a RuntimeError: still one line."""
    script = tmp_path / "ptb_text_only"
    script.mkdir()
    (script / "ptb_text_only.py").write_text("import datasets\n")
    cfg = compose([*_overrides(nlp, "gpt2", "ptb", "null"), f"task.hub.path={script}"], results_dir)
    _fails(cfg, "RuntimeError", "scripts are no longer supported", "task.data_dir=<folder with ptb.train.txt>")


def test_tokenizer_model_mismatch(nlp, results_dir):
    # RoBERTa's BPE tokenizer holds more tokens than this BERT's embeddings.
    big = compose(
        [*_overrides(nlp, "bert", "glue/sst2", nlp.glue), f"task.tokenizer={nlp.ckpt['roberta']}"], results_dir
    )
    _fails(big, "tokens", "backbone.pretrained")
    # GPT-2 has no pad token: sentence batches cannot be padded.
    _fails(compose(_overrides(nlp, "gpt2", "glue/sst2", nlp.glue), results_dir), "no pad token")
    # A block longer than GPT-2's positions.
    _fails(
        compose([*_overrides(nlp, "gpt2", "ptb", nlp.ptb), "task.block_size=128"], results_dir), "task.block_size=128"
    )


def test_run_py_reports_bad_input_in_one_line(nlp, results_dir, tmp_path):
    glue = tmp_path / "glue"
    shutil.copytree(nlp.glue / "CoLA", glue / "CoLA")
    (glue / "CoLA" / "train.tsv").unlink()
    args = _overrides(nlp, "bert", "glue/cola", glue, f"paths.results_dir={results_dir}")
    proc = subprocess.run([PYTHON, "run.py", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CoLA/train.tsv" in lines[0], proc.stderr[-2000:]
    assert not any(results_dir.iterdir())


# --------------------------------------------------------------------------------------------------
# presets and paper-table cells compose


@pytest.mark.parametrize("preset", NLP_PRESETS)
def test_nlp_presets_compose(preset):
    cfg = OmegaConf.to_container(compose([f"preset={preset}"]), resolve=True)
    g = cfg["gfsa"]
    assert g["layers"] == "all" and g["learn"] == ["wK"] and g["dropout_order"] == "before" and cfg["seed"] == 2023
    assert cfg["backbone"]["type"] == "hf" and cfg["task"]["tokenizer"] == cfg["backbone"]["pretrained"]
    if preset.startswith("glue/"):
        want = {"bert_base": (4, -0.01), "albert_base": (10, 0.05), "roberta_base": (6, -0.05)}[preset[5:]]
        assert (g["K"], g["w0"]) == want and cfg["optim"]["lr"] == 2e-5 and cfg["trainer"]["max_epochs"] == 5
        assert cfg["task"]["max_length"] == 128 and cfg["task"]["global_batch_size"] == 32
    else:
        want = {"ptb": (7, 15), "wikitext2": (9, 10), "wikitext103": (3, 4)}[preset[len("lm/gpt2_") :]]
        assert (g["K"], cfg["trainer"]["max_epochs"]) == want and g["w0"] == 0.0 and cfg["optim"]["lr"] == 5e-5
        assert cfg["task"]["block_size"] == 1024 and cfg["task"]["global_batch_size"] == 4


def check_table_composes(name: str) -> None:
    """Every cell composes to a run whose task reports the cell's metric and whose layers fit the variant."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    table = load_table(EXPERIMENTS_DIR / f"{name}.yaml")
    assert table.cells
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):  # once: Hydra's start-up is most of the cost
        seen: dict[tuple, dict] = {}  # MNLI's two columns share one run
        for cell in table.cells:
            for overrides in cell.runs():
                key = tuple(overrides)
                if key not in seen:
                    seen[key] = OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
                cfg = seen[key]
                task = resolve("task", cfg["task"]["type"])(OmegaConf.create(cfg["task"]))
                assert task.directions.get(cell.metric) == table.direction, cell.id
                layers = {"baseline": "none", "gfsa_even": "selected"}.get(cell.variant, "all")
                assert cfg["gfsa"]["layers"] == layers, cell.id
                assert cell.paper is not None and cfg["seed"] == cell.seeds[0]


@pytest.mark.parametrize("name", NLP_TABLES)
def test_nlp_tables_compose(name):
    check_table_composes(name)
