"""The golden cases (tests/golden/cases.json) that both runtimes are held to: the planner's
calls and sampling version 2's uniforms and token streams. native/tests/test_planner.cpp and
test_sampling.cpp read the same file."""

import json
from pathlib import Path

import numpy as np
import pytest

from compressive_rt.runtime.planner import plan_feed
from compressive_rt.runtime.sampling import BatchSampler, Sampling, uniforms

CASES = json.loads((Path(__file__).parent / "golden" / "cases.json").read_text())


@pytest.mark.parametrize("case", CASES["planner"], ids=lambda case: case["why"])
def test_the_planner_makes_the_golden_calls(case):
    calls = plan_feed(case["fills"], case["pending"], case["seg_len"])
    assert [[call.entry, list(call.streams), call.tokens] for call in calls] == case["calls"]


@pytest.mark.parametrize("case", CASES["uniforms"], ids=lambda case: str(case["seed"]))
def test_a_seeds_uniforms_are_the_golden_ones(case):
    counters = np.array(case["n"], dtype=np.uint64)
    got = uniforms(np.full(len(counters), case["seed"], dtype=np.uint64), counters)
    assert got.tolist() == case["u"]  # exact: 53-bit integers times 2**-53


@pytest.mark.parametrize("case", CASES["sampling"])
def test_a_request_draws_the_golden_tokens(case):
    logits = np.array([case["logits"]], dtype=np.float32)
    sampler = BatchSampler(1, logits.shape[1])
    sampling = Sampling(greedy=case["greedy"], temperature=case["temperature"],
                        top_k=case["top_k"], top_p=case["top_p"], seed=case["seed"])
    sampler.assign(0, sampling, sampling.stream_seed())
    drawn = [int(sampler.sample(logits, np.array([0]))[0]) for _ in case["tokens"]]
    assert drawn == case["tokens"]


def test_the_cases_cover_every_entry_point_and_the_rule_for_full_streams_with_nothing_pending():
    entries = {call[0] for case in CASES["planner"] for call in case["calls"]}
    assert entries == {"segment", "extend", "commit"}
    sitting_out = [case for case in CASES["planner"] if any(
        fill == case["seg_len"] and not pending
        for fill, pending in zip(case["fills"], case["pending"], strict=True))]
    assert sitting_out and all(
        i not in call[1] for case in sitting_out for call in case["calls"]
        for i, pending in enumerate(case["pending"]) if not pending)
