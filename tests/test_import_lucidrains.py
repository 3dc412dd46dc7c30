"""Checkpoints of compressive-transformer-pytorch 0.4.0 (lucidrains) run here unchanged: the
imported eager model and the exported engine reproduce the package's own forward."""

import argparse
import itertools
import json

import numpy as np
import pytest
import torch

ctp = pytest.importorskip(
    "compressive_transformer_pytorch",
    reason="compressive-transformer-pytorch is not installed (pip install --no-deps "
           "compressive-transformer-pytorch==0.4.0 mogrifier einops)")

from compressive_transformer_pytorch import AutoregressiveWrapper  # noqa: E402
from compressive_transformer_pytorch import CompressiveTransformer as TheirModel  # noqa: E402
from support.rules import FP32  # noqa: E402

from compressive_rt.cli.import_checkpoint import register  # noqa: E402
from compressive_rt.ct_reference.checkpoint import load_model  # noqa: E402
from compressive_rt.ct_reference.importers import (  # noqa: E402
    ImportCheckpointError,
    import_lucidrains,
    import_lucidrains_model,
    lucidrains_config,
)
from compressive_rt.export.pipeline import export_model  # noqa: E402
from compressive_rt.runtime.generate import generate  # noqa: E402
from compressive_rt.runtime.sampling import Sampling  # noqa: E402
from compressive_rt.runtime.session import Session  # noqa: E402

SEGMENTS = 12
EAGER_TOL = 1e-5
ENGINE_TOL = FP32

