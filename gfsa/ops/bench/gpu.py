"""The prepared GPU check: the CUDA tests and the benchmarks at GPU sizes in bf16, in one unattended command
that writes one JSON and one Markdown file ready for docs/performance.md.

    .venv/bin/gfsa bench gpu --out gpu-check          # on a CUDA machine, in the repository root (< 10 min on an H100)
    gfsa bench gpu --device cpu --fast --out /tmp/x   # the same stages, tiny, on CPU (what the tests run)

Stages, each a subprocess with its own time limit (a stage that fails, hangs or runs out of memory is
recorded as such and the next one runs; the files are rewritten after every stage, so an interrupted
check leaves what it had):

1. ``tests``: ``pytest -m cuda tests/test_cuda.py`` (fused/materialized vs the naive formula in
   fp32/bf16/fp16, masks, causal, gradients, autotune, cached decoding, torch.compile) on ``--device``;
2. ``attention``: ``gfsa bench attention`` in bf16 at n = 1024 … 8192;
3. ``models:deit_s``, ``models:gpt2``, ``models:bert_base``: ``gfsa bench models`` in bf16, batch ×8
   (retried at ×2 after an out-of-memory), against the goal: GFSA on all layers ≤ +15% train-step time
   for DeiT-S and GPT-2 (the paper's code: +48% and +80%);
4. ``decode``: ``gfsa bench decode`` in bf16;
5. ``grid``: ``gfsa bench attention --grid`` (fp32/bf16/fp16, head sizes 64 and 128, causal and full):
   the measured crossover of ``impl="auto"`` on this GPU and the AUTO_EXPLICIT_MAX_LEN entries it suggests.

Writes ``OUT/gpu.json`` (every stage: command, status, seconds, its JSON) and ``OUT/gpu.md``; each
stage's own output is in ``OUT/logs/STAGE.log`` and its JSON in ``OUT/stages/STAGE.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from gfsa.utils.errors import fail

BUDGET_S = 570  # the whole check, under 10 minutes with start-up
TEST_FILE = Path("tests/test_cuda.py")
TEST_DEVICE_ENV = "GFSA_TEST_DEVICE"  # tests/test_cuda.py runs on this device (default cuda)


@dataclass
class Stage:
    name: str
    argv: list[str]  # after `python -m`
    limit_s: int
    out_json: Path | None = None
    retry_argv: list[str] | None = None  # run instead once if the first try ran out of memory
    env: dict = field(default_factory=dict)


def stages(args, out: Path) -> list[Stage]:
    dev, fast = args.device, args.fast
    stage_json = out / "stages"

    def bench(name: str, *opts: str) -> list[str]:
        return ["gfsa.cli", "bench", name, "--device", dev, *opts]

    pytest_args = ["pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={out / 'stages' / 'tests.xml'}"]
    if importlib.util.find_spec("pytest_timeout"):
        pytest_args.append("--timeout=150")
    if fast:  # the compile tests take minutes on a small CPU; the GPU check runs them
        pytest_args += ["-k", "not compile"]
    result = [Stage("tests", [*pytest_args, str(TEST_FILE)], 240, env={TEST_DEVICE_ENV: dev})]

    half = [] if fast else ["--dtype", "bf16"]
    sizes = ["--fast"] if fast else ["--lengths", "1024", "2048", "4096", "8192", "--heads", "12", "--max-mem-gb", "40"]
    result.append(Stage("attention", bench("attention", *half, *sizes), 90, stage_json / "attention.json"))
    for model in ("deit_s", "gpt2", "bert_base"):
        size = ["--fast"] if fast else ["--batch-scale", "8"]
        stage = Stage(f"models:{model}", bench("models", "--models", model, *half, *size), 100)
        stage.out_json = stage_json / f"models_{model}.json"
        if not fast:
            stage.retry_argv = bench("models", "--models", model, *half, "--batch-scale", "2")
        result.append(stage)
    result.append(
        Stage("decode", bench("decode", *half, *(["--fast"] if fast else [])), 100, stage_json / "decode.json")
    )
    grid = ["--fast", "--lengths", "32", "64", "--head-dims", "8"] if fast else []
    result.append(Stage("grid", bench("attention", "--grid", *grid), 150, stage_json / "grid.json"))
    for s in result:
        if s.out_json is not None:
            s.argv += ["--out", str(s.out_json)]
            if s.retry_argv:
                s.retry_argv += ["--out", str(s.out_json)]
    return result


def _stream(proc: subprocess.Popen, log, prefix: str, lines: list[str]) -> None:
    for line in proc.stdout:
        log.write(line)
        log.flush()
        lines.append(line.rstrip("\n"))
        del lines[:-200]
        print(f"  {prefix} | {line}", end="", flush=True)


class Interrupted(Exception):
    """SIGTERM/SIGINT to the check: the running stage is stopped and what was measured is written."""


def _interrupt(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def run_stage(stage: Stage, argv: list[str], limit: float, log_path: Path) -> dict:
    """Run one stage as its own process group; kill the group when it passes ``limit`` seconds."""
    env = {**os.environ, **stage.env, "PYTHONUNBUFFERED": "1"}
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "offline")):
        env.setdefault(key, value)  # nothing to download; a machine without network must not wait on one
    cmd = [sys.executable, "-m", *argv]
    lines: list[str] = []
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        reader = threading.Thread(target=_stream, args=(proc, log, stage.name, lines), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill(proc)
            code, status = None, "timeout"
        except Interrupted:
            _kill(proc)
            raise
        reader.join(timeout=10)
    return {
        "command": " ".join(cmd),
        "status": status,
        "returncode": code,
        "seconds": round(time.monotonic() - start, 1),
        "limit_s": round(limit),
        "log": str(log_path),
        "tail": lines[-15:],
        "out_of_memory": any("OutOfMemoryError" in line or "out of memory" in line for line in lines),
    }


def _kill(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def junit(path: Path) -> dict:
    """Counts and the failed tests' names from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = root.iter("testcase")
    out = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "failures": []}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            out["failed" if case.find("failure") is not None else "errors"] += 1
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            out["failures"].append({"test": name, "message": (node.get("message") or "")[:300]})
        elif case.find("skipped") is not None:
            out["skipped"] += 1
            out.setdefault("skip_reasons", sorted({(case.find("skipped").get("message") or "")[:200]}))
        else:
            out["passed"] += 1
    return out


