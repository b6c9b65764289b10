"""The official LibriSpeech recipes' pieces: speed perturbation, SpecAugment (counts, widths, time warping),
filterbanks with the recipe's window, batches by duration, the decoder's token accuracy, averaging of the best
checkpoints before the final evaluation, and shallow fusion with a Transformer LM trained by the suite on a
LibriSpeech-LM-format corpus. Data: the LibriSpeech tree of tests/test_speech.py (real FLAC files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose
from test_speech import PRESET_ON_CPU, TINY, _common, write_librispeech

from gfsa.runner.registry import resolve
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo.speech import WORDS
from gfsa.zoo.tasks.speech import LineOffsets
from gfsa.zoo.tasks.speech_data import (
    DurationBatches,
    FilterbankExtractor,
    mask_bands,
    read_audio,
    spec_augment,
    speed_perturb,
    time_warp,
)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("GFSA_CACHE_DIR", str(d))
    return d


def _flac(tmp_path) -> str:
    data = write_librispeech(tmp_path / "LibriSpeech", {"train-clean-100": 1})
    return str(next(data.rglob("*.flac")))


def test_speed_perturbation_changes_the_length_by_the_speed(tmp_path):
    wav = read_audio(_flac(tmp_path))
    for speed in (95, 105):
        out = speed_perturb(wav, speed)
        assert len(out) == math.ceil(len(wav) * speed / 100) and out.dtype == np.float32
    assert speed_perturb(wav, 100) is wav
    # a 5 % faster utterance: its 440 Hz tone comes out 1/0.95 higher (the spectrum's peak moves)
    t = np.arange(16000) / 16000
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    peak = np.abs(np.fft.rfft(speed_perturb(tone, 95))).argmax() * 16000 / len(speed_perturb(tone, 95))
    assert peak == pytest.approx(440 / 0.95, abs=2)


def test_training_utterances_draw_one_speed_each(tmp_path, cache_dir):
    data = write_librispeech(tmp_path / "LibriSpeech")
    cfg = compose(
        ["task=librispeech100", f"task.data_dir={data}", "task.tokenizer=char", "task.speed_perturb=[95,105]"]
    )
    task = resolve("task", "librispeech")(cfg.task)
    task.setup("fit")
    plain = FilterbankExtractor(80)(read_audio(task.train_set.utts[0].path), sampling_rate=16000)["input_features"][0]
    frames = {len(task.train_set[0]["features"]) for _ in range(20)}
    slow, fast = (len(plain) - 1) * 0.95, (len(plain) - 1) * 1.05
    assert len(frames) == 2 and all(min(abs(f - slow), abs(f - fast)) <= 1.5 for f in frames)
    ev = task.eval_sets[0]  # evaluation: never perturbed
    want = FilterbankExtractor(80)(read_audio(ev.utts[0].path), sampling_rate=16000)["input_features"][0]
    assert ev.speeds == [] and np.array_equal(ev[0]["features"].numpy(), want)


def test_specaugment_masks_have_the_configured_counts_and_widths():
    torch.manual_seed(0)
    lengths = torch.tensor([50, 40, 30, 20])
    starts, widths = mask_bands(lengths, 10, 24)
    assert starts.shape == widths.shape == (4, 10)
    assert (widths >= 0).all() and (widths <= 24).all() and (starts + widths <= lengths[:, None]).all()
    big = mask_bands(torch.full((2000,), 80), 1, 14)[1]
    assert set(big.flatten().tolist()) == set(range(15))  # uniform over 0…14 (SpeechBrain's width 15)
    # the output is zero exactly on the union of the drawn bands
    x = torch.randn(4, 50, 80)
    mask = torch.arange(50)[None, :] < lengths[:, None]
    torch.manual_seed(1)
    out = spec_augment(x, mask, freq_masks=2, freq_width=29, time_masks=10, time_width=24)
    torch.manual_seed(1)
    fs, fw = mask_bands(torch.full((4,), 80), 2, 29)
    ts, tw = mask_bands(lengths, 10, 24)
    f = torch.arange(80)[None, None, :]
    t = torch.arange(50)[None, None, :]
    fband = ((f >= fs[..., None]) & (f < (fs + fw)[..., None])).any(1)
    tband = ((t >= ts[..., None]) & (t < (ts + tw)[..., None])).any(1)
    masked = fband[:, None, :] | tband[:, :, None]
    assert torch.equal(out == 0, masked) and torch.equal(out[~masked], x[~masked])


def test_time_warp_moves_one_point_and_keeps_the_ends():
    torch.manual_seed(0)
    ramp = torch.arange(40.0)[None, :, None].expand(2, 40, 3).contiguous()
    warped = time_warp(ramp, 5)
    assert warped.shape == ramp.shape and not torch.equal(warped, ramp)
    assert torch.allclose(warped[:, 0], ramp[:, 0]) and torch.allclose(warped[:, -1], ramp[:, -1])
    assert (warped[:, 1:, 0] - warped[:, :-1, 0] > -1e-4).all()  # a monotone ramp stays monotone (stretching)
    assert torch.equal(time_warp(ramp[:, :10], 5), ramp[:, :10])  # too short for the window: unchanged
    assert torch.equal(time_warp(ramp, 0), ramp)


def test_filterbanks_are_the_extractors_and_take_the_recipes_window(tmp_path):
    from transformers import Speech2TextFeatureExtractor

    wav = read_audio(_flac(tmp_path))
    ours = FilterbankExtractor(80)(wav, sampling_rate=16000)["input_features"][0]
    theirs = Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80)(wav, sampling_rate=16000)["input_features"][
        0
    ]
    assert np.array_equal(ours, theirs)  # 25 ms / 512: the extractor's own setting
    branch = FilterbankExtractor(80, 32, 512)
    assert branch.frame_length == 512 and len(branch.window) == 512
    feats = branch(wav, sampling_rate=16000)["input_features"][0]
    assert len(feats) == 1 + (len(wav) - 512) // 160 and not np.allclose(
        feats[: len(ours) - 12], ours[: len(ours) - 12]
    )
    assert FilterbankExtractor(80, 25, 400).mel_filters.shape == (201, 80)
    with pytest.raises(ConfigError, match=r"task.n_fft=256 is shorter than the 25 ms window \(400 samples\)"):
        FilterbankExtractor(80, 25, 256)


def test_duration_batches_bound_the_padded_seconds_and_shard_whole_batches():
    rng = np.random.default_rng(0)
    seconds = rng.uniform(1, 20, size=300)
    one = DurationBatches(seconds, max_seconds=60, max_items=8, buckets=10)
    batches = list(one)
    assert len(batches) == len(one)
    assert sorted(i for b in batches for i in b) == list(range(300))  # every utterance once per epoch
    assert all(len(b) * seconds[b].max() <= 60 and len(b) <= 8 for b in batches)
    one.set_epoch(1)
    assert list(one) != batches  # reshuffled every epoch (bucket contents and batch order)
    ranks = [DurationBatches(seconds, 60, 8, 10, rank=r, world=3) for r in range(3)]
    shards = [list(s) for s in ranks]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ranks[0])  # the same number of steps
    assert {i for s in shards for b in s for i in b} == set(range(300))


def test_final_evaluation_averages_the_best_checkpoints_by_token_accuracy(tmp_path, results_dir, cache_dir):
    """Three epochs keep the 2 best by val/acc; the model evaluated at the end is their mean, and the record's
    last entry is that evaluation (test decoding), the epochs before it scored as validation scores them."""
    from gfsa.zoo.recipes.asr import average_state_dicts

    data = write_librispeech(tmp_path / "LibriSpeech")
    overrides = [
        *_common(data),
        "preset=speech/transformer_100h",
        "task.tokenizer=char",
        *PRESET_ON_CPU,
        *TINY,
        "trainer.max_epochs=3",
        "task.average_checkpoints=2",
        "task.decode_every=2",
        "task.test_decoding.beam_size=2",
        "gfsa.layers=none",
        "early_stopping.patience=5",  # counts the validations that decode WER; the others pass
    ]
    record = run(compose(overrides, results_dir))
    history = record["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 2] and "final" in history[-1]
    # best.ckpt: the best WER among the validations that decoded it (epochs 1 and 2), not the final averaged model
    wer_best = min((1, 2), key=lambda e: (history[e]["metrics"]["wer"], e))
    assert record["checkpoints"]["best"]["epoch"] == wer_best
    assert (Path(record["run_dir"]) / "checkpoints" / "best.ckpt").is_file()
    assert "wer" not in history[0]["metrics"] and "wer" in history[1]["metrics"] and "wer" in history[2]["metrics"]
    assert "test_clean_acc" not in history[0]["metrics"] and "acc" in history[0]["metrics"]
    best = sorted(range(3), key=lambda e: (history[e]["metrics"]["acc"], e), reverse=True)[:2]
    assert history[-1]["final"]["averaged_epochs"] == sorted(best)
    assert history[-1]["final"]["decoding"]["beam_size"] == 2
    assert record["metrics"]["wer"]["value"] == history[-1]["metrics"]["wer"]
    folder = Path(record["run_dir"]) / "checkpoints" / "average"
    kept = sorted(folder.glob("epoch=*.pt"))
    assert [p.name for p in kept] == [f"epoch={e}.pt" for e in sorted(best)]
    states = [torch.load(p, weights_only=True) for p in kept]
    averaged = torch.load(folder / "averaged.pt", weights_only=True)
    mean = average_state_dicts(kept)
    for k, v in averaged.items():
        assert torch.equal(v, mean[k])
        if v.is_floating_point():
            assert torch.allclose(v, (states[0][k] + states[1][k]) / 2, atol=1e-6)
    # the final loss is the averaged model's: recompute it on dev-clean with the same batches
    cfg = compose(overrides, results_dir)
    task = resolve("task", "librispeech")(cfg.task)
    task.setup("fit")
    model = resolve("backbone", cfg.backbone.type)(cfg.backbone, task).eval()
    model.load_state_dict(averaged)
    losses, sizes = [], []
    with torch.no_grad():
        for batch in task.val_dataloader()[0]:
            losses.append(float(model(batch["features"], batch["feature_mask"], batch["tokens"])["loss"]))
            sizes.append(len(batch["texts"]))
            break  # limit_val_batches=1
    assert history[-1]["metrics"]["loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-5)


def _write_lm_corpus(path: Path, n: int = 60, seed: int = 0) -> Path:
    """librispeech-lm-norm.txt's format: one upper-case sentence per line; here a strongly repeated phrase."""
    rng = np.random.default_rng(seed)
    lines = ["THE CAT SAT ON A MAT" if i % 2 else " ".join(rng.choice(WORDS, size=4)) for i in range(n)]
    path.write_text("\n".join(lines))  # no newline after the last line, as the released file may end
    return path


