"""`ctrt score` and `ctrt generate`: many prompts, empty and one-byte inputs, user errors."""

import json

import numpy as np
import pytest

from compressive_rt.cli.main import main
from compressive_rt.runtime.generate import generate
from compressive_rt.runtime.sampling import Sampling
from compressive_rt.runtime.score import score_documents, total_bits_per_byte
from compressive_rt.runtime.session import Session

GREEDY = Sampling(greedy=True)
EMPTY_PROMPT = ("the prompt is empty: the model has no start-of-text token, so the first byte "
                "would have nothing to condition on; give at least one byte")


def ctrt(capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args])
    out, err = capsys.readouterr()
    return code, out, err


def alone(engine_dir, prompt: bytes, max_new_tokens: int) -> bytes:
    return generate(Session(engine_dir), prompt, max_new_tokens, GREEDY)


def test_generate_json_gives_every_prompt_in_order_each_as_if_alone(engine, capsys, tmp_path):
    _, engine_dir = engine("conv")
    prompt_file = tmp_path / "prompt.bin"
    prompt_file.write_bytes(b"caf\xc3\xa9 \xff and seventeen")  # not valid UTF-8
    code, out, _ = ctrt(capsys, "generate", str(engine_dir), "--prompt", "hello",
                        "--prompt-file", str(prompt_file), "--prompt", "x" * 9, "--streams", "2",
                        "--greedy", "--max-new-tokens", "12", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["streams"] == 2 and report["max_new_tokens"] == 12
    prompts = [b"hello", prompt_file.read_bytes(), b"x" * 9]
    assert [r["prompt"] for r in report["requests"]] == \
        ["hello", "caf\u00e9 \ufffd and seventeen", "xxxxxxxxx"]
    for request, prompt in zip(report["requests"], prompts):
        expected = alone(engine_dir, prompt, 12)
        assert request["tokens"] == list(expected)
        assert request["text"] == expected.decode("utf-8", errors="replace")
        assert request["finish_reason"] == "length"


def test_generate_runs_as_many_streams_as_prompts_up_to_eight(engine, capsys):
    _, engine_dir = engine("conv")
    for count, streams in ((3, 3), (10, 8)):
        prompts = [arg for i in range(count) for arg in ("--prompt", f"p{i}")]
        code, out, _ = ctrt(capsys, "generate", str(engine_dir), *prompts, "--greedy",
                            "--max-new-tokens", "1", "--json")
        assert code == 0
        report = json.loads(out)
        assert report["streams"] == streams and len(report["requests"]) == count


def test_generate_prints_each_text_under_a_header_when_it_finishes(engine, capsys):
    _, engine_dir = engine("conv")
    code, out, _ = ctrt(capsys, "generate", str(engine_dir), "--prompt", "ab", "--prompt",
                        "0123456789", "--greedy", "--max-new-tokens", "6")
    assert code == 0
    texts = [alone(engine_dir, p, 6).decode("utf-8", errors="replace")
             for p in (b"ab", b"0123456789")]
    # both start at once; "ab" needs one step for its prompt, "0123456789" two
    assert out == (f"=== request 1/2: 6 bytes (length) after prompt 'ab' ===\n{texts[0]}\n"
                   f"=== request 2/2: 6 bytes (length) after prompt '0123456789' ===\n"
                   f"{texts[1]}\n")


def test_generate_with_one_prompt_streams_its_text(engine, capsys):
    _, engine_dir = engine("conv")
    code, out, err = ctrt(capsys, "generate", str(engine_dir), "--prompt", "abc", "--greedy",
                          "--max-new-tokens", "9")
    assert code == 0
    assert out == alone(engine_dir, b"abc", 9).decode("utf-8", errors="replace") + "\n"
    assert err == "backend: onnxruntime-cpu\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", "a", "--prompt", ""], f"prompt 2 of 2: {EMPTY_PROMPT}"),
    ([], "no prompt given: add --prompt TEXT or --prompt-file PATH (each repeatable)"),
    (["--prompt", "a", "--streams", "0"], "--streams must be >= 1, got 0"),
    (["--prompt-file", "no/such/file"], "prompt file no/such/file is not a readable file"),
    (["--prompt", "a", "--max-new-tokens", "-2"],
     "prompt 1 of 1: max_new_tokens must be an integer >= 0, got -2"),
])
def test_generate_refuses_bad_requests_with_one_error_line(engine, capsys, args, message):
    _, engine_dir = engine("conv")
    code, out, err = ctrt(capsys, "generate", str(engine_dir), *args)
    assert code == 2 and out == ""
    assert err.splitlines()[-1] == f"error: {message}"


def test_score_reports_empty_and_one_byte_documents_as_undefined(engine, capsys, tmp_path):
    _, engine_dir = engine("conv")
    empty, one, text = tmp_path / "empty.txt", tmp_path / "one.txt", tmp_path / "doc.txt"
    empty.write_bytes(b"")
    one.write_bytes(b"a")
    text.write_bytes(b"the compressive transformer keeps old memories. " * 3)
    session = Session(engine_dir)
    expected = score_documents(session, [("doc", text.read_bytes())])[0].bits_per_byte
    files = [str(empty), str(one), str(text)]

    code, out, _ = ctrt(capsys, "score", str(engine_dir), *files, "--json")
    assert code == 0
    report = json.loads(out)
    assert [d["bits_per_byte"] for d in report["documents"][:2]] == [None, None]
    assert [d["bits"] for d in report["documents"][:2]] == [0.0, 0.0]
    assert report["documents"][2]["bits_per_byte"] == pytest.approx(expected, abs=1e-6)
    assert report["bits_per_byte"] == pytest.approx(expected, abs=1e-6)

    code, out, _ = ctrt(capsys, "score", str(engine_dir), *files)
    assert code == 0
    assert out.splitlines() == [
        f"     n/a bpb           0 bytes  {empty}",
        f"     n/a bpb           1 bytes  {one}",
        f"{expected:8.4f} bpb         144 bytes  {text}",
        f"{expected:8.4f} bpb         145 bytes  total",
        "n/a: fewer than two bytes, so no byte is predicted (there is no start token)"]

    code, out, _ = ctrt(capsys, "score", str(engine_dir), str(empty), "--json")
    assert code == 0 and json.loads(out)["bits_per_byte"] is None


def test_scoring_short_documents_takes_no_stream_and_leaves_none(engine):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=2)
    progress = []
    scores = score_documents(session, [("empty", b""), ("one", b"a"), ("two", b"ab")],
                             on_tokens=progress.append)
    assert [s.bits_per_byte is None for s in scores] == [True, True, False]
    assert scores[2].predicted == 1 and scores[2].bits > 0
    assert sum(progress) == 3 and session.streams == []
    assert total_bits_per_byte(scores[:2]) is None
    assert total_bits_per_byte(scores) == scores[2].bits


def test_a_failed_engine_call_while_scoring_leaves_no_stream(engine, monkeypatch):
    _, engine_dir = engine("conv")
    session = Session(engine_dir, max_streams=2)
    calls = []

    def failing_feed(feed, want_logits=True):
        calls.append(sorted(feed))
        raise RuntimeError("engine call failed")

    monkeypatch.setattr(session, "feed", failing_feed)
    documents = [("a", np.arange(40, dtype=np.uint8).tobytes()), ("b", b"abc")]
    with pytest.raises(RuntimeError, match="engine call failed"):
        score_documents(session, documents)
    assert calls == [[0, 1]] and session.streams == []