# Each argument of section 1 of the issue appears at a non-default value in some configuration.
CONFIGS = {
    # only the required arguments: mem_len = seq_len, cmem_len = mem_len // 4, heads 8,
    # GRU-gated residuals, enhanced recurrence, memory on every layer
    "package_defaults": dict(num_tokens=256, dim=16, seq_len=4, depth=2),
    "mogrifier": dict(num_tokens=64, dim=16, seq_len=4, depth=3, mem_len=8, cmem_len=4,
                      cmem_ratio=2, heads=2, mogrify_gru=True),
    "some_memory_layers_glu_emb_dim": dict(
        num_tokens=64, dim=16, emb_dim=8, seq_len=4, depth=3, mem_len=8, cmem_len=6,
        cmem_ratio=2, heads=4, memory_layers=[1, 3], ff_glu=True),
    "plain_residual_no_enhanced_recurrence": dict(
        num_tokens=256, dim=16, emb_dim=24, seq_len=4, depth=3, mem_len=4, cmem_len=2,
        cmem_ratio=2, heads=2, memory_layers=[2], enhanced_recurrence=False,
        gru_gated_residual=False, attn_dropout=0.1, ff_dropout=0.1),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: thread start-up costs more than it saves on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def their_model(args: dict, seed: int = 0, std: float = 0.2) -> TheirModel:
    """Random weights (their position table starts at zeros: make it matter too). Large std
    with zero biases makes greedy decoding depend on the context instead of the biases."""
    torch.manual_seed(seed)
    net = TheirModel(**args)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.normal_(0.0, std)
            if std > 0.2 and name.endswith("bias"):
                param.zero_()
    return net.eval()


def their_logits(net: TheirModel, tokens: torch.Tensor) -> tuple[list[torch.Tensor], object]:
    """Full segments through their forward -> logits per segment, final memory."""
    memory, logits = None, []
    with torch.no_grad():
        for start in range(0, tokens.shape[1], net.seq_len):
            out, memory, _ = net(tokens[:, start:start + net.seq_len], memories=memory)
            logits.append(out)
    return logits, memory


def memory_layers(config) -> list[int]:
    return [i for i in range(config.n_layers) if config.has_memory(i)]


def assert_memory_equal(ours_mem: np.ndarray, ours_cmem: np.ndarray | None, their, config,
                        tol: float) -> None:
    """ours [N, ..., M or C, d] right-aligned; theirs [memory layers, ..., filled, d]."""
    layers = memory_layers(config)
    filled = their.mem.shape[-2]
    np.testing.assert_allclose(ours_mem[layers][..., config.mem_len - filled:, :],
                               their.mem.numpy(), atol=tol, rtol=0)
    filled_c = their.compressed_mem.shape[-2]
    if filled_c:
        np.testing.assert_allclose(ours_cmem[layers][..., config.cmem_len - filled_c:, :],
                                   their.compressed_mem.numpy(), atol=tol, rtol=0)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (their model, our eager model, engine dir), exported once per module."""
    cache = {}

    def get(name: str, std: float = 0.2):
        if (name, std) not in cache:
            net = their_model(CONFIGS[name], std=std)
            ours = import_lucidrains_model(net)
            engine_dir = tmp_path_factory.mktemp("lucidrains") / name
            export_model(ours, engine_dir, verify_segments=2, log=lambda *_: None)
            cache[name, std] = net, ours, engine_dir
        return cache[name, std]

    return get


@pytest.mark.parametrize("name", CONFIGS)
def test_eager_import_reproduces_their_forward_and_memories(name):
    net = their_model(CONFIGS[name])
    ours = import_lucidrains_model(net)
    seg_len = net.seq_len
    tokens = torch.randint(0, CONFIGS[name]["num_tokens"], (2, SEGMENTS * seg_len),
                           generator=torch.Generator().manual_seed(1))
    their_memory, memory = None, ours.init_memory(2)
    with torch.no_grad():
        for start in range(0, tokens.shape[1], seg_len):
            segment = tokens[:, start:start + seg_len]
            if start % (3 * seg_len) == 0:  # a partial segment now and then
                partial, _, _ = net(segment[:, :seg_len - 1], memories=their_memory)
                got = ours(segment[:, :seg_len - 1], memory).logits
                assert (got - partial).abs().max().item() <= EAGER_TOL
            expected, their_memory, _ = net(segment, memories=their_memory)
            out = ours(segment, memory)
            memory = out.memory
            assert (out.logits - expected).abs().max().item() <= EAGER_TOL
            assert_memory_equal(memory.mem.numpy(), memory.cmem.numpy(), their_memory,
                                ours.config, EAGER_TOL)
    assert int(memory.mem_len[0]) == ours.config.mem_len
    assert int(memory.cmem_len[0]) == ours.config.cmem_len


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_of_imported_model_reproduces_their_forward(imported, name):
    """Stream 0 goes a segment per call (`segment`), stream 1 three tokens per call across
    segment boundaries (`extend` + `commit`), in the same batch."""
    net, ours, engine_dir = imported(name)
    seg_len = net.seq_len
    tokens = torch.randint(0, CONFIGS[name]["num_tokens"], (2, SEGMENTS * seg_len),
                           generator=torch.Generator().manual_seed(2))
    expected_segments, their_memory = their_logits(net, tokens)
    expected = torch.cat(expected_segments, dim=1).numpy()  # [2, n, V]
    session = Session(engine_dir, max_streams=2)
    streams = [session.add_stream() for _ in range(2)]
    feed = tokens.numpy().astype(np.int32)
    by_segment = [feed[0, a:a + seg_len] for a in range(0, feed.shape[1], seg_len)]
    by_three = [feed[1, a:a + 3] for a in range(0, feed.shape[1], 3)]
    got = {s: [] for s in streams}
    for segment, three in itertools.zip_longest(by_segment, by_three):
        chunks = {s: c for s, c in zip(streams, (segment, three)) if c is not None}
        for s, logits in session.feed(chunks).items():
            got[s].append(logits)
    for i, s in enumerate(streams):
        assert np.abs(np.concatenate(got[s]) - expected[i]).max() <= ENGINE_TOL
    states = [session.stream_state(s) for s in streams]
    mem = np.stack([state["mem"] for state in states], axis=1)  # [N, B, M, d]
    cmem = np.stack([state["cmem"] for state in states], axis=1)
    assert_memory_equal(mem, cmem, their_memory, ours.config, ENGINE_TOL)


def greedy(logits: torch.Tensor, thres: float = 0.0) -> torch.Tensor:
    """A filter for their generate that keeps only the argmax (multinomial then picks it)."""
    kept = torch.full_like(logits, float("-inf"))
    return kept.scatter(1, logits.argmax(dim=-1, keepdim=True), 0.0)


@pytest.mark.parametrize("prompt_len", [14, 8])  # mid-segment, and a whole number of segments
def test_greedy_generation_through_the_runtime_matches_their_generate(imported, prompt_len):
    # Without enhanced recurrence only: with it, their forward on a partial segment returns the
    # memory rolled by one layer (it rolls before reading and returns what it read), so their
    # generate, which feeds partial segments, reads memories shifted by the number of partial
    # steps since the last full segment; scoring (full segments) is unaffected.
    net, _, engine_dir = imported("plain_residual_no_enhanced_recurrence", std=1.0)  # bytes
    prompt = torch.randint(0, 256, (prompt_len,), generator=torch.Generator().manual_seed(3))
    theirs = AutoregressiveWrapper(net).generate(prompt, 30, filter_logits_fn=greedy)
    ours = generate(Session(engine_dir), bytes(prompt.tolist()), 30, Sampling(greedy=True))
    # Their generate returns out[:, prompt_len:] of (the prompt's last segment + the 30 new
    # tokens), which drops the first prompt_len - len(last segment) new tokens.
    last_chunk = (prompt_len - 1) % net.seq_len + 1
    assert list(ours)[prompt_len - last_chunk:] == theirs.tolist()
    assert len(theirs) == 30 - (prompt_len - last_chunk)
    assert len(set(ours)) > 3  # the context matters, not only the biases


def test_cli_import_writes_a_checkpoint_that_reproduces_their_model(tmp_path):
    args = CONFIGS["mogrifier"]
    net = their_model(args)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "args.json").write_text(json.dumps(args))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    parsed = parser.parse_args(["import-checkpoint", "--from", "compressive-transformer-pytorch",
                                str(tmp_path / "model.pt"), "--config",
                                str(tmp_path / "args.json"), str(tmp_path / "ckpt")])
    assert parsed.handler(parsed) == 0
    ours, metadata = load_model(tmp_path / "ckpt")
    assert metadata["imported_from"]["arguments"] == args
    tokens = torch.randint(0, 64, (1, 4))
    with torch.no_grad():
        expected, _, _ = net(tokens)
        got = ours(tokens, ours.init_memory(1)).logits
    assert (got - expected).abs().max().item() <= EAGER_TOL


def test_an_unsupported_argument_is_refused_by_name():
    with pytest.raises(ImportCheckpointError, match="ff_mult"):
        lucidrains_config({**CONFIGS["package_defaults"], "ff_mult": 2})


def test_arguments_this_engine_cannot_run_are_refused_with_the_reason():
    # their memory may be any length >= seq_len; here it must be a multiple of it
    with pytest.raises(ImportCheckpointError, match="mem_len.*multiple of seg_len"):
        lucidrains_config({**CONFIGS["package_defaults"], "mem_len": 6})


def test_a_missing_weight_is_named():
    args = CONFIGS["mogrifier"]
    state = their_model(args).state_dict()
    del state["attn_layers.1.fn.fn.to_kv.weight"]
    with pytest.raises(ImportCheckpointError, match=r"attn_layers\.1\.fn\.fn\.to_kv\.weight"):
        import_lucidrains(state, args)


def test_an_extra_weight_is_named():
    args = CONFIGS["plain_residual_no_enhanced_recurrence"]
    state = their_model(args).state_dict()
    state["attn_layers.0.gru.weight_ih"] = torch.zeros(48, 16)
    with pytest.raises(ImportCheckpointError, match=r"attn_layers\.0\.gru\.weight_ih"):
        import_lucidrains(state, args)


def test_a_weight_of_the_wrong_shape_is_named():
    args = CONFIGS["mogrifier"]
    state = their_model(args).state_dict()
    state["pos_emb"] = torch.zeros(2, 15, 8)
    with pytest.raises(ImportCheckpointError, match=r"'pos_emb' has shape \(2, 15, 8\)"):
        import_lucidrains(state, args)


def test_a_live_autoregressive_wrapper_imports_like_its_network():
    net = their_model(CONFIGS["some_memory_layers_glu_emb_dim"])
    wrapped = import_lucidrains_model(AutoregressiveWrapper(net))
    direct = import_lucidrains_model(net)
    assert wrapped.config == direct.config
    assert wrapped.config.memory_layers == (0, 2) and wrapped.config.embed_dim == 8
    for name, tensor in direct.state_dict().items():
        assert torch.equal(wrapped.state_dict()[name], tensor), name
