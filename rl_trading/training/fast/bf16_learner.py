"""PPO torch learner that runs forward + loss under bfloat16 autocast (`resources.precision`).

Departs from RLlib's update step (`update_step`, re-written here with the forward pass
and loss inside `torch.autocast`) because RLlib has no mixed-precision switch for its learners;
built on `FastPPOTorchLearner`, so it needs `resources.rllib_fast_paths: true`. Without
autocast (CPU, the default) its update is bit-identical to `PPOTorchLearner`'s
(tests/test_training_speedups.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from ray.rllib.core.columns import Columns

from rl_trading.training.fast.learner import FastPPOTorchLearner

logger = logging.getLogger(__name__)


class BF16PPOTorchLearner(FastPPOTorchLearner):
    """Forward pass and loss in bf16 autocast on GPU; gradients and the optimizer stay fp32.

    On CPU bf16 autocast is usually slower than fp32 for these small nets, so it is skipped
    with one log line.
    """

    _warned = False
    cpu_autocast = False  # True: also autocast on CPU (tests; slower than fp32 there)
    last_forward_dtype: torch.dtype | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        device = self.device
        if device is not None and torch.device(device).type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if self.cpu_autocast:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        if not BF16PPOTorchLearner._warned:
            logger.warning("precision=bf16 ignored: the learner runs on CPU (fp32 used)")
            BF16PPOTorchLearner._warned = True
        return contextlib.nullcontext()

    def update_step(self, batch: dict, **kwargs: Any) -> Any:
        """Same steps as TorchLearner's update, with forward + loss inside autocast."""
        self.log_off_policyness(batch)
        with self._autocast():
            fwd_out = self.module.forward_train(batch)
            loss_per_module = self.compute_losses(fwd_out=fwd_out, batch=batch)
        first = next(iter(fwd_out.values()), None)
        if isinstance(first, dict):  # embeddings come straight out of a (autocast) matmul
            first = first.get(Columns.EMBEDDINGS, first.get(Columns.ACTION_DIST_INPUTS))
        self.last_forward_dtype = getattr(first, "dtype", None)
        loss_per_module = {k: v.float() for k, v in loss_per_module.items()}
        gradients = self.compute_gradients(loss_per_module)
        with contextlib.ExitStack() as stack:
            if self.config.num_learners > 1:
                for mod in self.module.values():
                    if isinstance(mod, torch.nn.Module):
                        stack.enter_context(mod.no_sync())
            postprocessed = self.postprocess_gradients(gradients)
            self.apply_gradients(postprocessed)
        return fwd_out, loss_per_module, {}
