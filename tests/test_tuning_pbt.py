"""PBT driver: search space, clipping, result parsing, and a CI-sized multi-agent PBT run.

The RLlib run uses a two-policy CartPole stand-in for a phase-2 hierarchy: `p0` trains (the
"meta" policy), `p1` is frozen and loaded from a checkpoint (the "specialist"), so the test can
check that exploits change hyperparameters and never touch the frozen policy.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from rl_trading.config import load_config
from rl_trading.errors import CheckpointError, ConfigError
from tuning.lineage import read_exploits
from tuning.pbt import ClipToRanges, hparam_ranges
from tuning.trainable import apply_hparams, ppo_overrides, summarize_result, trial_index

HIDDEN = [16]


def test_ranges_clip_and_mapping():
    cfg = load_config(None, ["tuning.gamma=[0.95,0.999]", "tuning.lr=[1e-5,1e-3]"])
    ranges = hparam_ranges(cfg)
    assert ranges["lambda"] == (0.9, 1.0) and ranges["lr"] == (1e-5, 1e-3)
    clip = ClipToRanges(ranges)
    out = clip({"gamma": 0.999 * 1.2, "lr": 1e-6, "clip_param": 0.2, "seed": 3})
    assert out["gamma"] == 0.999 and out["lr"] == 1e-5 and out["clip_param"] == 0.2
    assert out["seed"] == 3
    assert ppo_overrides({"lambda": 0.93, "lr": 2e-4}) == {"gae_lambda": 0.93, "lr": 2e-4}
    tuned = apply_hparams(cfg, {"lambda": 0.93, "entropy_coeff": 0.005})
    assert tuned.ppo.gae_lambda == 0.93 and tuned.ppo.entropy_coeff == 0.005
    assert cfg.ppo.gae_lambda == 0.95  # original untouched
    with pytest.raises(ConfigError):
        hparam_ranges(load_config(None, ["tuning.clip_param=[0.3,0.1]"]))
    with pytest.raises(ConfigError):
        hparam_ranges(load_config(None, ["tuning.gamma=[0.9,1.2]"]))


@pytest.mark.parametrize("pinned", [True, False])
def test_phase2_trial_gamma_and_lambda_reach_the_meta_policy(pinned):
    """Phase 2 trains the meta with phases.meta_gamma / meta_gae_lambda when they are set: a
    trial's gamma / lambda must land there (like lr -> meta_lr), or PBT mutates nothing."""
    from training_standin import standin_factory

    from rl_trading.training.algo_config import build_phase_config
    from tuning.phase_runner import phase_config_for_trial

    sets = ["phases.meta_gamma=0.9", "phases.meta_gae_lambda=0.9"] if pinned else []
    cfg = load_config(None, sets)
    factory = standin_factory(episode_length=32)
    for hp in ({"gamma": 0.95, "lambda": 0.92}, {"gamma": 0.999, "lambda": 0.99}):
        rllib = build_phase_config(phase_config_for_trial(cfg, 2, hp, 0), 2, factory)
        assert (rllib.gamma, rllib.lambda_) == pytest.approx((hp["gamma"], hp["lambda"]))
    trial = phase_config_for_trial(cfg, 1, {"gamma": 0.95}, 0)  # phase 1: ppo.gamma only
    assert trial.ppo.gamma == 0.95 and trial.phases.meta_gamma == cfg.phases.meta_gamma


def test_summarize_result_and_trial_index():
    result = {
        "env_runners": {
            "episode_return_mean": 12.5,
            "module_episode_returns_mean": {"meta": 3.0, "specialist_EURUSD": -1.0},
            "num_env_steps_sampled_lifetime": 256,
        },
        "learners": {"meta": {"default_optimizer_lr": 1e-4, "total_loss": 0.3}},
        "config": {"lr": 5.0},
    }
    out = summarize_result(result)
    assert out == {
        "episode_return_mean": 12.5,
        "policy_return/meta": 3.0,
        "policy_return/specialist_EURUSD": -1.0,
        "env_steps": 256.0,
        "lr/meta": 1e-4,
    }
    assert trial_index("PhaseTrainable_3f2a1_00003") == 3 and trial_index("x") == 0


def test_read_exploits_parses_pbt_global_log(tmp_path):
    old = {"lr": 1e-4, "gamma": 0.99, "clip_param": 0.2, "lambda": 0.95, "entropy_coeff": 0.0}
    new = dict(old, lr=1.2e-4)
    line = ["1_lr=0.0001", "0_lr=0.0003", 4, 4, old, new]
    (tmp_path / "pbt_global.txt").write_text(json.dumps(line) + "\n")
    df = read_exploits(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["target"], row["source"], row["source_iter"]) == (1, 0, 4)
    assert row["old_lr"] == 1e-4 and row["new_lr"] == 1.2e-4
    assert read_exploits(tmp_path / "missing").empty