def environment(device: str) -> dict:
    """What the numbers depend on, without creating a CUDA context in this process (the stages need the memory)."""
    import torch

    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "cores": os.cpu_count(),
    }
    if shutil.which("nvidia-smi"):
        try:
            q = "--query-gpu=name,driver_version,memory.total"
            smi = subprocess.run(
                ["nvidia-smi", q, "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=30
            )
            env["gpus"] = [line.strip() for line in smi.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    git = Path(".git")
    if git.exists():
        try:
            rev = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=10)
            env["git"] = rev.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def markdown(report: dict) -> str:
    """The check as Markdown: stages, goals, tests, then each benchmark's own tables."""
    from gfsa.ops.bench import attention, decode, grid, models
    from gfsa.ops.bench.common import md_table

    env = report["environment"]
    gpu = ", ".join(env.get("gpus", [])) or env["device"]
    fast = " (--fast: smoke-test sizes, not measurements)" if report["config"]["fast"] else ""
    intro = (
        f"`gfsa bench gpu` on {env['date']}, torch {env['torch']} (CUDA {env.get('cuda')}), git {env.get('git')}, "
        f"device {env['device']}{fast}."
    )
    lines = [
        f"## GPU check: {gpu}",
        "",
        intro,
        "",
        md_table(
            ["stage", "status", "seconds", "limit"],
            [[s["name"], s["status"], s.get("seconds", "—"), s.get("limit_s", "—")] for s in report["stages"]],
        ),
    ]
    goals = report.get("goals") or []
    if goals:
        lines += ["", "### Goal: GFSA on all layers ≤ +15% train-step time in bf16 (paper: +48% DeiT-S, +80% GPT-2)"]
        rows = [[g["model"], g["measured"], g["official"], g["paper"], g["verdict"]] for g in goals]
        lines += ["", md_table(["model", "GFSA all layers", "official code, all layers", "paper", "verdict"], rows)]
    tests = next((s for s in report["stages"] if s["name"] == "tests"), None)
    if tests and tests.get("tests"):
        t = tests["tests"]
        lines += ["", "### CUDA tests (`pytest -m cuda tests/test_cuda.py`)", ""]
        lines.append(f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped.")
        lines += [f"- FAILED `{f['test']}`: {f['message']}" for f in t["failures"]]
    sections = [
        ("attention", "### Operator: `gfsa bench attention`", attention.markdown),
        ("models", "### Models: `gfsa bench models`", models.markdown),
        ("decode", "### Decoding: `gfsa bench decode`", decode.markdown),
        ("grid", "### `impl='auto'` crossover: `gfsa bench attention --grid`", grid.markdown_grid),
    ]
    results = merged_results(report)
    for key, title, render in sections:
        if results.get(key):
            try:
                body = render(results[key])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # partial JSON: say so, keep the rest
                body = f"(could not render: {type(e).__name__}: {e})"
            lines += ["", title, "", body]
    failed = [s for s in report["stages"] if s["status"] not in ("ok", "pending")]
    for s in failed:
        lines += ["", f"### Stage {s['name']}: {s['status']}", "", "```", *s.get("tail", []), "```"]
    return "\n".join(lines) + "\n"


def merged_results(report: dict) -> dict:
    """Each benchmark's JSON by section; the per-model stages as one models result."""
    out = {}
    model_parts = []
    for s in report["stages"]:
        res = s.get("result")
        if not res:
            continue
        if s["name"].startswith("models:"):
            model_parts.append(res)
        else:
            out[s["name"]] = res
    if model_parts:
        merged = {**model_parts[0], "rows": [row for part in model_parts for row in part["rows"]]}
        warnings, kinds = [], set()
        for part in model_parts:  # one warning of each kind (few repetitions, noise, busy machine)
            for w in part.get("noise", {}).get("warnings", []):
                if w.split(":")[0] not in kinds:
                    kinds.add(w.split(":")[0])
                    warnings.append(w)
        merged["noise"] = {"warnings": warnings}
        out["models"] = merged
    return out


def goals(report: dict) -> list[dict]:
    from gfsa.ops.bench.models import pct

    out = []
    for row in merged_results(report).get("models", {}).get("rows", []):
        if "goal" in row:
            out.append(
                {
                    "model": row["model"],
                    "measured": pct(row["train_overhead_spread"]["all"]),
                    "official": pct(row["train_overhead_spread"]["all_official"]),
                    "paper": f"+{row['paper_overhead_pct']['all']:.1f}%",
                    "verdict": row["goal"]["verdict"],
                    "all_pct": row["goal"]["all_pct"],
                    "goal_pct": row["goal"]["all_max_pct"],
                }
            )
    return out


def write(report: dict, out: Path) -> None:
    """gpu.json and gpu.md, each replaced whole (readers never see half a file)."""
    report["goals"] = goals(report)
    for name, text in (("gpu.json", json.dumps(report, indent=2)), ("gpu.md", markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="gfsa bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for gpu.json, gpu.md, logs/, stages/")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --fast: exercises the stages)")
    p.add_argument("--fast", action="store_true", help="smoke-test sizes in every stage (used by the tests)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all stages (default {BUDGET_S})")
    p.add_argument("--only", nargs="+", help="run only these stages (tests attention models decode grid)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            fail(
                f"--device {args.device}: no CUDA device here (torch {torch.__version__}, CUDA build "
                f"{torch.version.cuda}); run on a GPU machine, or `gfsa bench gpu --device cpu --fast` to exercise the stages"
            )
    out = args.out
    try:
        for sub in ("logs", "stages"):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"--out {out}: cannot create it ({e.strerror}); choose a writable folder")
    plan = stages(args, out)
    if args.only:
        unknown = [o for o in args.only if not any(s.name.split(":")[0] == o for s in plan)]
        if unknown:
            fail(f"--only {' '.join(unknown)}: unknown stage; the stages are tests attention models decode grid")
        plan = [s for s in plan if s.name.split(":")[0] in args.only]
    report = {
        "config": {"device": args.device, "fast": args.fast, "budget_s": args.budget, "out": str(out)},
        "environment": environment(args.device),
        "stages": [{"name": s.name, "status": "pending"} for s in plan],
    }
    write(report, out)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    try:
        run_plan(plan, report, args, out)
    except Interrupted as e:
        for entry in report["stages"]:
            if entry["status"] == "pending":
                entry.update(status="skipped", reason=f"the check was stopped ({e})")
        write(report, out)
        print(f"[gpu check] stopped ({e}); wrote what was measured to {out}", flush=True)
        sys.exit(130)
    bad = [s["name"] for s in report["stages"] if s["status"] != "ok"]
    print(f"[gpu check] wrote {out / 'gpu.json'} and {out / 'gpu.md'}" + (f"; not ok: {', '.join(bad)}" if bad else ""))
    for g in report["goals"]:
        print(
            f"[gpu check] goal {g['model']}: GFSA all layers {g['measured']} (≤ +{g['goal_pct']:.0f}%): {g['verdict']}"
        )
    if bad:
        sys.exit(1)
    return report


def run_plan(plan: list[Stage], report: dict, args, out: Path) -> None:
    """The stages in turn, each within its limit and what is left of the budget; the files after each."""
    deadline = time.monotonic() + args.budget
    for i, stage in enumerate(plan):
        entry = report["stages"][i]
        left = deadline - time.monotonic()
        if left < 10:
            entry.update(status="skipped", reason=f"the --budget of {args.budget:g} s was spent")
            print(f"[gpu check] {stage.name}: skipped, budget spent", flush=True)
            write(report, out)
            continue
        if stage.name == "tests" and not TEST_FILE.exists():
            entry.update(status="skipped", reason=f"no {TEST_FILE} here: run the check in the repository root")
            print(f"[gpu check] tests: skipped, no {TEST_FILE} (run in the repository root)", flush=True)
            write(report, out)
            continue
        limit = min(stage.limit_s, left)
        print(f"[gpu check] ({i + 1}/{len(plan)}) {stage.name}, at most {limit:.0f} s", flush=True)
        log = out / "logs" / f"{stage.name.replace(':', '_')}.log"
        if stage.out_json is not None:
            stage.out_json.unlink(missing_ok=True)  # never report an earlier run's numbers as this one's
        entry.update(run_stage(stage, stage.argv, limit, log))
        left = deadline - time.monotonic()
        if entry["status"] == "failed" and entry["out_of_memory"] and stage.retry_argv and left > 30:
            print(f"[gpu check] {stage.name}: out of memory; again with a smaller batch", flush=True)
            first = {k: entry[k] for k in ("command", "seconds", "tail")}
            entry.update(run_stage(stage, stage.retry_argv, min(stage.limit_s, left), log), first_try=first)
        if stage.name == "tests":
            entry["tests"] = junit(out / "stages" / "tests.xml")
        if stage.out_json is not None and stage.out_json.exists() and entry["status"] == "ok":
            try:
                entry["result"] = json.loads(stage.out_json.read_text())
            except ValueError:
                entry["status"] = "failed"
        print(f"[gpu check] {stage.name}: {entry['status']} after {entry['seconds']} s", flush=True)
        write(report, out)


if __name__ == "__main__":
    main()
