"""Code tasks (Devign defect detection, BigCloneBench clone detection) through the real run path.

Checkpoints are tiny random versions of RoBERTa/CodeBERT, PLBART and CodeT5 with tokenizers of
the real classes (byte-level BPE; PLBART's SentencePiece), saved with save_pretrained; data are
CodeXGLUE files (jsonl, pair lists). Encoder-decoders run with GFSA in every attention module,
cross-attention zero-padded to a square, as the official code does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST, compose
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from test_nlp import _check_record, _fails, check_table_composes

from gfsa.runner.train import run, run_job
from gfsa.zoo.demo import text as H

CODE_PRESETS = [f"code/defect_{m}" for m in ("roberta", "codebert", "plbart", "codet5_small", "codet5_base")] + [
    f"code/clone_{m}" for m in ("codet5_small", "codet5_base")
]
CKPT = {
    "roberta": "roberta",
    "codebert": "roberta",
    "plbart": "plbart",
    "codet5_small": "codet5",
    "codet5_base": "codet5",
}


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    texts = [" ".join(f.split()) for f in H.functions(120, 5)]
    ckpt = {k: H.build_checkpoint(k, root / "ckpt" / k, texts) for k in ("roberta", "plbart", "codet5")}
    return SimpleNamespace(ckpt=ckpt, devign=H.write_devign(root / "devign"), bcb=H.write_bigclonebench(root / "bcb"))


def _overrides(code, backbone: str, task: str, *extra: str, init: str = "random") -> list[str]:
    data = code.devign if task == "devign" else code.bcb
    return [
        f"backbone={backbone}",
        f"backbone.pretrained={code.ckpt[CKPT[backbone]]}",
        f"backbone.init={init}",
        f"task={task}",
        f"task.data_dir={data}",
        "task.max_length=48",
        "task.batch_size=4",
        "task.eval_batch_size=8",
        "task.num_workers=0",
        "seed=0",
        "gfsa.dropout_order=after",
        "gfsa.cross_attention=pad",
        *extra,
        *FAST,
    ]


def _added(backbone: str, layers: str) -> int:
    """heads × patched attention modules: encoder layers have one, decoder layers two (self + cross)."""
    if layers == "none":
        return 0
    return H.HEADS * (H.LAYERS if backbone in ("roberta", "codebert") else 3 * H.LAYERS)


# (task, backbone, gfsa.layers)
CASES = [
    ("devign", "roberta", "all"),
    ("devign", "codebert", "none"),
    ("devign", "plbart", "all"),
    ("devign", "codet5_small", "all"),
    ("devign", "codet5_base", "none"),
    ("bigclonebench", "codet5_small", "all"),
    ("bigclonebench", "codet5_base", "none"),
    ("bigclonebench", "roberta", "all"),
    ("bigclonebench", "plbart", "all"),
]


@pytest.mark.parametrize(("task", "backbone", "layers"), CASES, ids=[f"{t}-{b}" for t, b, _ in CASES])
def test_code_task_runs_end_to_end(code, results_dir, task, backbone, layers):
    init = "pretrained" if backbone in ("plbart", "codet5_small") else "random"  # saved weights load too
    rec = run(compose(_overrides(code, backbone, task, f"gfsa.layers={layers}", init=init), results_dir))
    metrics = {"acc"} if task == "devign" else {"precision", "recall", "f1"}
    # valid (selects the epoch) and test (the paper's number) are scored in the same validation pass
    metrics |= {f"test_{m}" for m in metrics}
    _check_record(rec, task, metrics, "up", _added(backbone, layers), losses=("loss", "test_loss"))
    assert rec["primary_metric"] == ("acc" if task == "devign" else "f1") and rec["selected_by"] == "best"


def test_code_gfsa_pairs_with_its_baseline(code, results_dir):
    cfg = compose(
        _overrides(code, "codet5_small", "devign", "gfsa.layers=all", "gfsa.K=3", "with_baseline=true"), results_dir
    )
    rec = run_job(cfg)
    cmp = rec["comparison"]
    assert cmp["metric"] == "acc" and cmp["improvement_pct"] is not None and cmp["baseline_run"] != rec["run_dir"]


@pytest.mark.parametrize(
    ("backbone", "task"),
    [("codet5_small", "devign"), ("codet5_small", "bigclonebench"), ("plbart", "devign"), ("roberta", "bigclonebench")],
)
def test_pretrained_weights_load_under_every_head(code, backbone, task):
    """Checkpoint weights land in the wrapped model whatever head class wraps them (key prefixes differ)."""
    import transformers

    from gfsa.runner.registry import resolve
    from gfsa.zoo.backbones.hf_models import build

    cfg = OmegaConf.to_container(compose(_overrides(code, backbone, task, init="pretrained")), resolve=True)
    t = resolve("task", cfg["task"]["type"])(OmegaConf.create(cfg["task"]))
    t.setup("fit")
    model = build(OmegaConf.create(cfg["backbone"]), t)
    saved = transformers.AutoModel.from_pretrained(cfg["backbone"]["pretrained"]).state_dict()
    got = model.net.state_dict()
    for key, value in saved.items():
        match = [k for k in got if k == key or k.endswith("." + key)]
        assert len(match) == 1 and torch.equal(got[match[0]], value), key


def test_encoder_decoder_classifies_at_the_last_eos(code):
    """The pair head reads the decoder state at each sequence's EOS, whatever the padding after it."""
    from gfsa.zoo.backbones import hf_models
    from gfsa.zoo.hub import load_tokenizer
    from gfsa.zoo.tasks.text import PadCollator

    net = __import__("transformers").AutoModel.from_pretrained(code.ckpt["codet5"])
    model = hf_models.PairClassifier(net, 2).eval()
    tok = load_tokenizer(str(code.ckpt["codet5"]))
    a, b = (torch.tensor(tok(s)["input_ids"]) for s in ("int f ( ) ;", "return len ; }"))
    short = PadCollator(tok.pad_token_id)([{"input_ids": (a, b)}])
    padded = PadCollator(tok.pad_token_id)([{"input_ids": (a, b)}, {"input_ids": (a, torch.cat([b, b[:-1], b]))}])
    with torch.no_grad():
        v1 = model.encode(short["input_ids"].flatten(0, 1), short["attention_mask"].flatten(0, 1))
        v2 = model.encode(padded["input_ids"][:1].flatten(0, 1), padded["attention_mask"][:1].flatten(0, 1))
        dec = net(input_ids=a[None], decoder_input_ids=net._shift_right(a[None])).last_hidden_state[0, -1]
    assert torch.allclose(v1, v2, atol=1e-5) and torch.allclose(v1[0], dec, atol=1e-5)


