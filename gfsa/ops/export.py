"""``gfsa export RUN_DIR OUT_DIR``: a trained run as a model other tools load.

transformers backbones (text, code, the Transformer ASR): a ``save_pretrained`` directory with the
tokenizer and ``config.gfsa``, loaded by ``gfsa.from_pretrained(OUT_DIR, model_class=…)``; timm backbones
(vision): ``model.safetensors`` with ``model.safetensors.gfsa.json``, loaded by
``gfsa.create_model(name, checkpoint_path=…)``. Weights of the run's model outside the exported library
model (a task head the suite adds) go to ``extra_weights.safetensors``; ``export.json`` says what is where
and how to load it. The output appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gfsa.runner.restore import locate, restore
from gfsa.utils.errors import ConfigError, fail

MANIFEST = "export.json"


def _library_model(model, target):
    """The largest transformers model in ``model`` that contains the GFSA patch target (for a speech model:
    the encoder-decoder, not only its patched encoder), and the target's path inside it."""
    from transformers import PreTrainedModel

    for _, module in model.named_modules():
        if isinstance(module, PreTrainedModel):
            for path, m in module.named_modules():
                if m is target:
                    return module, path
    return None, None


def export(run: str | Path, out: str | Path, ckpt: str = "last") -> dict:
    """Write the run's model to ``out`` (which must not exist or be empty); returns the manifest."""
    import torch
    from safetensors.torch import save_file

    from gfsa.nn.saving import save_timm
    from gfsa.zoo.backbones import patch_target

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not empty: pass a new directory to export to")
    run_dir, record, checkpoint = locate(run, ckpt)
    prepared = restore(record, checkpoint)
    model = prepared.model
    target = patch_target(model)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        hf, path = _library_model(model, target)
        settings = getattr(target, "gfsa_settings", None)
        manifest = {"run_dir": str(run_dir), "checkpoint": str(checkpoint), "gfsa": settings and settings.to_config()}
        if hf is not None:
            if settings is not None:
                hf.config.gfsa = {**settings.to_config(), **({"module": path} if path else {})}
            hf.save_pretrained(tmp)
            tokenizer = getattr(prepared.task, "tokenizer", None)
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(tmp)
            exported = hf
            cls = type(hf).__name__
            manifest |= {"kind": "transformers", "class": cls}
            manifest["load"] = f"gfsa.from_pretrained({str(out)!r}, model_class=transformers.{cls})"
        elif hasattr(target, "timm_create"):
            spec = target.timm_create
            save_timm(target, tmp / "model.safetensors", spec["model_name"], **spec["kwargs"])
            exported = target
            manifest |= {"kind": "timm", "model_name": spec["model_name"]}
            ckpt_path = str(out / "model.safetensors")
            manifest["load"] = f"gfsa.create_model({spec['model_name']!r}, checkpoint_path={ckpt_path!r})"
        else:
            raise ConfigError(
                f"gfsa export writes transformers and timm models; {record['backbone']} is one of the suite's own "
                f"({type(target).__name__}): use its checkpoint {checkpoint} (gfsa.runner.restore)"
            )
        inside = {id(t) for t in exported.state_dict(keep_vars=True).values()}
        extra = {
            k: v.detach().contiguous()
            for k, v in model.state_dict(keep_vars=True).items()
            if id(v) not in inside and torch.is_tensor(v)
        }
        if extra:
            save_file(extra, str(tmp / "extra_weights.safetensors"))
            manifest["extra_weights"] = sorted(extra)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def main_cli(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="gfsa export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (with result.json) or a checkpoint in one")
    p.add_argument("out", help="a new directory for the exported model")
    p.add_argument("--ckpt", default="last", choices=("last", "best"), help="which checkpoint of a run directory")
    args = p.parse_args(argv)
    try:
        manifest = export(args.run, args.out, args.ckpt)
    except ConfigError as e:
        fail(str(e))
    print(f"exported {manifest['kind']} model to {args.out}; load it with {manifest['load']}")