def test_resume_without_run_is_a_clear_error(tmp_path):
    from tuning.pbt import run_pbt

    cfg = load_config(None, ["tuning.population=2"])
    with pytest.raises(CheckpointError, match="no resumable PBT run"):
        run_pbt(cfg, 1, runner_factory=lambda hp, seed: None, run_dir=tmp_path, resume=True)


# ------------------------------------------------------------------------------------------
# CI-sized RLlib PBT run
# ------------------------------------------------------------------------------------------


def _mapping(agent_id, episode=None, **kwargs):
    return f"p{agent_id}"


class CartPoleRunnerFactory:
    """Two-policy CartPole PPO: `p0` trains, `p1` is frozen and loaded from `frozen_path`."""

    def __init__(self, frozen_path: str):
        self.frozen_path = frozen_path

    def __call__(self, hparams: Mapping[str, float], seed: int):
        from ray.rllib.algorithms.ppo import PPOConfig
        from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec
        from ray.rllib.examples.envs.classes.multi_agent import MultiAgentCartPole

        from tuning.trainable import RLlibRunner

        model = {"fcnet_hiddens": HIDDEN, "vf_share_layers": True}
        config = (
            PPOConfig()
            .environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .env_runners(num_env_runners=0)
            .learners(num_learners=0)
            .multi_agent(
                policies={"p0", "p1"}, policy_mapping_fn=_mapping, policies_to_train=["p0"]
            )
            .rl_module(
                rl_module_spec=MultiRLModuleSpec(
                    rl_module_specs={
                        "p0": RLModuleSpec(model_config=model),
                        "p1": RLModuleSpec(model_config=model, load_state_path=self.frozen_path),
                    }
                )
            )
            .training(
                train_batch_size_per_learner=200,
                minibatch_size=100,
                num_epochs=2,
                lr=hparams["lr"],
                gamma=hparams["gamma"],
                lambda_=hparams["lambda"],
                clip_param=hparams["clip_param"],
                entropy_coeff=hparams["entropy_coeff"],
            )
            .debugging(seed=seed)
        )
        return RLlibRunner(config)


def _frozen_module(path: Path) -> dict[str, np.ndarray]:
    """Save a seeded CartPole PPO module (the 'phase-1 specialist') and return its weights."""
    import gymnasium as gym
    import torch
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
        DefaultPPOTorchRLModule,
    )
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    torch.manual_seed(123)
    env = gym.make("CartPole-v1")
    module = RLModuleSpec(
        module_class=DefaultPPOTorchRLModule,
        observation_space=env.observation_space,
        action_space=env.action_space,
        model_config={"fcnet_hiddens": HIDDEN, "vf_share_layers": True},
    ).build()
    module.save_to_path(str(path))
    return _weights(module.get_state())


