"""r1_rewards through TRL's and verl's calling conventions: plain and conversational completions, dataset
columns as keyword lists, None for what cannot be judged, the GIL released during batches."""

import shutil
import threading
import time

import pytest

import r1_rewards as rr

GOOD = "<think>\nTwo plus two.\n</think>\n<answer>\n$\\boxed{4}$\n</answer>"
WRONG = "<think>\nTwo plus two.\n</think>\n<answer>\n$\\boxed{5}$\n</answer>"


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_accuracy_plain_completions_one_float_each():
    out = rr.accuracy_reward([GOOD, WRONG, "no answer at all"], ["4", "4", "4"])
    assert out == [1.0, 0.0, 0.0]


def test_accuracy_conversational_scores_last_assistant_message():
    completions = [
        conv(GOOD),
        [{"role": "assistant", "content": "\\boxed{4}"}, {"role": "user", "content": "sure?"},
         {"role": "assistant", "content": "\\boxed{5}"}],
    ]
    assert rr.accuracy_reward(completions, ["4", "4"]) == [1.0, 0.0]


def test_accuracy_gold_as_worked_solution_and_none_when_no_gold():
    sol = ["We add: $2+2=\\boxed{4}$.", "", "The roots are $\\boxed{2}$ and $\\boxed{3}$."]
    out = rr.accuracy_reward(["\\boxed{4}", "\\boxed{4}", "\\boxed{3, 2}"], sol)
    assert out == [1.0, None, 1.0]


def test_accuracy_accepts_trl_extra_columns():
    out = rr.accuracy_reward([GOOD], ["4"], prompts=["What is 2+2?"], completion_ids=[[1, 2]], trainer_state=None)
    assert out == [1.0]


def test_trl_keyword_call_for_every_reward():
    # GRPOTrainer calls reward_func(prompts=..., completions=..., completion_ids=..., **columns, trainer_state=...).
    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    completions = [conv(GOOD), conv(WRONG)]
    common = dict(prompts=prompts, completions=completions, completion_ids=[[1], [2]], trainer_state=None)
    assert rr.accuracy_reward(solution=["4", "4"], **common) == [1.0, 0.0]
    assert rr.format_reward(solution=["4", "4"], **common) == [1.0, 1.0]
    assert rr.tag_count_reward(solution=["4", "4"], **common) == [1.0, 1.0]
    assert rr.language_consistency_reward(language=["en", "en"], **common) == [1.0, 1.0]


def test_accuracy_rejects_mismatched_lengths_and_bad_types():
    with pytest.raises(ValueError):
        rr.accuracy_reward([GOOD, GOOD], ["4"])
    with pytest.raises(TypeError):
        rr.accuracy_reward([42], ["4"])


def test_format_and_tag_count():
    assert rr.format_reward([GOOD, GOOD + " trailing", conv(GOOD)]) == [1.0, 0.0, 1.0]
    assert rr.tag_count_reward([GOOD, "<think>\nx"]) == [1.0, 0.25]


def test_language_consistency_column_and_default():
    en = "<think>\nWe add the two numbers together carefully.\n</think>\n<answer>\n4\n</answer>"
    zh = "<think>\n我们把两个数相加。\n</think>\n<answer>\n4\n</answer>"
    assert rr.language_consistency_reward([en, zh]) == [1.0, 0.0]
    assert rr.language_consistency_reward([en, zh], language=["en", "zh"]) == [1.0, 1.0]
    with pytest.raises(ValueError):
        rr.language_consistency_reward([en], language=["xx"])


def test_compute_score_verl_signature():
    assert rr.compute_score("lighteval/MATH", "so $\\boxed{\\frac{1}{2}}$", "0.5") == 1.0
    assert rr.compute_score("openai/gsm8k", "The answer is 72", "72", extra_info={"split": "test"}) == 1.0
    assert rr.compute_score("openai/gsm8k", "The answer is 71", 72) == 0.0
    assert rr.compute_score_batch(["\\boxed{1}", "\\boxed{2}"], ["1", "1"]) == [1.0, 0.0]


def test_answers_equivalent_tuple_assignment():
    assert rr.answers_equivalent("(x, y) = (1, 2)", "x = 1, y = 2")
    assert not rr.answers_equivalent("(x, y) = (1, 2)", "(2, 1)")


def sandbox_available():
    return shutil.which("unshare") is not None


def test_code_reward_per_sample_tests():
    tests = [[{"input": "2\n", "output": "4"}], {"inputs": ["3\n"], "outputs": ["6"]}]
    good = "```python\nprint(int(input()) * 2)\n```"
    try:
        out = rr.code_reward([good, "```python\nprint(0)\n```"], tests=tests)
    except ValueError as e:
        # A machine without isolation refuses unless the caller opts in.
        assert "no isolation" in str(e)
        out = rr.code_reward([good, "```python\nprint(0)\n```"], tests=tests, allow_unisolated=True)
    assert out == [1.0, 0.0]
    info = [{"test_cases": [{"input": "5\n", "output": "10"}]}]
    assert rr.code_reward([good], verification_info=info, allow_unisolated=True) == [1.0]


def test_batch_releases_the_gil():
    # While a large batch is scored in Rust, another Python thread keeps running: it can only append a
    # timestamp while it holds the GIL, so stamps strictly inside the call prove the GIL was released.
    golds = ["\\frac{1}{2}"] * 4000
    comps = ["so $\\boxed{0.5}$"] * 4000
    stamps = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    t0 = time.perf_counter()
    out = rr.accuracy_reward(comps, golds)
    t1 = time.perf_counter()
    done.set()
    t.join()
    assert out == [1.0] * 4000
    inside = [x for x in stamps if t0 < x < t1]
    assert len(inside) >= 2, f"the other thread never ran during a {1e3 * (t1 - t0):.1f} ms batch"
