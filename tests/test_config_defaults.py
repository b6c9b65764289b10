"""Defaults live only in conf/: the code reads every config key as the YAML sets it.

Two halves, both cheap (Hydra composition and ``ast``, no torch models, no data):

- static: no ``x.get("key", default)``, ``x.get("key") or default`` or ``x.get("key")`` in gfsa/zoo and
  gfsa/runner names a config key, except the few keys that are optional by design (listed below with
  why). A second default in code is how ``optim.weight_decay`` came to be 0.0 in code and 0.05 in
  conf/optim/adamw.yaml; this test fails on the next one, whatever the variable is called.
- the YAML side: every option of a group that the same code reads (tasks and backbones of one
  ``type``, every optim, every method) defines the same keys, so a strict ``cfg["key"]`` that works
  for one option (the end-to-end tests run one per type) works for all of them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO, compose
from omegaconf import OmegaConf

from gfsa.runner.config import TIMM_COSINE_KEYS, normalise
from gfsa.runner.console import group_options
from gfsa.utils.errors import ConfigError
from gfsa.zoo.methods import METHODS, hyperparameters

GROUPS = ("task", "backbone", "optim", "method", "gfsa", "trainer", "logger", "callbacks")
SCANNED = ("gfsa/zoo", "gfsa/runner")
# Modules that read results records, lock files, checkpoints or the environment, not a run's config:
# records of any age lack keys that configs have now, so these read them with .get on purpose.
NOT_CONFIG = {
    "gfsa/runner/results.py": "results records (and the configs stored in them, of any age)",
    "gfsa/runner/console.py": "results records",
    "gfsa/runner/lock.py": "lock files",
    "gfsa/runner/requeue.py": "checkpoints and Slurm's environment",
}
NOT_CONFIG_FUNCTIONS = {
    ("gfsa/runner/rundir.py", "data_changed"): "the record of an ended run (any age)",
    ("*", "load_state_dict"): "a checkpoint's state (any age)",
}
# Keys that are optional by design: absent from some composed configs, and the code branches on them.
OPTIONAL = {
    ("gfsa/runner/environment.py", "global_batch_size"): "set by the presets that fix a global batch (imagenet: null)",
    ("gfsa/runner/config.py", "global_batch_size"): "set by the presets that fix a global batch (imagenet: null)",
    ("gfsa/runner/config.py", "check_val_every_n_epoch"): "a Lightning argument only some presets add",
    ("gfsa/runner/config.py", "momentum"): "SGD only; its one default is recipes.common.SGD_MOMENTUM (README)",
    ("gfsa/zoo/recipes/common.py", "momentum"): "SGD only; its one default is SGD_MOMENTUM (README)",
    ("gfsa/runner/config.py", "ema_decay"): "the DeiT recipe's (conf/optim/deit.yaml: null)",
    ("gfsa/zoo/recipes/classification.py", "ema_decay"): "the DeiT recipe's (conf/optim/deit.yaml: null)",
    ("gfsa/zoo/recipes/common.py", "schedule_kwargs"): "extra schedule arguments some presets pass",
    ("gfsa/zoo/backbones/timm_models.py", "depth"): "DeiT backbones only (conf/backbone/deit.yaml: null)",
    ("gfsa/zoo/methods/__init__.py", "method"): "~method drops the group: no compared method",
    ("gfsa/runner/train.py", "callbacks"): "~callbacks drops the group: no extra callbacks",
    ("gfsa/runner/loggers.py", "logger"): "~logger drops the group: no logger",
}
# Keys that only some options of one type define (each one is in OPTIONAL, read with .get).
TYPE_EXTRAS = {("backbone", "timm"): {"depth"}}


@cache
def composed() -> dict[str, dict]:
    """The resolved config of every option of every group, of every preset, and with a group dropped."""
    cases = [[f"{g}={o}"] for g in GROUPS for o in group_options(CONF_DIR, g)]
    cases += [[f"preset={p}"] for p in group_options(CONF_DIR, "preset")]
    cases += [["~method"], ["~callbacks"], ["~logger"]]
    out = {}
    for overrides in cases:
        cfg = OmegaConf.to_container(compose(overrides), resolve=True)
        cfg.pop("hydra", None)
        out[" ".join(overrides)] = cfg
    return out


def _keys(node, prefix: str = "", free: tuple[str, ...] = ()) -> set[str]:
    """Dotted key paths of a config node (``free`` keys hold free-form mappings: not descended into)."""
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            out.add(path)
            if k not in free:
                out |= _keys(v, f"{path}.", free)
    return out


@cache
def config_keys() -> dict[str, tuple[set[str], set[str]]]:
    """key name → (its dotted paths, the compositions that have it), over every composed config."""
    seen: dict[str, tuple[set, set]] = defaultdict(lambda: (set(), set()))
    for case, cfg in composed().items():
        for path in _keys(cfg):
            paths, cases = seen[path.rsplit(".", 1)[-1]]
            paths.add(path)
            cases.add(case)
    return dict(seen)


def _config_gets():
    """(file, line, key, kind) of every ``.get("literal", …)`` outside the record readers."""
    for root in SCANNED:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in NOT_CONFIG:
                continue
            tree = ast.parse(path.read_text(), rel)
            skip = set()
            for fn in ast.walk(tree):
                if isinstance(fn, ast.FunctionDef) and {(rel, fn.name), ("*", fn.name)} & set(NOT_CONFIG_FUNCTIONS):
                    skip |= {id(n) for n in ast.walk(fn)}
            with_or = {
                id(node.values[0])
                for node in ast.walk(tree)
                if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or)
            }
            for node in ast.walk(tree):
                if id(node) in skip or not isinstance(node, ast.Call):
                    continue
                f = node.func
                if not (isinstance(f, ast.Attribute) and f.attr == "get" and node.args):
                    continue
                key = node.args[0]
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    continue
                if isinstance(f.value, ast.Attribute) and f.value.attr == "environ":
                    continue  # os.environ
                kind = "default" if len(node.args) > 1 else "or-default" if id(node) in with_or else "bare"
                yield rel, node.lineno, key.value, kind


def test_the_code_has_no_second_default_for_a_config_key():
    keys, gets = config_keys(), list(_config_gets())
    found = [(rel, line, key, kind) for rel, line, key, kind in gets if key in keys]
    wrong = [
        f"{rel}:{line}: {key!r} is a config key ({', '.join(sorted(keys[key][0])[:3])}): read it as cfg[{key!r}], "
        f"its default lives in conf/ ({kind} .get)"
        for rel, line, key, kind in found
        if (rel, key) not in OPTIONAL
    ]
    assert not wrong, "\n".join(wrong)
    used = {(rel, key) for rel, _, key, _ in gets}
    stale = [f"{rel}: {key}" for rel, key in OPTIONAL if (rel, key) not in used]
    assert not stale, f"OPTIONAL lists keys the code no longer reads with .get: {stale}"
    everywhere = [k for _, k in OPTIONAL if k in keys and len(keys[k][1]) == len(composed())]
    assert not everywhere, f"every composed config has {everywhere}: read them as cfg[key], not as optional"


def _group_options(group: str) -> dict[str, dict]:
    return {o: composed()[f"{group}={o}"][group] for o in group_options(CONF_DIR, group)}


def test_options_of_one_type_define_the_same_keys():
    """Tasks and backbones of one ``type`` are read by the same code: a key one lacks is a KeyError."""
    for group in ("task", "backbone"):
        by_type = defaultdict(dict)
        for option, node in _group_options(group).items():
            by_type[node["type"]][option] = _keys(node, free=("kwargs",))
        for kind, options in by_type.items():
            every = set.union(*options.values()) - TYPE_EXTRAS.get((group, kind), set())
            for option, keys in options.items():
                lacks = sorted(every - keys)
                assert not lacks, f"conf/{group}/{option}.yaml lacks {lacks}, which other {group}s of type {kind} set"


def test_every_optim_extends_adamw_and_timm_cosine_has_its_keys():
    options = _group_options("optim")
    base = set(options["adamw"])
    for option, node in options.items():
        assert base <= set(node), f"conf/optim/{option}.yaml lacks {sorted(base - set(node))}"
        if node["schedule"] == "timm_cosine":
            assert set(TIMM_COSINE_KEYS) <= set(node), option
    assert "momentum" not in set().union(*options.values())  # optional: see OPTIONAL (a key changes run dirs)


def test_each_method_yaml_sets_every_hyperparameter():
    options = _group_options("method")
    assert set(options) == {"none", *METHODS}
    for name in METHODS:
        node = options[name]
        assert set(node) == {"name", "layers", "with_gfsa", *hyperparameters(name)}, f"conf/method/{name}.yaml"


def test_presets_only_override_what_their_groups_define():
    """A preset sets values; a key that is new to its group (a typo, or a default that belongs in the
    group's YAML) is an error, except the optional keys above and Lightning's own trainer arguments."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    optional = {key for _, key in OPTIONAL}
    for preset in group_options(CONF_DIR, "preset"):
        cfg = composed()[f"preset={preset}"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            choices = hydra_compose("config", [f"preset={preset}"], return_hydra_config=True).hydra.runtime.choices
        for group in ("task", "backbone", "optim", "gfsa"):
            extra = set(cfg[group]) - set(_group_options(group)[choices[group]]) - optional
            assert not extra, f"conf/preset/{preset}.yaml adds {sorted(extra)} to {group}"


def test_readme_documents_the_optional_optim_key_and_the_conf_dir():
    readme = (REPO / "README.md").read_text()
    assert "+optim.momentum=0.9" in readme and "GFSA_CONF_DIR" in readme
    assert "momentum" in (Path(CONF_DIR) / "optim" / "adamw.yaml").read_text()


def test_timm_cosine_without_its_keys_is_one_line_naming_them():
    cfg = OmegaConf.to_container(compose(["optim.schedule=timm_cosine"]), resolve=True)
    with pytest.raises(ConfigError, match=r"needs optim.schedule_interval, optim.warmup_epochs, .*use optim=deit"):
        normalise(cfg)
    bad = OmegaConf.to_container(compose(["optim=deit", "optim.schedule_interval=batch"]), resolve=True)
    with pytest.raises(ConfigError, match="optim.schedule_interval='batch': choose one of epoch, step"):
        normalise(bad)