def test_code_metrics_match_sklearn():
    from gfsa.zoo.tasks.code import CloneTask, DefectTask

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(50, 2, generator=g), torch.randint(0, 2, (50,), generator=g)
    defect_task, clone_task = DefectTask(compose(["task=devign"]).task), CloneTask(compose(["task=bigclonebench"]).task)
    defect, clone = defect_task.metrics(), clone_task.metrics()
    for sl in (slice(0, 17), slice(17, 50)):
        defect.update(*defect_task.metric_inputs(logits[sl], y[sl]))
        clone.update(*clone_task.metric_inputs(logits[sl], y[sl]))
    pred = (logits.softmax(-1)[:, 1] > 0.5).numpy()
    assert float(defect.compute()["acc"]) == pytest.approx(accuracy_score(y, logits.argmax(-1)))
    got = {k: float(v) for k, v in clone.compute().items()}
    assert got == pytest.approx(
        {"precision": precision_score(y, pred), "recall": recall_score(y, pred), "f1": f1_score(y, pred)}
    )


def test_clone_validation_sample_is_fixed(code):
    from gfsa.zoo.tasks.code import CloneTask

    cfg = OmegaConf.to_container(compose(_overrides(code, "roberta", "bigclonebench")).task, resolve=True)
    tasks = [CloneTask(OmegaConf.create(cfg | {"val_fraction": 0.5})) for _ in range(2)]
    for t in tasks:
        t.setup("fit")
    (valid0, test0), (valid1, test1) = (t.val_sets for t in tasks)
    assert len(valid0) == 12 and torch.equal(valid0.pairs, valid1.pairs)  # half of the 24 validation pairs
    assert len(test0) == 12 and torch.equal(test0.pairs, test1.pairs)  # all 12 test pairs: never sampled


def test_ema_is_scored_per_evaluation_split(code, results_dir):
    """optim.ema_decay on a two-split task: the EMA weights get their own metrics per split (not one mix)."""
    import csv

    overrides = [o for o in _overrides(code, "roberta", "devign", "gfsa.layers=none") if o != "logger=none"]
    rec = run(compose([*overrides, "logger=csv", "+optim.ema_decay=0.9"], results_dir))
    with open(Path(rec["run_dir"]) / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"val/ema_acc", "val/ema_test_acc", "val/acc", "val/test_acc"} <= set(columns), columns


