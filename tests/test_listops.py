"""LRA ListOps (generated locally) and the LRA encoders (Efficient Attention, softmax) through the real run path."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAST, compose
from omegaconf import OmegaConf

import gfsa
from gfsa.nn.attention import GFSACoefficients
from gfsa.runner import results as R
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.backbones.efficient_attention import LRAEncoder
from gfsa.zoo.tasks import listops

TINY_GEN = {"num_train": 48, "num_val": 16, "num_test": 8, "min_length": 10, "max_length": 60, "max_depth": 10}
TINY = [
    "task=listops",
    *(f"task.generate.{k}={v}" for k, v in TINY_GEN.items()),
    "task.max_tokens=64",
    "task.batch_size=16",
]
SMALL = ["backbone.dim=16", "backbone.mlp_dim=32"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GFSA_CACHE_DIR", str(tmp_path / "cache"))


def evaluate(source: str) -> int:
    """An independent evaluator of LRA ListOps strings: a stack machine over the tokens, which also checks
    the grammar (every operator closed, 2+ arguments, digits only) and returns the value."""
    stack: list[list] = []
    result = None
    for tok in source.replace("(", " ").replace(")", " ").split():
        if tok in ("[MIN", "[MAX", "[MED", "[SM"):
            stack.append([tok])
        elif tok == "]":
            op, *args = stack.pop()
            assert len(args) >= 2, source
            ordered = sorted(args)
            mid = len(ordered) // 2
            value = {
                "[MIN": ordered[0],
                "[MAX": ordered[-1],
                "[MED": ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2,
                "[SM": sum(args) % 10,
            }[op]
            if stack:
                stack[-1].append(value)
            else:
                result = value
        else:
            assert tok.isdigit() and len(tok) == 1, tok
            assert stack, f"a bare digit outside an operator in {source}"
            stack[-1].append(int(tok))
    assert not stack and result is not None, source
    return result


def depth_and_args(source: str) -> tuple[int, int]:
    depth = best = most = 0
    counts: list[int] = []
    for tok in source.replace("(", " ").replace(")", " ").split():
        if tok.startswith("["):
            depth += 1
            best = max(best, depth)
            counts.append(0)
        elif tok == "]":
            depth -= 1
            most = max(most, counts.pop())
            if counts:
                counts[-1] += 1
        elif counts:
            counts[-1] += 1
    return best, most


def test_generation_is_deterministic_and_follows_the_grammar():
    gen = {**TINY_GEN, "max_depth": 4, "max_args": 5}
    data = listops.generate(seed=3, **gen)
    assert data == listops.generate(seed=3, **gen)
    assert data != listops.generate(seed=4, **gen)
    assert [len(data[s]) for s in listops.SPLITS] == [48, 16, 8]
    rows = [r for s in listops.SPLITS for r in data[s]]
    assert len({src for src, _ in rows}) == len(rows)  # no duplicates across splits
    for source, target in rows:
        assert evaluate(source) == target
        tokens = listops.tokenize(source)
        assert 10 < len(tokens) < 60  # LRA's length: digits + operators + closing brackets
        assert set(tokens) <= set(listops.VOCAB[2:])
        depth, args = depth_and_args(source)
        assert depth <= 3 and args <= 5  # operators only above the maximum depth (4: digits there)
    assert len({t for _, t in rows}) > 3  # several classes occur


def test_tokenization_is_lras():
    assert listops.tokenize("( ( ( [MAX 2 ) 9 ) ] )") == ["[MAX", "2", "9", "X"]
    assert listops.TOKEN_ID["<pad>"] == 0 and len(listops.VOCAB) == 17


def _task(**overrides):
    cfg = compose(TINY + [f"task.{k}={v}" for k, v in overrides.items()]).task
    task = listops.ListOpsTask(cfg)
    task.check()
    task.setup("fit")
    return task


def test_generated_tsvs_are_cached_and_read_back_through_data_dir(tmp_path):
    task = _task()
    files = task.split_files()
    assert sorted(f.name for f in files.values()) == ["basic_test.tsv", "basic_train.tsv", "basic_val.tsv"]
    header = files["train"].read_text().splitlines()[0]
    assert header == "Source\tTarget"
    before = {f: f.stat().st_mtime_ns for f in files.values()}
    assert _task().split_files() == files and {f: f.stat().st_mtime_ns for f in files.values()} == before
    from_dir = _task(data_dir=files["train"].parent)
    for split in ("train_set", "val_set"):
        a, b = getattr(task, split), getattr(from_dir, split)
        assert len(a) == len(b) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))
    batch = next(iter(task.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_malformed_tsv_and_missing_files_are_one_line_errors(tmp_path):
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n( [MAX 1 2 ] )\tnine\n")
    (tmp_path / "basic_val.tsv").write_text("Source\tTarget\n")
    with pytest.raises(ConfigError, match=r"basic_train.tsv line 2: expected"):
        _task(data_dir=tmp_path)
    with pytest.raises(
        ConfigError, match="does not exist: pass task.data_dir=<dir with basic_train.tsv, basic_val.tsv>"
    ):
        _task(data_dir=tmp_path / "missing")


@pytest.mark.parametrize("kind", ["efficient", "softmax"])
def test_lra_encoders_are_identical_at_init_when_patched(kind):
    """Default coefficients (w0=0, w1=1, wK=0): a patched encoder computes what the unpatched one does."""
    torch.manual_seed(0)
    model = LRAEncoder(17, 10, 40, kind=kind, dim=16, depth=3, num_heads=2, mlp_dim=32, dropout=0.0).eval()
    patched = gfsa.patch(copy.deepcopy(model), layers="all", K=3)
    assert gfsa.added_parameters(patched) == 3 * 2
    ids = torch.randint(2, 17, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 25:] = 0
    torch.testing.assert_close(patched(ids, mask), model(ids, mask), rtol=0, atol=1e-6)
    for m in patched.modules():  # the filter changes outputs once wK moves
        if isinstance(m, GFSACoefficients):
            m.wK.data.fill_(0.3)
    assert not torch.allclose(patched(ids, mask), model(ids, mask))
    # padding is invisible to the real tokens' outputs
    short = patched(ids[1:2, :25], mask[1:2, :25])
    torch.testing.assert_close(short, patched(ids[1:2], mask[1:2]), rtol=1e-5, atol=1e-5)


def test_efficient_attention_listops_runs_end_to_end_and_pairs_with_its_baseline(results_dir):
    gfsa_rec = run(
        compose([*FAST, *TINY, *SMALL, "backbone=efficient_attention", "gfsa.layers=all", "gfsa.wK=0.2"], results_dir)
    )
    assert gfsa_rec["variant"] == "gfsa" and gfsa_rec["gfsa"]["layers"] == [0, 1]
    assert gfsa_rec["gfsa"]["added_parameters"] == 2 * 2  # one wK per head (2) per layer (2)
    assert 0.0 <= gfsa_rec["metrics"]["acc"]["value"] <= 1.0
    base = run(compose([*FAST, *TINY, *SMALL, "backbone=efficient_attention", "gfsa.layers=none"], results_dir))
    assert base["variant"] == "baseline" and base["pair_key"] == gfsa_rec["pair_key"]
    assert R.load_record(gfsa_rec["run_dir"])["comparison"]["baseline_run"] == base["run_dir"]
    softmax = run(
        compose([*FAST, *TINY, *SMALL, "backbone=lra_transformer", "gfsa.layers=all", "gfsa.wK=0.2"], results_dir)
    )
    assert softmax["gfsa"]["added_parameters"] == 4
    assert softmax["config"]["task"] == gfsa_rec["config"]["task"]  # both encoders see the same task


def test_lra_backbones_reject_tasks_without_token_ids(results_dir):
    cfg = OmegaConf.to_container(compose([*FAST, "backbone=efficient_attention"], results_dir), resolve=True)
    with pytest.raises(ConfigError, match="reads token sequences: task digits has no vocab_size"):
        run(cfg)
