"""Sampling: greedy stays exactly greedy, llama.cpp's sampler chain is seeded and honours its settings,
stop strings end the answer (also while streaming)."""

from __future__ import annotations

import pytest
from skimage import data

from edgebridge import Pipeline
from edgebridge.errors import InputError
from edgebridge.runtimes.llamacpp import LlamaSettings
from edgebridge.sampling import GenerationConfig, StopStrings
from tests.conftest import PROMPT, run_cli

IMAGE = [data.chelsea()]


def test_stop_strings_hold_back_what_may_become_one():
    stops = StopStrings(("END", "\n\n"))
    out = [stops.feed(p) for p in ("Hello E", "N", "D of it")]
    assert "".join(out) == "Hello " and stops.stopped
    stops = StopStrings(("END",))
    assert stops.feed("a E") == "a " and stops.feed("x") == "Ex" and stops.flush() == ""


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 1.5}, {"top_k": -2}, {"seed": -1},
                                 {"stop": ("",)}, {"max_new_tokens": 0}, {"temperature": float("nan")}])
def test_bad_settings_are_refused_by_name(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        GenerationConfig(**bad).check()


@pytest.mark.slow
def test_temperature_zero_and_top_k_one_are_greedy(clip_llama_f32):
    with Pipeline.from_bundle(clip_llama_f32.bundle, llm_settings=LlamaSettings.strict()) as pipe:
        greedy = pipe.generate(PROMPT, images=IMAGE, max_new_tokens=16).token_ids
        assert pipe.generate(PROMPT, images=IMAGE, config=GenerationConfig(max_new_tokens=16)).token_ids == greedy
        top1 = GenerationConfig(max_new_tokens=16, temperature=1.0, top_k=1, seed=5)
        assert pipe.generate(PROMPT, images=IMAGE, config=top1).token_ids == greedy  # through the sampler chain


@pytest.mark.slow
def test_a_seed_gives_the_same_tokens_and_seeds_differ(clip_llama_f32):
    hot = GenerationConfig(max_new_tokens=16, temperature=1.5, top_p=0.95, stop_at_eos=False)
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        runs = {seed: [pipe.generate(PROMPT, images=IMAGE, config=hot.with_(seed=seed)).token_ids for _ in range(2)]
                for seed in (1, 2, 3)}
    assert all(a == b for a, b in runs.values())
    assert len({tuple(a) for a, _ in runs.values()}) > 1


@pytest.mark.slow
def test_presence_penalty_and_stop_strings(clip_llama_f32):
    with Pipeline.from_bundle(clip_llama_f32.bundle) as pipe:
        plain = pipe.generate(PROMPT, images=IMAGE, max_new_tokens=24, stop_at_eos=False)
        penalised = pipe.generate(PROMPT, images=IMAGE, config=GenerationConfig(
            max_new_tokens=24, presence_penalty=100.0, stop_at_eos=False))
        assert len(set(penalised.token_ids)) == len(penalised.token_ids)  # no generated token twice
        assert len(set(plain.token_ids)) < len(plain.token_ids)  # the random model repeats itself without it
        stop = plain.text[len(plain.text) // 2:][:3]
        assert stop.strip()
        config = GenerationConfig(max_new_tokens=24, stop=(stop,), stop_at_eos=False)
        stopped = pipe.generate(PROMPT, images=IMAGE, config=config)
        pieces = list(stream := pipe.generate(PROMPT, images=IMAGE, config=config, stream=True))
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert plain.text.startswith(stopped.text) and len(stopped.text) < len(plain.text)
    assert "".join(pieces) == stopped.text == stream.result.text


@pytest.mark.slow
def test_cli_sampling_flags(clip_llama_f32):
    args = ["run", str(clip_llama_f32.bundle), "-p", "Hello there, how", "-n", "8", "--json", "--temperature", "1.2",
            "--top-k", "20", "--seed", "7"]
    first, again = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout or first.stdout.split('"timings"')[0] == again.stdout.split('"timings"')[0]
    proc = run_cli("run", str(clip_llama_f32.bundle), "-p", "hi", "--top-p", "2")
    assert proc.returncode == 2 and "top_p" in proc.stderr