def test_lm_corpus_lines_are_read_lazily(tmp_path):
    corpus = LineOffsets(str(_write_lm_corpus(tmp_path / "librispeech-lm-norm.txt", n=7)), chunk=16)
    text = (tmp_path / "librispeech-lm-norm.txt").read_text().split("\n")
    assert len(corpus) == 7 and [corpus[i] for i in range(7)] == text


def test_lm_fusion_weight_zero_is_plain_decoding_and_a_trained_lm_reranks(tmp_path, results_dir, cache_dir):
    from gfsa.zoo.backbones.asr import load_language_model
    from gfsa.zoo.tasks.speech_data import collate_speech

    data = write_librispeech(tmp_path / "LibriSpeech")
    corpus = _write_lm_corpus(tmp_path / "librispeech-lm-norm.txt")
    lm_record = run(
        compose(
            [
                *FAST,
                "preset=speech/transformer_lm",
                f"task.data_dir={data}",
                f"task.lm_corpus={corpus}",
                "task.train_splits=[train-clean-100]",
                "task.tokenizer=char",
                "task.num_workers=0",
                "backbone.d_model=32",
                "backbone.layers=2",
                "backbone.heads=4",
                "backbone.max_positions=64",
                "trainer.max_epochs=4",
                "trainer.limit_train_batches=null",
                "trainer.accumulate_grad_batches=1",
                "optim.warmup_steps=1",
                "optim.lr=3e-3",
            ],
            results_dir,
        )
    )
    assert lm_record["task"] == "librispeech_lm" and lm_record["data"]["corpus_lines"] == 60
    cfg = compose(
        ["task=librispeech100", f"task.data_dir={data}", "task.tokenizer=char", "backbone=asr_transformer", *TINY]
    )
    task = resolve("task", "librispeech")(cfg.task)
    task.setup("fit")
    lm = load_language_model(lm_record["run_dir"], task.tokenizer.digest, task.vocab_size)
    torch.manual_seed(0)
    model = resolve("backbone", cfg.backbone.type)(cfg.backbone, task).eval()
    batch = collate_speech([task.eval_sets[0][i] for i in range(3)])
    args = (batch["features"], batch["feature_mask"])
    kw = {"beam_size": 4, "ctc_weight": 0.4, "max_len_ratio": 0.5, "ranked": True}
    plain = model.decode(*args, **kw)
    assert model.decode(*args, lm=lm, lm_weight=0.0, **kw) == plain
    fused = model.decode(*args, lm=lm, lm_weight=2.0, lm_temperature=1.15, **kw)
    assert fused != plain  # the LM changes which hypotheses the beam keeps and how they rank
    # the LM prefers what its corpus says: a repeated phrase scores higher than its words reversed
    ids = [task.tokenizer.BOS, *task.tokenizer.encode("THE CAT SAT ON A MAT")]
    rev = [task.tokenizer.BOS, *task.tokenizer.encode("MAT A ON SAT CAT THE")]

    def logp(seq):
        with torch.no_grad():
            lp = lm(torch.tensor([seq])).log_softmax(-1)[0]
        return float(lp[torch.arange(len(seq) - 1), torch.tensor(seq[1:])].sum())

    assert logp(ids) > logp(rev)
    # an LM trained with other tokens is refused, in one line
    with pytest.raises(ConfigError, match="trained with other tokens than this task's"):
        load_language_model(lm_record["run_dir"], "0" * 16, task.vocab_size)
    # the end-to-end fusion: an ASR run whose final evaluation fuses this LM
    record = run(
        compose(
            [
                *_common(data),
                "preset=speech/transformer_960h",
                "task.train_splits=[train-clean-100]",
                "task.tokenizer=char",
                *PRESET_ON_CPU,
                *TINY,
                "gfsa.layers=none",
                "task.test_decoding.beam_size=2",
                f"task.lm_checkpoint={lm_record['run_dir']}",
            ],
            results_dir,
        )
    )
    final = record["history"][-1]["final"]["decoding"]
    assert (final["lm_weight"], final["temperature"], final["lm_temperature"]) == (0.6, 1.15, 1.15)
    saved = torch.load(Path(record["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and all(k.startswith(("model.", "split_metrics.", "accuracy.")) for k in saved)  # the LM is not saved
    with pytest.raises(ConfigError, match=r"task.test_decoding.lm_weight=0.6 fuses a language model"):
        run(
            compose(
                [*_common(data), "preset=speech/transformer_960h", "task.train_splits=[train-clean-100]"], results_dir
            )
        )
    assert (
        json.loads((Path(lm_record["run_dir"]) / "result.json").read_text())["data"]["tokenizer"]
        == task.tokenizer.digest
    )
