"""torch.compile of patched models: no graph break in GFSA's code (``torch._dynamo.explain``), so
``fullgraph=True`` compiles in eval and in training, with outputs and gradients equal to eager.

The timm ViT and the HF BERT and Llama run through every path the library has on CPU: the explicit
blocks (``impl=auto`` at these lengths), SDPA's flash kernel (``fused``) and a padding mask. Backends:
``aot_eager`` (dynamo and autograd tracing, no code generation) for every case, ``inductor`` (real
generated kernels) for the ViT in eval mode.
"""

from __future__ import annotations

import pytest
import timm
import torch
import transformers as tf

import gfsa

pytestmark = pytest.mark.slow


def _coefficients(model) -> None:
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "GFSACoefficients":
                m.wK.fill_(0.3)
                m.w0.fill_(0.05)


def vit(impl: str):
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10)
    gfsa.patch(m, layers="all", impl=impl, learn=("w0", "wK"))
    _coefficients(m)
    return m, (torch.randn(2, 3, 32, 32),), {}


def bert(impl: str):
    torch.manual_seed(0)
    cfg = tf.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    m = tf.BertModel(cfg)
    gfsa.patch(m, layers="all", impl=impl)
    _coefficients(m)
    ids = torch.randint(3, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return m, (), {"input_ids": ids, "attention_mask": mask}


def llama(impl: str):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    m = tf.LlamaModel(cfg)
    gfsa.patch(m, layers="all", impl=impl)
    _coefficients(m)
    return m, (), {"input_ids": torch.randint(3, 100, (2, 10)), "use_cache": False}


def _output(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


CASES = [(build, impl) for build in (vit, bert, llama) for impl in ("auto", "fused")]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("build, impl", CASES, ids=[f"{b.__name__}-{i}" for b, i in CASES])
def test_no_graph_break_and_fullgraph_equals_eager(build, impl, train):
    model, args, kwargs = build(impl)
    model.train(train)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*args, **kwargs)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(train):
        eager, got = _output(model(*args, **kwargs)), _output(compiled(*args, **kwargs))
    assert (eager - got).abs().max() <= 1e-5
    if train:  # the coefficients' gradients through the compiled graph are eager's
        wK = [m.wK for m in model.modules() if type(m).__name__ == "GFSACoefficients"]
        g_eager = torch.autograd.grad(eager.square().sum(), wK)
        g_compiled = torch.autograd.grad(got.square().sum(), wK)
        for a, b in zip(g_eager, g_compiled, strict=True):
            assert (a - b).abs().max() <= 1e-5


def test_inductor_compiles_the_patched_vit():
    model, args, _ = vit("auto")
    model.eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # inductor: generated kernels
    with torch.no_grad():
        assert (compiled(*args) - model(*args)).abs().max() <= 1e-5


def test_a_run_with_run_compile_trains_and_records_as_eager(tmp_path):
    """run.compile=true: the same run directory (how a run executes, not what it computes) and the
    eager run's metrics up to the compiler's rounding."""
    from conftest import FAST, compose

    from gfsa.runner.train import run

    args = [*FAST, "gfsa.layers=all", "gfsa.wK=0.2", "with_baseline=false"]
    eager = run(compose(args, tmp_path / "eager"))
    torch._dynamo.reset()
    compiled = run(compose([*args, "run.compile=true"], tmp_path / "compiled"))
    assert compiled["config"]["run"]["compile"] is True
    assert compiled["run_dir"].replace("compiled", "eager") == eager["run_dir"]
    for name, entry in eager["metrics"].items():
        assert compiled["metrics"][name]["value"] == pytest.approx(entry["value"], abs=1e-4), name
