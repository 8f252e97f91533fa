"""Tuning as rounds of trial tasks: sampling, successive halving, selection independent of the
order trials finish in, and the serial run choosing what the parallel tasks choose."""

import random

import pytest

from mushroom import stages
from mushroom.config import ConfigError, parse_config, parse_model_config
from mushroom.fileio import read_json
from mushroom.trials import (
    FAILED,
    FINISHED,
    Trial,
    TrialResult,
    TrialsFailed,
    deal,
    first_round,
    round_epochs,
    round_sizes,
    select,
)
from tests.helpers import TINY_MODEL

TINY = {  # the tests' tiny MobileNetV3 from scratch, at 32 px, with a two-round search
    **TINY_MODEL,
    "model_name": "tiny",
    "image_size": 32,
    "tune": {"max_trials": 3, "epochs": 1, "rounds": 2, "halving_fraction": 0.5,
             "learning_rate": [0.001, 0.01], "dropout": [0.0, 0.3], "label_smoothing": [0.0, 0.1]},
    "train": {"head_epochs": 1, "fine_tune_epochs": 0, "patience": 1},
}


def _result(number: int, score: float | None, round_number: int = 1, status: str = FINISHED) -> TrialResult:
    trial = Trial(number=number, round=round_number, epochs=2,
                  hyperparameters={"learning_rate": 0.001 * number, "dropout": 0.1, "label_smoothing": 0.0})
    return TrialResult(trial=trial, status=status, score=score, error=None if status == FINISHED else "boom")


def test_rounds_halve_the_trials_and_multiply_the_epochs():
    assert round_sizes(8, 1, 0.5) == [8]
    assert round_sizes(8, 3, 0.5) == [8, 4, 2]
    assert round_sizes(9, 2, 1 / 3) == [9, 3]
    assert [round_epochs(2, r, 0.5) for r in (1, 2, 3)] == [2, 4, 8]
    assert round_epochs(3, 2, 1 / 3) == 9


def test_trials_are_dealt_to_at_most_the_parallel_tasks():
    trials = first_round([{"learning_rate": 0.01, "dropout": 0.1, "label_smoothing": 0.0}] * 5, epochs=1)
    assert [[t.number for t in share] for share in deal(trials, 2)] == [[1, 3, 5], [2, 4]]
    assert [[t.number for t in share] for share in deal(trials[::-1], 8)] == [[1], [2], [3], [4], [5]]
    assert [[t.number for t in share] for share in deal(trials, 1)] == [[1, 2, 3, 4, 5]]  # today's serial tune


def test_selection_does_not_depend_on_the_order_trials_finished_in():
    results = [_result(1, 0.50), _result(2, 0.75), _result(3, 0.75), _result(4, 0.25)]
    expected = select(results, rounds=2, fraction=0.5, epochs=2)
    for seed in range(5):
        shuffled = random.Random(seed).sample(results, len(results))
        assert select(shuffled, rounds=2, fraction=0.5, epochs=2) == expected
    survivors, best = expected
    assert best.trial.number == 2  # 2 and 3 tie: the lower number wins
    assert [(t.number, t.round, t.epochs, t.earlier_scores) for t in survivors] == [(2, 2, 4, (0.75,)),
                                                                                  (3, 2, 4, (0.75,))]
    assert survivors[0].hyperparameters == results[1].trial.hyperparameters
    # The last round continues nothing and returns its best.
    last = [_result(2, 0.6, round_number=2), _result(3, 0.9, round_number=2)]
    assert select(last, rounds=2, fraction=0.5, epochs=2) == ([], last[1])


def test_a_round_with_too_few_finished_trials_stops_with_one_line_naming_them():
    results = [_result(1, None, status=FAILED), _result(2, float("nan")), _result(3, 0.4), _result(4, None,
                                                                                                 status=FAILED)]
    with pytest.raises(TrialsFailed) as err:
        select(results, rounds=2, fraction=0.5, epochs=2)  # 2 must continue, 1 finished
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("tuning round 1: 1 of 4 trials finished, 2 needed; failed: trial 1: boom; ")
    assert "trial 2: no finite validation accuracy" in message and "trial 4: boom" in message
    # A failed trial that is not needed does not stop the run.
    assert select(results, rounds=1, fraction=0.5, epochs=2)[1].trial.number == 3


def test_a_trial_reads_back_from_kfp_json_whose_numbers_are_floats():
    trial = first_round([{"learning_rate": 0.01, "dropout": 0.2, "label_smoothing": 0.05}], epochs=3)[0]
    as_kfp = {**trial.to_dict(), "number": 1.0, "round": 1.0, "epochs": 3.0}
    assert Trial.from_dict(as_kfp) == trial
    assert trial.seed(42) != Trial.from_dict({**as_kfp, "number": 2}).seed(42)
    with pytest.raises(ValueError, match="not a tuning trial"):
        Trial.from_dict({"number": 1})


