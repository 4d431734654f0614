"""The three RLlib phases end to end on a tiny stand-in env: checkpoints, frozen specialists,
resume, restore round trip and corrupt checkpoints."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from training_standin import standin_factory

from rl_trading.config import AppConfig
from rl_trading.errors import CheckpointError
from rl_trading.training.checkpoints import load_algorithm, load_module
from rl_trading.training.runner import (
    driver_modules,
    run_phase,
    run_phases,
    sync_driver_modules,
)
from rl_trading.training.signals import StopFlag, TrainingInterrupted
from rl_trading.training.state import RunState

pytestmark = pytest.mark.rllib


def tiny_cfg(**phases) -> AppConfig:
    return AppConfig.model_validate(
        {
            "seed": 3,
            "ppo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
            "policy": {"hidden_sizes": [16, 16]},
            "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 2},
            "phases": {
                "phase1_timesteps": 384,
                "phase2_timesteps": 256,
                "phase3_timesteps": 256,
                "eval_interval": 2,
                "checkpoint_interval": 2,
                **phases,
            },
        }
    )


def _weights(ckpt, pid):
    return {k: v.clone() for k, v in load_module(ckpt, pid).state_dict().items()}


def test_pipeline_runs_checkpoints_and_freezes_specialists(ray_session, tmp_path):
    cfg = tiny_cfg()
    factory = standin_factory(episode_length=32)
    out = run_phases(cfg, factory, tmp_path, tracking=False)
    assert [r.iterations for r in out.values()] == [3, 2, 2]
    assert out["phase1"].metrics["portfolio_equity"] > 0  # logged by TradingCallbacks
    state = RunState.load(tmp_path)
    assert all(state.phases[p].status == "done" for p in ("phase1", "phase2", "phase3"))
    for res in out.values():
        assert (tmp_path / res.phase / "best" / "rllib_checkpoint.json").is_file()
        assert res.best_val_sharpe is not None and np.isfinite(res.metrics["val_sharpe"])
    # Phase 2 starts from phase 1's best specialists and never changes them.
    p1_best, p2_last = out["phase1"].best_checkpoint, out["phase2"].last_checkpoint
    for pid in ("specialist_AAA", "specialist_BBB"):
        before, after = _weights(p1_best, pid), _weights(p2_last, pid)
        assert before.keys() == after.keys()
        for key in before:
            torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)
    # ...while meta trains in phase 2 and specialists train again in phase 3.
    p2_meta, p3_meta = (
        _weights(out["phase2"].best_checkpoint, "meta"),
        _weights(out["phase3"].last_checkpoint, "meta"),
    )
    assert any(not torch.equal(p2_meta[k], p3_meta[k]) for k in p2_meta)
    p3_spec = _weights(out["phase3"].last_checkpoint, "specialist_AAA")
    p2_spec = _weights(p2_last, "specialist_AAA")
    assert any(not torch.equal(p2_spec[k], p3_spec[k]) for k in p2_spec)


def test_interrupt_then_resume_matches_uninterrupted(ray_session, tmp_path):
    cfg = tiny_cfg(phase1_timesteps=512, eval_interval=1, checkpoint_interval=3)
    factory = standin_factory(episode_length=32)
    stop = StopFlag()

    def stop_at_2(info):
        if info["iteration"] == 2:
            stop.set()

    with pytest.raises(TrainingInterrupted) as err:
        run_phase(cfg, 1, factory, tmp_path, stop=stop, progress=stop_at_2, tracking=False)
    assert err.value.iteration == 2
    state = RunState.load(tmp_path)
    ps = state.phases["phase1"]
    assert ps.status == "running" and ps.iteration == 2 and ps.last_checkpoint.endswith("2")
    assert ps.checkpoint_iteration == 2
    # Simulate a crash during iteration 3 (counted in the state, never checkpointed): the
    # resume restarts from the checkpoint's iteration and redoes iteration 3 only.
    ps.iteration = 3
    state.save()
    seen = []
    res = run_phase(
        cfg, 1, factory, tmp_path, resume=True, tracking=False, progress=lambda i: seen.append(i)
    )
    assert [i["iteration"] for i in seen] == [3, 4]  # no repeated iteration
    assert res.iterations == 4 and res.env_steps == 4 * 128
    # Resuming a finished phase does nothing more.
    again = run_phase(cfg, 1, factory, tmp_path, resume=True, tracking=False)
    assert again.iterations == 4


@pytest.mark.parametrize("fault", ["crash-at-iteration-3", "disk-full-at-first-checkpoint"])
def test_fault_before_the_first_checkpoint_then_resume_runs_the_whole_budget(
    ray_session, tmp_path, monkeypatch, fault
):
    """Issue 17 case 1: nothing checkpointed yet, so resume starts over with counters at 0
    (it used to keep the dead run's iteration count on fresh weights and cut the budget)."""
    import errno

    from rl_trading.training import runner

    cfg = tiny_cfg(phase1_timesteps=512, eval_interval=5, checkpoint_interval=4)
    factory = standin_factory(episode_length=32)

    def crash_at_3(info):
        if info["iteration"] == 3:
            raise RuntimeError("process died")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fault.startswith("crash"):
        with pytest.raises(RuntimeError):
            run_phase(cfg, 1, factory, tmp_path, progress=crash_at_3, tracking=False)
    else:
        with monkeypatch.context() as patch:
            patch.setattr(runner, "save_algorithm", disk_full)
            with pytest.raises(OSError, match="No space"):  # the patch reaches this process only
                run_phase(cfg, 1, factory, tmp_path, tracking=False, in_process=True)
    ps = RunState.load(tmp_path).phases["phase1"]
    assert ps.status == "running" and ps.iteration >= 2 and ps.last_checkpoint is None
    seen = []
    res = run_phase(
        cfg, 1, factory, tmp_path, resume=True, tracking=False, progress=lambda i: seen.append(i)
    )
    assert [i["iteration"] for i in seen] == [1, 2, 3, 4]  # from the start: fresh weights
    assert res.iterations == 4 and res.env_steps == 4 * 128  # the full budget
    ps = RunState.load(tmp_path).phases["phase1"]
    assert (ps.status, ps.checkpoint_iteration, ps.checkpoint_env_steps) == ("done", 4, 512)


@pytest.mark.parametrize(("crash_at", "checkpoint_interval"), [(3, 4), (4, 2)])
def test_crash_and_resume_counts_the_same_selection_trials_as_uninterrupted(
    ray_session, tmp_path, crash_at, checkpoint_interval
):
    """A resume redoes the iterations after the last checkpoint (or all, without one); their
    validations count once, so the trials (for the DSR) and the best are those of an
    uninterrupted run, and no best of the discarded timeline survives."""
    cfg = tiny_cfg(phase1_timesteps=640, eval_interval=1, checkpoint_interval=checkpoint_interval)
    factory = standin_factory(episode_length=32)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run_phase(cfg, 1, factory, whole, tracking=False, in_process=True)

    def crash(info):
        if info["iteration"] == crash_at:
            raise RuntimeError("process died")

    with pytest.raises(RuntimeError):
        run_phase(cfg, 1, factory, broken, progress=crash, tracking=False, in_process=True)
    run_phase(cfg, 1, factory, broken, resume=True, tracking=False, in_process=True)
    a, b = RunState.load(whole), RunState.load(broken)
    pa, pb = a.phases["phase1"], b.phases["phase1"]
    assert len(pb.val_sharpes) == len(pa.val_sharpes) == 5
    assert len(b.selection_trials()) == len(a.selection_trials())
    # a fresh restart reproduces every validation; a resume from a checkpoint reproduces the
    # ones it kept (later weights are not bit-identical after a restore)
    same = 5 if crash_at < checkpoint_interval else checkpoint_interval
    assert pb.val_sharpes[:same] == pytest.approx(pa.val_sharpes[:same])
    assert pb.best_val_sharpe == max(pb.val_sharpes)
    assert pb.best_checkpoint == str(broken.resolve() / "phase1" / "best")
    assert not (broken / "phase1" / "best.pending").exists()


def test_sigterm_checkpoints_and_stops_cleanly(ray_session, tmp_path):
    cfg = tiny_cfg(phase1_timesteps=384, checkpoint_interval=5)
    factory = standin_factory(episode_length=32)

    def send_sigterm(info):
        if info["iteration"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as err:
        run_phase(cfg, 1, factory, tmp_path, progress=send_sigterm, tracking=False)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert err.value.iteration == 1 and "--resume" in str(err.value)
    ps = RunState.load(tmp_path).phases["phase1"]
    assert ps.iteration == 1 and (tmp_path / "phase1/checkpoints/iter_000001").is_dir()
    res = run_phase(cfg, 1, factory, tmp_path, resume=True, tracking=False)
    assert res.iterations == 3


def test_restore_round_trip_and_bad_checkpoints(ray_session, tmp_path):
    cfg = tiny_cfg(phase1_timesteps=128)
    factory = standin_factory(episode_length=32)
    res = run_phase(cfg, 1, factory, tmp_path, tracking=False)
    obs = np.random.default_rng(0).normal(size=(5, 5)).astype(np.float32)
    from policies import compute_actions
    from rl_trading.training.algo_config import build_phase_config
    from rl_trading.training.checkpoints import save_algorithm

    # Live algorithm -> save -> restore (whole algorithm and single policy): same actions.
    live = build_phase_config(cfg, 1, factory).build_algo()
    try:
        live.train()
        mods = driver_modules(cfg, factory, 1)
        sync_driver_modules(live, mods)
        before = compute_actions(mods["specialist_AAA"], obs)
        saved = save_algorithm(live, tmp_path / "live")
    finally:
        live.stop()
    module = load_module(saved, "specialist_AAA")
    np.testing.assert_array_equal(before, compute_actions(module, obs))
    algo = load_algorithm(saved)
    try:
        from_algo = algo.get_module("specialist_AAA")
        np.testing.assert_array_equal(before, compute_actions(from_algo, obs))
    finally:
        algo.stop()
    with pytest.raises(CheckpointError, match="not found"):
        load_algorithm(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no policy 'meta'"):
        load_module(res.last_checkpoint, "meta")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rllib_checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        load_algorithm(broken)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="phase1 first"):
        run_phase(cfg, 2, factory, tmp_path / "empty", tracking=False)
