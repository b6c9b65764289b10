"""``gfsa demo-data DIR``: tiny data sets and checkpoints in the real on-disk formats of every domain
(written by :mod:`gfsa.zoo.demo`), and one runnable ``gfsa run`` command per data set: tiny models, a few
CPU batches, a baseline and a GFSA run compared, all offline. The commands are the documented ones
(README, docs/) with the demo's paths and sizes; the tests run them."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gfsa.utils.errors import fail
from gfsa.utils.files import unwritable

# A few CPU batches of one epoch, CSV logs: a run takes seconds.
QUICK = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.accelerator=cpu",
    "logger=csv",
    "task.num_workers=0",
)
TINY_VIT = ("backbone.depth=2", "+backbone.kwargs.patch_size=8", "+backbone.kwargs.embed_dim=32")
TINY_VIT += ("+backbone.kwargs.num_heads=2", "task.image_size=32")
TINY_GRAPHORMER = ("backbone.num_layers=2", "backbone.hidden_dim=16", "backbone.ffn_dim=16", "backbone.num_heads=4")
TINY_GRAPHORMER += ("backbone.multi_hop_max_dist=5",)
TINY_GPS = ("backbone.channels=16", "backbone.pe_dim=4", "backbone.num_layers=2", "backbone.num_heads=2")
TINY_ASR = ("backbone.d_model=32", "backbone.encoder_layers=2", "backbone.decoder_layers=1")
TINY_ASR += ("backbone.attention_heads=4", "backbone.ffn_dim=64", "backbone.conv_channels=32")
TINY_ASR += ("backbone.max_source_positions=512", "backbone.max_target_positions=128")
TINY_LISTOPS = ("task.generate.num_train=48", "task.generate.num_val=16", "task.generate.num_test=8")
TINY_LISTOPS += ("task.generate.min_length=10", "task.generate.max_length=60", "task.max_tokens=64")


@dataclass(frozen=True)
class Example:
    """One runnable command: what it shows and its overrides (the demo's paths included)."""

    domain: str
    title: str
    overrides: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(["gfsa", "run", *self.overrides])


Examples = list[tuple[str, tuple[str, ...]]]  # (what it shows, overrides)


@dataclass(frozen=True)
class Domain:
    name: str
    extra: str | None  # the pyproject extra its tasks need
    modules: tuple[str, ...]  # what must be importable to write and run it
    write: Callable[[Path], Examples]  # writes the domain's data under the demo folder


def _vision(root: Path) -> Examples:
    from gfsa.zoo.demo.vision import write_imagefolder
    from gfsa.zoo.tasks.imagenet import read_class_list

    data = write_imagefolder(root / "imagenet", read_class_list("imagenet100"), n_train=2, n_val=1)
    common = (f"task.data_dir={data}", *TINY_VIT, "task.batch_size=8", "gfsa.layers=all")
    return [
        (
            "DeiT (2 blocks, 32-px images) on the ImageNet-100 classes of an ImageFolder",
            ("backbone=deit", "task=imagenet100", *common),
        ),
        ("the same tree as a full ImageNet (every class folder)", ("backbone=deit", "task=imagenet", *common)),
    ]


def _glue(root: Path) -> Examples:
    from gfsa.zoo.demo import text

    bert = text.build_checkpoint("bert", root / "checkpoints" / "bert", text.sentences(300))
    glue = text.write_glue(root / "glue")
    common = (f"backbone.pretrained={bert}", f"task.data_dir={glue}", "task.max_length=48", "task.batch_size=8")
    return [
        (
            f"BERT (tiny checkpoint) on GLUE {task}; any of {', '.join(text.GLUE_FOLDERS)}",
            ("backbone=bert", f"task=glue/{task}", *common, "gfsa.layers=all"),
        )
        for task in ("cola", "rte")
    ]


def _lm(root: Path) -> Examples:
    from gfsa.zoo.demo import text

    gpt2 = text.build_checkpoint("gpt2", root / "checkpoints" / "gpt2", text.sentences(300))
    data = {
        "ptb": text.write_ptb(root / "ptb"),
        "wikitext2": text.write_wikitext(root / "wikitext2"),
        "wikitext103": text.write_wikitext(root / "wikitext103", "tokens"),
    }
    return [
        (
            f"GPT-2 (tiny checkpoint), GFSA_even, on {task} files",
            (
                "backbone=gpt2",
                f"backbone.pretrained={gpt2}",
                f"task={task}",
                f"task.data_dir={path}",
                "task.block_size=32",
                "gfsa.layers=selected",
            ),
        )
        for task, path in data.items()
    ]


def _code(root: Path) -> Examples:
    from gfsa.zoo.demo import text

    functions = [" ".join(f.split()) for f in text.functions(120, 5)]
    codebert = text.build_checkpoint("codebert", root / "checkpoints" / "codebert", functions)
    codet5 = text.build_checkpoint("codet5", root / "checkpoints" / "codet5", functions)
    devign = text.write_devign(root / "devign")
    bcb = text.write_bigclonebench(root / "bigclonebench")
    common = ("task.max_length=48", "task.batch_size=4", "gfsa.layers=all")
    return [
        (
            "CodeBERT (tiny checkpoint) on Devign defect detection (CodeXGLUE jsonl)",
            ("backbone=codebert", f"backbone.pretrained={codebert}", "task=devign", f"task.data_dir={devign}", *common),
        ),
        (
            "CodeT5 (tiny checkpoint) on BigCloneBench clone detection",
            (
                "backbone=codet5_small",
                f"backbone.pretrained={codet5}",
                "task=bigclonebench",
                f"task.data_dir={bcb}",
                *common,
            ),
        ),
    ]


def _graph(root: Path) -> Examples:
    from gfsa.zoo.demo import graph

    zinc = graph.write_zinc(root / "zinc")
    lrgb = graph.write_peptides(root / "lrgb", "peptides-func")
    graph.write_peptides(lrgb, "peptides-struct", seed=1)
    ogb = graph.write_pcqm(root / "ogb", bad=False)
    common = ("task.download=false", "task.batch_size=8", "gfsa.layers=all")
    return [
        (
            "Graphormer-slim (2 layers) on ZINC (torch_geometric's raw files)",
            ("backbone=graphormer_slim", "task=zinc", f"task.data_dir={zinc}", *TINY_GRAPHORMER, *common),
        ),
        (
            "GPS (2 layers) on LRGB Peptides-func",
            ("backbone=gps", "task=peptides_func", f"task.data_dir={lrgb}", *TINY_GPS, *common),
        ),
        (
            "GPS on LRGB Peptides-struct",
            ("backbone=gps", "task=peptides_struct", f"task.data_dir={lrgb}", *TINY_GPS, *common),
        ),
        (
            "Graphormer on PCQM4Mv2 (OGB's SMILES CSV, read with RDKit)",
            ("backbone=graphormer_slim", "task=pcqm4mv2", f"task.data_dir={ogb}", *TINY_GRAPHORMER, *common),
        ),
    ]


def _speech(root: Path) -> Examples:
    from gfsa.zoo.demo.speech import SPLITS, write_librispeech

    splits = {**SPLITS, "train-clean-360": 4, "train-other-500": 4}  # librispeech960 reads these too
    data = write_librispeech(root / "LibriSpeech", splits)
    common = (f"task.data_dir={data}", "task.tokenizer=char", *TINY_ASR, "task.batch_size=4")
    common += ("task.eval_batch_size=3", "task.beam_size=2", "task.max_decode_ratio=0.5", "gfsa.layers=all")
    return [
        (
            "an ASR Transformer (2 encoder layers) on a LibriSpeech tree of FLAC files",
            ("backbone=asr_transformer", "task=librispeech100", *common),
        ),
        ("the same on the 960 h split set", ("backbone=asr_transformer", "task=librispeech960", *common)),
    ]


def _listops(root: Path) -> Examples:
    return [
        (
            "linear-time GFSA (Efficient Attention) on ListOps, generated on first use",
            (
                "backbone=efficient_attention",
                "task=listops",
                *TINY_LISTOPS,
                "task.batch_size=16",
                "backbone.dim=16",
                "backbone.mlp_dim=32",
                "gfsa.layers=all",
            ),
        )
    ]


DOMAINS = (
    Domain("vision", None, ("PIL",), _vision),
    Domain("text", None, (), _glue),
    Domain("language modelling", None, (), _lm),
    Domain("code", None, (), _code),
    Domain("graphs", "graph", ("torch_geometric", "ogb", "rdkit", "pandas"), _graph),
    Domain("speech", "speech", ("soundfile",), _speech),
    Domain("long sequences", None, (), _listops),
)


def write(root: Path) -> tuple[list[Example], list[str]]:
    """Write every domain whose libraries are installed; (its examples, a line per domain left out)."""
    root = root.expanduser().resolve()
    results = f"paths.results_dir={root / 'results'}"
    examples, skipped = [], []
    for domain in DOMAINS:
        missing = [m for m in domain.modules if importlib.util.find_spec(m) is None]
        if missing:
            skipped.append(f"{domain.name}: needs pip install 'gfsa[{domain.extra}]' (missing {', '.join(missing)})")
            continue
        examples += [Example(domain.name, title, (*o, *QUICK, results)) for title, o in domain.write(root)]
    return examples, skipped


def main_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="gfsa demo-data",
        description="Write tiny data sets and checkpoints in the real formats of every domain (vision, GLUE, "
        "PTB/WikiText, Devign/BigCloneBench, ZINC/LRGB/PCQM4Mv2, LibriSpeech, ListOps) and print a runnable "
        "command for each: tiny models, a few CPU batches, no network.",
    )
    parser.add_argument("dir", type=Path, help="folder to write into (created; its results/ gets the runs)")
    args = parser.parse_args(argv)
    why = unwritable(args.dir)
    if why:
        fail(f"cannot write the demo data into {args.dir}: {why}; pass another folder")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's bars: the output is the commands
    start = time.perf_counter()
    examples, skipped = write(args.dir)
    root = args.dir.expanduser().resolve()
    print(f"# demo data and tiny checkpoints in {root} ({time.perf_counter() - start:.0f} s).")
    print("# Each command trains a baseline and a GFSA run for a few CPU batches (seconds to a minute):")
    domain = None
    for e in examples:
        if e.domain != domain:
            domain = e.domain
            print(f"\n## {domain}")
        print(f"# {e.title}\n{e.command}")
    for line in skipped:
        print(f"\n# skipped {line}")
    print(f"\n# then: gfsa report {root / 'results'}")
