"""Training lowers validation bits per byte and leaves a resumable checkpoint."""

import json

import pytest
from support.engines import TINY

from compressive_rt.ct_reference.train import TrainOptions, learning_rate, train

TEXT = ("The compressive transformer keeps a memory of past activations and compresses the "
        "oldest of them into a smaller memory, so that it can attend over a longer range. ")


def small_corpus(folder):
    folder.mkdir()
    for i in range(8):  # ~5 KB over 8 documents; fewer than 20, so the last is held out
        words = TEXT.split()
        rotated = " ".join(words[i:] + words[:i])
        (folder / f"doc{i}.txt").write_text((rotated + " ") * 4)
    return folder


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    assert learning_rate(0, 100, 3e-4, 10) == 1e-6
    assert abs(learning_rate(5, 100, 3e-4, 10) - (1e-6 + 0.5 * (3e-4 - 1e-6))) < 1e-12
    assert learning_rate(10, 100, 3e-4, 10) == 3e-4
    assert abs(learning_rate(55, 100, 3e-4, 10) - (1e-6 + 3e-4) / 2) < 1e-12
    assert learning_rate(100, 100, 3e-4, 10) == 1e-6


@pytest.mark.slow
def test_a_few_hundred_steps_lower_validation_bits_per_byte(tmp_path):
    opts = TrainOptions(config=TINY, data=str(small_corpus(tmp_path / "corpus")),
                        out=str(tmp_path / "ckpt"), steps=300, batch=4, lr=3e-3,
                        warmup_steps=20, val_every=0, val_segments=32, val_batch=1,
                        progress=False)
    result = train(opts, log=lambda _: None)
    first, last = result.history[0]["val_bpb"], result.history[-1]["val_bpb"]
    assert first > 7.5  # an untrained byte model: about log2(256) = 8 bits
    assert first - last > 1.0, result.history
    training = json.loads((tmp_path / "ckpt" / "training.json").read_text())
    assert training["step"] == 300 and training["tokens_seen"] == 300 * 4 * TINY.seg_len
    assert (tmp_path / "ckpt" / "optimizer.safetensors").is_file()


def test_resume_continues_from_the_saved_step(tmp_path):
    corpus = str(small_corpus(tmp_path / "corpus"))
    common = dict(config=TINY, data=corpus, batch=2, val_every=0, val_segments=2,
                  val_batch=1, progress=False)
    train(TrainOptions(out=str(tmp_path / "a"), steps=3, **common), log=lambda _: None)
    result = train(TrainOptions(out=str(tmp_path / "b"), steps=5, resume=str(tmp_path / "a"),
                                **common), log=lambda _: None)
    assert result.step == 5 and result.tokens_seen == 5 * 2 * TINY.seg_len
    assert [entry["step"] for entry in result.history] == [0, 3, 5]


def test_autoencoding_training_moves_the_decoder_and_saves_it(tmp_path):
    import torch

    from compressive_rt.ct_reference.checkpoint import load_model
    from compressive_rt.ct_reference.model import CompressiveTransformer

    config = TINY.replace(compress_fn="conv", aux_loss="autoencoding")
    torch.manual_seed(0)
    initial = CompressiveTransformer(config).state_dict()
    opts = TrainOptions(config=config, data=str(small_corpus(tmp_path / "corpus")),
                        out=str(tmp_path / "ckpt"), steps=6, batch=2, lr=1e-3, warmup_steps=1,
                        val_every=0, val_segments=2, val_batch=1, progress=False)
    train(opts, log=lambda _: None)  # seed 0: starts from the same initial weights
    saved, _ = load_model(tmp_path / "ckpt")
    assert saved.config.aux_loss == "autoencoding"
    for name in ("ae_decoders.0.transposed.weight", "compressors.0.strided.weight"):
        assert not torch.equal(saved.state_dict()[name], initial[name]), name


def test_ctrt_train_aux_loss_flag_is_validated_against_the_compressor(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "compressive_rt.cli.main", "train",
         "--config", '{"compress_fn": "max_pool"}', "--aux-loss", "autoencoding",
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: aux_loss='autoencoding' trains an auto-encoding "
                                    "decoder g"), result.stderr
    assert not (tmp_path / "x").exists()