@pytest.mark.parametrize("tune, says", [
    ({"max_trials": 0}, "models.0.tune.max_trials: Input should be greater than or equal to 1"),
    ({"halving_fraction": 1.0}, "models.0.tune.halving_fraction: Input should be less than 1"),
    ({"halving_fraction": 0}, "models.0.tune.halving_fraction: Input should be greater than 0"),
    ({"max_trials": 2, "rounds": 3}, "a round must keep fewer trials than the one before"),
])
def test_bad_tuning_settings_are_one_line_naming_the_field(tune, says):
    data = {"name": "t", "dataset": {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"]},
            "models": [{**TINY, "tune": {**TINY["tune"], **tune}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    lines = [line for line in str(err.value).splitlines() if "tune" in line]
    assert len(lines) == 1 and says in lines[0], str(err.value)


def test_configurations_must_share_their_rounds_and_trials_must_fit_the_node_pool():
    base = {"name": "t", "dataset": {"source": "synthetic", "species": ["Amanita muscaria", "Boletus edulis"]}}
    other = {**TINY, "model_name": "other", "tune": {**TINY["tune"], "rounds": 1}}
    with pytest.raises(ConfigError, match="tune.rounds differs between configurations"):
        parse_config({**base, "models": [TINY, other]})
    pool = {"fit": "stage", "parallelism": 2, "trial_parallelism": 4,
            "node": {"cpu": "8", "memory": "32Gi", "reserved_cpu": "0", "reserved_memory": "0", "count": 3},
            "stages": {"tune": {"cpu_request": "4", "cpu_limit": "4", "memory_request": "8Gi", "memory_limit": "8Gi"}}}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "models": [TINY], "cluster": pool})
    assert ("trial_parallelism 4 x parallelism 2 = 8 tune trials at once, but node.count 3 node(s) hold 6 "
            "(2 a node by stages.tune's requests)") in str(err.value)
    assert parse_config({**base, "models": [TINY], "cluster": {**pool, "node": {**pool["node"], "count": 4}}})
    # With fit: run, the trial tasks count in the one node's peak.
    with pytest.raises(ConfigError, match=r"tune: trial_parallelism 3 x its requests"):
        parse_config({**base, "models": [TINY], "cluster": {"trial_parallelism": 3}})


def test_keras_tuner_samples_the_same_trials_for_a_seed(tmp_path):
    from mushroom.training import sample_trials

    config = parse_model_config(TINY)
    first, again = sample_trials(config, 7, tmp_path / "a"), sample_trials(config, 7, tmp_path / "b")
    assert first == again and len(first) == 3 and len({tuple(t.values()) for t in first}) == 3
    assert sample_trials(config, 8, tmp_path / "c") != first
    for values in first:
        assert 0.001 <= values["learning_rate"] <= 0.01 and 0.0 <= values["dropout"] <= 0.3


@pytest.mark.slow
def test_trial_tasks_in_any_order_choose_what_the_serial_tune_chooses(small_dataset, tmp_path):
    """The pipeline's graph by hand with 2 trial tasks a round, run in reverse order, against the
    serial tune (one task): the same trials, scores and hyperparameters."""
    dataset, splits = small_dataset
    config = {**TINY, "tune": {**TINY["tune"], "max_trials": 2}}  # rounds of 2 and 1 trials
    shards = tmp_path / "shards"
    stages.prepare(dataset, splits, [config], shards)
    serial = stages.tune(dataset, splits, config, 3, tmp_path / "serial", shards_dir=shards)

    previous = tmp_path / "plan"
    shares = stages.tune_plan(config, 3, previous, tasks=2)
    assert [[t["number"] for t in share] for share in shares] == [[1], [2]]
    assert read_json(previous / "plan.json")["round_sizes"] == [2, 1]
    for round_number in (1, 2):
        dirs = [tmp_path / f"r{round_number}-task{i}" for i in range(len(shares))]
        for share, folder in reversed(list(zip(shares, dirs, strict=True))):  # finished in another order
            stages.tune_trials(dataset, splits, config, share, 3, folder, shards_dir=shards)
        selected = tmp_path / f"select-{round_number}"
        shares, metrics = stages.tune_select(dirs, previous, config, selected, tasks=2)
        previous = selected
        if round_number == 1:
            [[survivor]] = shares
            assert survivor["epochs"] == 2 and survivor["round"] == 2
        else:
            assert shares == []
    assert metrics == serial
    for name in ("hyperparameters.json", "trials.json"):
        parallel, alone = read_json(previous / name), read_json(tmp_path / "serial" / name)
        if name == "trials.json":
            assert [r["round"] for r in alone] == [1, 1, 2]
            for row in parallel + alone:
                row.pop("seconds")
        assert parallel == alone