def _weights(state: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def _module_weights(checkpoint: str, module_id: str) -> dict[str, np.ndarray]:
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = Path(checkpoint, "learner_group", "learner", "rl_module", module_id)
    return _weights(RLModule.from_checkpoint(str(path)).get_state())


@pytest.mark.rllib
@pytest.mark.timeout(420)
def test_pbt_run_exploits_keeps_frozen_policy_and_reports(ray_session, workspace):
    import mlflow
    from ray import cloudpickle

    from tuning.pbt import load_best, run_pbt

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    frozen = _frozen_module(workspace / "frozen_p1")
    cfg = load_config(
        None,
        [
            "seed=3",
            "tuning.metric=policy_return/p0",
            "tuning.perturbation_interval=1",
            "tuning.quantile_fraction=0.5",
            "tuning.resample_probability=0.0",
            "tuning.cpus_per_trial=1",
            "train.experiment_name=pbt_test",
        ],
    )
    factory = CartPoleRunnerFactory(str(workspace / "frozen_p1"))
    result = run_pbt(
        cfg, 2, runner_factory=factory, run_dir=workspace / "run", population=2, iterations=4
    )

    # Every reported result of every trial carries the (finite) objective.
    histories = {}
    for csv in (workspace / "run" / "tune").glob("*/progress.csv"):
        import pandas as pd

        df = pd.read_csv(csv)
        histories[csv.parent.name] = df
        assert "policy_return/p0" in df and df["policy_return/p0"].notna().all()
        assert np.isfinite(df["policy_return/p0"]).all()
        # The learner really uses the trial's lr (also right after an exploit).
        np.testing.assert_allclose(df["lr/p0"], df["hp/lr"], rtol=1e-5)
    assert len(histories) == 2

    # PBT exploited at least once and the explore step changed a hyperparameter.
    exploits = read_exploits(workspace / "run" / "tune")
    assert len(exploits) >= 1
    changed = [
        k
        for k in ("lr", "gamma", "clip_param", "lambda", "entropy_coeff")
        if not math.isclose(exploits.iloc[0][f"old_{k}"], exploits.iloc[0][f"new_{k}"])
    ]
    assert changed, "the explore step changed no hyperparameter"
    target = int(exploits.iloc[0]["target"])
    hist = next(df for name, df in histories.items() if f"_{target:05d}" in name)
    hp_changes = sum(hist[f"hp/{k}"].nunique() - 1 for k in changed)
    assert hp_changes >= 1, "the exploited trial never reported its new hyperparameters"

    # The frozen policy is identical in every final checkpoint; the trained one moved.
    assert not result.table.empty and (result.table["status"] == "done").all()
    for ckpt in result.table["checkpoint"]:
        p1 = _module_weights(ckpt, "p1")
        for key, value in frozen.items():
            np.testing.assert_array_equal(p1[key], value)
        p0 = _module_weights(ckpt, "p0")
        assert any(not np.array_equal(p0[k], frozen[k]) for k in frozen)

    # Outputs: best.json, trials.csv, lineage PNG, and one MLflow run per trial.
    best = load_best(workspace / "run")
    assert best["best_config"] == result.best_config and set(best["best_config"]) == {
        "lr",
        "gamma",
        "clip_param",
        "lambda",
        "entropy_coeff",
    }
    assert Path(best["best_checkpoint"]).is_dir() and best["n_exploits"] == len(exploits)
    # trials tried = members x perturbation rounds; PBO needs 4 or more members
    rounds = max(1, 4 // cfg.tuning.perturbation_interval)
    assert best["n_trials"] == result.n_trials == 2 * rounds and best["pbo"] is None
    assert result.best_metric == result.table["policy_return/p0"].max()
    assert (workspace / "run" / "trials.csv").is_file()
    assert result.lineage_png is not None and result.lineage_png.stat().st_size > 10_000
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["pbt_test_pbt_phase2"])
    assert len(runs) == 2 and runs["metrics.policy_return/p0"].notna().all()


class CrashingFactory(CartPoleRunnerFactory):
    """Runners whose third `train()` fails while `flag` exists (an interrupted run)."""

    def __init__(self, frozen_path: str, flag: str):
        super().__init__(frozen_path)
        self.flag = flag

    def __call__(self, hparams: Mapping[str, float], seed: int):
        runner = super().__call__(hparams, seed)
        inner_train, flag = runner.train, self.flag

        def train():
            if Path(flag).exists() and runner.algo.iteration >= 2:
                raise RuntimeError("simulated crash")
            return inner_train()

        runner.train = train
        return runner


@pytest.mark.rllib
@pytest.mark.timeout(420)
def test_pbt_resume_after_failure_finishes_the_run(ray_session, workspace):
    import pandas as pd
    from ray import cloudpickle

    from rl_trading.errors import RLTradingError
    from tuning.pbt import run_pbt

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    _frozen_module(workspace / "frozen_p1")
    flag = workspace / "crash.flag"
    flag.write_text("1")
    cfg = load_config(
        None, ["seed=5", "tuning.metric=episode_return_mean", "tuning.perturbation_interval=2"]
    )
    factory = CrashingFactory(str(workspace / "frozen_p1"), str(flag))
    kwargs = dict(runner_factory=factory, run_dir=workspace / "run", population=2, iterations=3)
    with pytest.raises(RLTradingError, match="--resume"):
        run_pbt(cfg, 2, mlflow=False, **kwargs)
    progress = [pd.read_csv(p) for p in (workspace / "run" / "tune").glob("*/progress.csv")]
    assert progress and all(df["training_iteration"].max() == 2 for df in progress)
    with pytest.raises(ConfigError, match="already holds"):
        run_pbt(cfg, 2, mlflow=False, **kwargs)

    flag.unlink()
    result = run_pbt(cfg, 2, resume=True, mlflow=False, **kwargs)
    assert len(result.table) == 2 and (result.table["iterations"] == 3).all()
    assert (result.table["status"] == "done").all()
    for csv in (workspace / "run" / "tune").glob("*/progress.csv"):
        df = pd.read_csv(csv)
        # Resumed from the iteration-2 checkpoint: iteration 3 follows, nothing restarted at 1.
        assert df["training_iteration"].tolist()[-1] == 3
        assert df["episode_return_mean"].notna().all()
    assert (workspace / "run" / "best.json").is_file()


def test_scheduler_is_synchronous_by_default():
    """Exploit decisions wait for every trial (timing- and CPU-independent), unless disabled."""
    from tuning.pbt import make_scheduler

    assert make_scheduler(load_config(None))._synch is True
    assert make_scheduler(load_config(None, ["tuning.synch=false"]))._synch is False