def test_code_eval_splits_select_on_the_first(code, results_dir):
    """task.eval_splits=[test] scores only test.jsonl (no test_ metrics); a bad split name is one line."""
    from gfsa.utils.errors import ConfigError

    rec = run(
        compose(_overrides(code, "roberta", "devign", "gfsa.layers=none", "task.eval_splits=[test]"), results_dir)
    )
    assert set(rec["metrics"]) == {"acc", "loss"}
    with pytest.raises(ConfigError, match=r"task.eval_splits=\['valid', 'dev'\]: use distinct names from valid, test"):
        run(compose(_overrides(code, "roberta", "devign", "task.eval_splits=[valid,dev]"), results_dir))
    with pytest.raises(ConfigError, match="use distinct names"):
        run(compose(_overrides(code, "roberta", "devign", "task.eval_splits=[test,test]"), results_dir))


# --------------------------------------------------------------------------------------------------
# bad input


def _corrupt(code, tmp_path, name: str, line: str, task: str):
    src = code.devign if task == "devign" else code.bcb
    d = tmp_path / task
    d.mkdir()
    for f in src.iterdir():
        (d / f.name).write_text(f.read_text())
    with open(d / name, "a") as f:
        f.write(line)
    return d


@pytest.mark.parametrize(
    ("task", "name", "line", "needles"),
    [
        ("devign", "valid.jsonl", '{"func": "int f(", "target": 1\n', ("valid.jsonl line 13", "not JSON")),
        ("devign", "train.jsonl", '{"func": "int f() {}", "idx": 5}\n', ("train.jsonl line 25", "lacks target")),
        (
            "devign",
            "train.jsonl",
            '{"func": "int f() {}", "idx": 5, "target": 2}\n',
            ("train.jsonl line 25", "target 2"),
        ),
        ("bigclonebench", "data.jsonl", '["func", "idx"]\n', ("data.jsonl line 17", "not a JSON object")),
        ("bigclonebench", "train.txt", "13988825 8660836 1\n", ("train.txt line 25", "idx1<TAB>idx2<TAB>label")),
    ],
    ids=["not-json", "no-field", "bad-target", "not-object", "bad-pair-line"],
)
def test_bad_code_files(code, results_dir, tmp_path, task, name, line, needles):
    d = _corrupt(code, tmp_path, name, line, task)
    cfg = compose([*_overrides(code, "roberta", task, "gfsa.layers=all"), f"task.data_dir={d}"], results_dir)
    _fails(cfg, *needles)


def test_code_data_dir_required(code, results_dir):
    cfg = compose([*_overrides(code, "codet5_small", "devign"), "task.data_dir=null"], results_dir)
    _fails(cfg, "task.data_dir is not set", "train.jsonl")


def test_encoder_decoder_eos_mismatch(code, results_dir, tmp_path):
    ckpt = tmp_path / "codet5"
    ckpt.mkdir()
    for f in code.ckpt["codet5"].iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(config | {"eos_token_id": 3}))
    cfg = compose([*_overrides(code, "codet5_small", "devign"), f"backbone.pretrained={ckpt}"], results_dir)
    _fails(cfg, "EOS id 3", "backbone.pretrained")


# --------------------------------------------------------------------------------------------------
# presets and paper-table cells compose


@pytest.mark.parametrize("preset", CODE_PRESETS)
def test_code_presets_compose(preset):
    cfg = OmegaConf.to_container(compose([f"preset={preset}"]), resolve=True)
    g, backbone = cfg["gfsa"], cfg["backbone"]["name"]
    assert (g["layers"], g["w0"], g["learn"], g["dropout_order"], g["cross_attention"]) == (
        "all",
        0.0,
        ["wK"],
        "after",
        "pad",
    )
    assert g["K"] == {"roberta": 4, "codebert": 4, "plbart": 2}.get(backbone, 3) and cfg["seed"] == 1234
    assert cfg["optim"]["warmup_steps"] == 1000 and cfg["trainer"]["gradient_clip_val"] == 1.0
    if preset.startswith("code/defect_"):
        assert cfg["task"]["name"] == "devign" and cfg["task"]["max_length"] == 512 and cfg["optim"]["lr"] == 2e-5
        assert cfg["task"]["global_batch_size"] == 32 and cfg["trainer"]["max_epochs"] == 10
    else:
        assert (
            cfg["task"]["name"] == "bigclonebench" and cfg["task"]["max_length"] == 400 and cfg["optim"]["lr"] == 5e-5
        )
        assert cfg["task"]["global_batch_size"] == {"codet5_small": 25, "codet5_base": 10}[backbone]


@pytest.mark.parametrize("name", ["code_defect", "code_clone"])
def test_code_tables_compose(name):
    check_table_composes(name)
