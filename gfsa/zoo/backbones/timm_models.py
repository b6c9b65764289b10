"""Vision backbones from timm (ViT/DeiT, CaiT, Swin), built by name and patched with gfsa.patch."""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from gfsa.utils.errors import ConfigError, first_line
from gfsa.zoo.hub import use_hub


class ImageClassifier(nn.Module):
    """Batch dict → logits; the timm model is ``.net`` (what gfsa.patch receives)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        return self.net(image)


def _pretrained(cfg, kwargs: dict) -> bool:
    """``backbone.pretrained``: false, true (timm's hub weights) or a checkpoint file, which timm
    loads through its own pretrained path (state-dict filters, position-embedding resampling)."""
    pretrained = cfg["pretrained"]
    if not isinstance(pretrained, str):
        return bool(pretrained)
    if pretrained.lower() in ("true", "false"):
        return pretrained.lower() == "true"
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone.pretrained={pretrained} is not a file: pass a checkpoint path, true or false")
    overlay = {"file": str(path)}
    # timm drops the classifier when the class count differs from the checkpoint's; read it from the file
    # so that a checkpoint with the task's classes keeps its head.
    classifier = timm.models.get_pretrained_cfg_value(cfg.model, "classifier")
    try:
        state = timm.models.load_state_dict(str(path))
    except (OSError, RuntimeError, EOFError, AttributeError, KeyError, ValueError, pickle.UnpicklingError) as e:
        # what torch.load / safetensors raise for a file that is not a state dict
        raise ConfigError(
            f"backbone.pretrained={pretrained}: cannot read it as a checkpoint ({type(e).__name__})"
        ) from None
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    weight = next((state[f"{h}.weight"] for h in heads if f"{h}.weight" in state), None)
    if weight is not None:
        overlay["num_classes"] = int(weight.shape[0])
    kwargs["pretrained_cfg_overlay"] = overlay
    return True


def _nearest(size: int, ok) -> str:
    """The nearest image sizes below and above ``size`` that ``ok`` accepts, as an override hint."""
    below = next((s for s in range(size - 1, 0, -1) if ok(s)), None)
    above = next(s for s in range(size + 1, 64 * size + 2) if ok(s))
    return " or ".join(f"task.image_size={s}" for s in (below, above) if s)


def _swin_fits(size: int, patch: int, window: int, stages: int) -> bool:
    """Every Swin stage's token grid is tiled by its windows (timm shrinks a window to a smaller
    grid) and is even before each patch merging; otherwise timm pads, which the paper's model never does."""
    if size % patch:
        return False
    res = size // patch
    for stage in range(stages):
        if stage:
            if res % 2:
                return False
            res //= 2
        if res % min(window, res):
            return False
    return True


def check_input_size(net: nn.Module, image_size: int, name: str) -> None:
    """timm silently crops (ViT/CaiT) or pads (Swin) images the patch/window grid does not tile."""
    embed = getattr(net, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        return
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    if isinstance(net, SwinTransformer):
        blocks = [blk for stage in net.layers for blk in stage.blocks]
        window = max(max(blk.window_size) for blk in blocks)  # timm shrinks only windows larger than the grid
        stages = len(net.layers)
        if not _swin_fits(image_size, patch, window, stages):
            hint = _nearest(image_size, lambda s: _swin_fits(s, patch, window, stages))
            raise ConfigError(
                f"task.image_size={image_size} does not fit backbone {name} (patch {patch}, window {window}, "
                f"{stages} stages): use {hint}, or change backbone.kwargs.window_size"
            )
    elif image_size % patch:
        hint = _nearest(image_size, lambda s: s % patch == 0)
        raise ConfigError(
            f"task.image_size={image_size} is not a multiple of the patch size {patch} of backbone {name}: use {hint}"
        )


def build(cfg, task) -> nn.Module:
    """``backbone.model`` is a timm model name; ``backbone.kwargs`` override its architecture
    (``backbone.depth`` its number of blocks). ``backbone.pretrained``: false, true (timm's hub
    weights, needs network) or a checkpoint file."""
    kwargs = dict(cfg["kwargs"])
    kwargs.setdefault("num_classes", task.num_classes)
    if hasattr(task, "in_chans"):
        kwargs.setdefault("in_chans", task.in_chans)
    if hasattr(task, "image_size"):
        if kwargs.get("img_size", task.image_size) != task.image_size:
            raise ConfigError(
                f"backbone.kwargs.img_size={kwargs['img_size']} differs from task.image_size={task.image_size}: "
                "set task.image_size only"
            )
        kwargs["img_size"] = task.image_size
    if cfg.get("depth"):  # DeiT backbones only (conf/backbone/deit.yaml: null keeps the model's)
        kwargs["depth"] = int(cfg.depth)
    pretrained = _pretrained(cfg, kwargs)
    if pretrained and "file" not in kwargs.get("pretrained_cfg_overlay", {}):
        use_hub()  # timm's weights come from the Hugging Face hub
    try:
        net = timm.create_model(cfg.model, pretrained=pretrained, **kwargs)
    except TypeError as e:  # an architecture option the model does not have
        raise ConfigError(f"backbone {cfg.name} ({cfg.model}): {e}; check backbone.kwargs and backbone.depth") from None
    except Exception as e:
        if not pretrained or isinstance(e, ConfigError):
            raise
        from_file = "file" in kwargs.get("pretrained_cfg_overlay", {})
        if not from_file and (
            isinstance(e, OSError) or any(w in str(e).lower() for w in ("hub", "connect", "offline"))
        ):
            # huggingface_hub: LocalEntryNotFoundError (an OSError) when offline
            raise ConfigError(
                f"backbone.pretrained=true: could not download timm weights for {cfg.model} (no network?): "
                "pass backbone.pretrained=<checkpoint file> or backbone.pretrained=false"
            ) from None
        if not isinstance(e, (RuntimeError, KeyError, ValueError, OSError)):
            raise
        reason = (first_line(e, with_type=False) or type(e).__name__)[:200]
        raise ConfigError(  # shape mismatches, missing keys: weights of another architecture or size
            f"backbone.pretrained={cfg.pretrained} does not fit {cfg.model} with these kwargs ({reason}): "
            "pass a checkpoint of this architecture, or drop the backbone.kwargs / backbone.depth that change it"
        ) from None
    if hasattr(task, "image_size"):
        check_input_size(net, task.image_size, cfg.name)
    # How to build this architecture again (gfsa export writes it beside the weights for gfsa.create_model).
    net.timm_create = {
        "model_name": cfg.model,
        "kwargs": {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"},
    }
    return ImageClassifier(net)
