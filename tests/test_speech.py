"""Speech zoo: Transformer (Speech2Text) and Branchformer ASR on LibriSpeech through the real run path.

The data is a LibriSpeech-layout tree (gfsa/zoo/demo/speech.py): ``<split>/<speaker>/<chapter>/`` with FLAC
files written by soundfile (synthetic tones, one per word) and ``<speaker>-<chapter>.trans.txt``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jiwer
import pytest
import soundfile
import torch
from conftest import CONF_DIR, FAST, REPO, compose

import gfsa
from gfsa.ops.tables import load_table
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo.speech import write_librispeech

TINY = [
    "backbone.d_model=32",
    "backbone.encoder_layers=2",
    "backbone.decoder_layers=1",
    "backbone.attention_heads=4",
    "backbone.ffn_dim=64",
    "backbone.conv_channels=32",
    "backbone.max_source_positions=512",
    "backbone.max_target_positions=128",
]
TINY_BRANCHFORMER = [*TINY, "backbone.csgu_units=64", "backbone.csgu_kernel=7"]
PRESET_ON_CPU = ["trainer.precision=32-true", "trainer.check_val_every_n_epoch=1", "optim.warmup_steps=1"]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("GFSA_CACHE_DIR", str(d))
    return d


def _common(data: Path) -> list[str]:
    return [
        *FAST,
        "task=librispeech100",
        f"task.data_dir={data}",
        "task.batch_size=4",
        "task.eval_batch_size=3",
        "task.num_workers=0",
        "task.beam_size=2",
        "task.max_decode_ratio=0.5",
    ]


def test_asr_transformer_baseline_and_gfsa_end_to_end(tmp_path, results_dir, cache_dir):
    """The paper preset itself (K=4, Adam + Noam warm-up, SpecAugment, CTC rescoring), at a tiny size on CPU."""
    data = write_librispeech(tmp_path / "LibriSpeech")
    common = [*_common(data), "preset=speech/transformer_100h", "task.tokenizer=char", *PRESET_ON_CPU, *TINY]
    base = run(compose([*common, "gfsa.layers=none"], results_dir))
    record = run(compose([*common, "gfsa.layers=all"], results_dir))
    for r in (base, record):
        assert {"wer", "test_clean_wer", "test_other_wer", "loss", "test_clean_loss"} <= set(r["metrics"])
        assert r["metrics"]["wer"]["direction"] == "down" and r["metrics"]["wer"]["value"] >= 0
    # Only the encoder was patched: 2 encoder layers × 4 heads, none in the decoder.
    assert record["gfsa"]["layers"] == [0, 1] and record["gfsa"]["added_parameters"] == 2 * 4
    assert all(".decoder." not in name for name in record["gfsa"]["coefficients"])
    assert record["comparison"]["baseline_run"] == base["run_dir"]
    # Batches by duration vary in size: no samples/s from a fixed batch size, the epochs' own count instead.
    assert "samples_per_s" not in record["timing"] and record["timing"]["train_epoch_samples_per_s"] > 0


def test_branchformer_unigram_end_to_end(tmp_path, results_dir, cache_dir):
    data = write_librispeech(tmp_path / "LibriSpeech")
    record = run(
        compose(
            [
                *_common(data),
                "backbone=branchformer",
                "task.tokenizer=unigram",
                "task.vocab_size=24",
                "gfsa.K=3",
                "gfsa.layers=all",
                "with_baseline=false",
                *TINY_BRANCHFORMER,
            ],
            results_dir,
        )
    )
    assert record["gfsa"]["added_parameters"] == 2 * 4
    assert {"wer", "test_clean_wer", "test_other_wer"} <= set(record["metrics"])
    assert len(list((cache_dir / "tokenizers").glob("unigram24-*.model"))) == 1  # trained once, cached


# --------------------------------------------------------------------------------------------------
# bad input


def test_transcript_line_without_audio_fails_before_any_run_dir(tmp_path, results_dir, cache_dir):
    data = write_librispeech(tmp_path / "LibriSpeech")
    missing = next((data / "dev-clean").rglob("*.flac"))
    missing.unlink()
    with pytest.raises(ConfigError, match=rf"trans.txt:\d+: no audio file {missing.name} for utterance"):
        run(compose([*_common(data), "backbone=asr_transformer", "task.tokenizer=char", *TINY], results_dir))
    assert not any(results_dir.iterdir())


def test_wrong_sample_rate_is_resampled_or_refused(tmp_path, results_dir, cache_dir, caplog):
    from gfsa.zoo.tasks.speech import LibriSpeechTask
    from gfsa.zoo.tasks.speech_data import read_audio

    data = write_librispeech(tmp_path / "LibriSpeech")
    odd = next((data / "test-other").rglob("*.flac"))
    audio, _ = soundfile.read(odd, dtype="float32")
    soundfile.write(odd, audio[::2], 8000)  # the same tones at 8 kHz
    cfg = [*_common(data), "backbone=asr_transformer", "task.tokenizer=char", *TINY]
    with pytest.raises(ConfigError, match=rf"{odd.name}: 8000 Hz audio, expected 16000: set task.resample=true"):
        run(compose([*cfg, "task.resample=false"], results_dir))
    assert not any(results_dir.iterdir())
    with caplog.at_level("WARNING"):
        task = LibriSpeechTask(compose(cfg).task)
        task.setup("fit")
    assert "1 audio file(s) are not 16000 Hz" in caplog.text and task.data_report["resampled_files"] == 1
    assert len(read_audio(str(odd))) == 2 * len(audio[::2])  # 16 kHz again
    item = task.eval_sets[2][[u.path for u in task.eval_sets[2].utts].index(str(odd))]
    assert item["features"].shape[1] == 80


def test_missing_split_and_bad_tokenizer_are_named(tmp_path, results_dir, cache_dir):
    data = write_librispeech(tmp_path / "LibriSpeech", splits={"train-clean-100": 2, "dev-clean": 1})
    base = [*_common(data), "backbone=asr_transformer", *TINY]
    with pytest.raises(ConfigError, match=r"has no test-clean, test-other"):
        run(compose(base, results_dir))
    with pytest.raises(ConfigError, match=r"task.tokenizer=bpe: choose char or unigram"):
        run(compose([*base, "task.tokenizer=bpe", "task.eval_splits=[dev-clean]"], results_dir))
    assert not any(results_dir.iterdir())


# --------------------------------------------------------------------------------------------------
# identity at init, decoding, metrics


def _task_and_batch(tmp_path, tokenizer="char"):
    from gfsa.zoo.tasks.speech import LibriSpeechTask
    from gfsa.zoo.tasks.speech_data import collate_speech

    data = write_librispeech(tmp_path / "LibriSpeech")
    task = LibriSpeechTask(
        compose(["task=librispeech100", f"task.data_dir={data}", f"task.tokenizer={tokenizer}"]).task
    )
    task.setup("fit")
    return task, collate_speech([task.train_set[i] for i in range(3)])


@pytest.mark.parametrize(("backbone", "K"), [("asr_transformer", 4), ("branchformer", 3)])
def test_identity_at_init_and_encoder_only(tmp_path, cache_dir, backbone, K):
    from gfsa.nn.attention import GFSACoefficients
    from gfsa.runner.registry import resolve
    from gfsa.zoo.backbones import patch_target

    task, batch = _task_and_batch(tmp_path)
    cfg = compose([f"backbone={backbone}", *(TINY_BRANCHFORMER if backbone == "branchformer" else TINY)]).backbone
    torch.manual_seed(0)
    model = resolve("backbone", cfg.type)(cfg, task).eval()
    patched = copy.deepcopy(model)
    gfsa.patch(patch_target(patched), layers="all", K=K)
    args = (batch["features"], batch["feature_mask"], batch["tokens"])
    with torch.no_grad():
        h0, m0 = model.encode(*args[:2])
        h1, m1 = patched.encode(*args[:2])
        assert torch.equal(m0, m1) and torch.allclose(h0, h1, atol=1e-5), (h0 - h1).abs().max()
        assert torch.allclose(model(*args)["loss"], patched(*args)["loss"], atol=1e-5)
        for m in patched.modules():
            if isinstance(m, GFSACoefficients):
                m.wK.fill_(0.5)
        assert not torch.allclose(h0, patched.encode(*args[:2])[0], atol=1e-4)
    coeffs = [n for n, m in patched.named_modules() if isinstance(m, GFSACoefficients)]
    assert len(coeffs) == 2 and all("decoder" not in n for n in coeffs)


def test_beam_search_agrees_with_greedy_and_rescoring(tmp_path, cache_dir):
    """Beam 1 = step-by-step greedy decoding; beam search never scores worse than greedy."""
    from gfsa.runner.registry import resolve

    task, batch = _task_and_batch(tmp_path)
    cfg = compose(["backbone=asr_transformer", *TINY]).backbone
    torch.manual_seed(0)
    model = resolve("backbone", cfg.type)(cfg, task).eval()
    feats, mask = batch["features"], batch["feature_mask"]
    greedy = model.decode(feats, mask, beam_size=1, max_len_ratio=0.5)
    with torch.no_grad():
        hidden, hmask = model.encode(feats, mask)
        limit = (hmask.sum(-1).float() * 0.5).ceil().long()
        for b in range(len(greedy)):
            seq = [task.tokenizer.BOS]
            for _ in range(int(limit[b])):
                logits = model.decoder_logits(torch.tensor([seq]), hidden[b : b + 1], hmask[b : b + 1])[0, -1]
                logits[[task.tokenizer.PAD, task.tokenizer.BOS]] = float("-inf")
                nxt = int(logits.argmax())
                if nxt == task.tokenizer.EOS:
                    break
                seq.append(nxt)
            assert greedy[b] == seq[1:]
    beams = model._beam_search(hidden, hmask, 3, 0.5)
    best = [max(s for _, s, _ in cands) for cands in beams]
    greedy_scores = model._beam_search(hidden, hmask, 1, 0.5)
    assert all(b >= g[0][1] - 1e-4 for b, g in zip(best, greedy_scores, strict=True))
    rescored = model.decode(feats, mask, beam_size=3, ctc_weight=0.4, max_len_ratio=0.5)
    assert len(rescored) == 3 and all(isinstance(t, int) for h in rescored for t in h)


def test_wer_matches_jiwer_and_tokenizers_round_trip(tmp_path, cache_dir):
    from gfsa.zoo.tasks.speech import LibriSpeechTask
    from gfsa.zoo.tasks.speech_data import Tokenizer

    refs = ["THE CAT SAT ON A MAT", "A DOG RAN HOME", "SUN", "THE CAT"]
    hyps = ["THE CAT SAT ON MAT", "A DOG RUN HOME NOW", "", "CAT THE"]
    task = LibriSpeechTask(compose(["task=librispeech100"]).task)
    wer = task.metrics()
    wer.update(hyps[:2], refs[:2])
    wer.update(hyps[2:], refs[2:])
    assert wer.compute()["wer"].item() == pytest.approx(jiwer.wer(refs, hyps), abs=1e-6)
    for kind in ("char", "unigram"):
        tok = Tokenizer(kind, refs * 5, vocab_size=20)
        for text in refs:
            ids = tok.encode(text)
            assert min(ids) >= Tokenizer.SPECIALS and tok.decode([Tokenizer.BOS, *ids, Tokenizer.EOS]) == text


def test_specaugment_masks_bands_within_the_utterance():
    from gfsa.zoo.tasks.speech_data import spec_augment

    torch.manual_seed(0)
    x = torch.ones(4, 50, 80)
    mask = torch.arange(50)[None, :] < torch.tensor([50, 40, 30, 20])[:, None]
    out = spec_augment(x, mask, freq_masks=2, freq_width=10, time_masks=2, time_width=5)
    zeroed_bins = (out == 0).all(dim=1).sum(-1)  # whole frequency bands
    assert (zeroed_bins <= 20).all() and zeroed_bins.sum() > 0
    for b, n in enumerate([50, 40, 30, 20]):  # time masks stay inside the utterance
        times = (out[b] == 0).all(dim=-1).nonzero().flatten()
        assert (times < n).all()


# --------------------------------------------------------------------------------------------------
# presets and paper cells compose


def test_every_speech_preset_and_cell_composes():
    presets = sorted((CONF_DIR / "preset" / "speech").glob("*.yaml"))
    assert {p.stem for p in presets} == {
        "transformer_100h",
        "transformer_960h",
        "branchformer_100h",
        "branchformer_960h",
        "transformer_lm",
    }
    for path in presets:
        cfg = compose([f"preset=speech/{path.stem}"])
        if path.stem == "transformer_lm":
            assert cfg.gfsa.layers == "none" and cfg.task.type == "librispeech_lm" and cfg.task.vocab_size == 5000
            continue
        assert cfg.gfsa.layers == "all" and cfg.task.type == "librispeech" and cfg.task.vocab_size == 5000
        assert cfg.task.speed_perturb == [95, 100, 105] and cfg.trainer.precision == "32-true"
        assert cfg.task.average_checkpoints == 10 and cfg.task.test_decoding.beam_size == 66
        assert cfg.task.test_decoding.lm_weight == (0.6 if path.stem.endswith("960h") else 0.0)
    t = compose(["preset=speech/transformer_100h"])
    assert (t.gfsa.K, t.backbone.encoder_layers, t.backbone.decoder_layers, t.backbone.d_model) == (4, 12, 6, 512)
    assert (t.backbone.attention_heads, t.backbone.ctc_weight, t.optim.lr, t.optim.warmup_steps) == (
        4,
        0.3,
        1e-3,
        25000,
    )
    b = compose(["preset=speech/branchformer_960h"])
    assert (b.gfsa.K, b.backbone.encoder_layers, b.backbone.label_smoothing, b.optim.lr) == (3, 18, 0.1, 8e-4)
    assert b.task.train_splits == ["train-clean-100", "train-clean-360", "train-other-500"]
    cells = load_table(REPO / "experiments" / "speech.yaml").cells
    assert len(cells) == 16
    for cell in cells:
        cfg = compose(list(cell.overrides))
        assert (cfg.gfsa.layers == "none") == (cell.variant == "baseline")
        assert cell.metric in ("test_clean_wer", "test_other_wer") and cell.paper is not None
