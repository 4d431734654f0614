"""PPO torch learner: one fused finiteness check per update, multi-tensor Adam.

RLlib's ``TorchLearner.apply_gradients`` runs ``torch.isfinite(grad).all()`` twice for every
parameter tensor (8 specialists x 13 tensors = 208 small kernels + Python per minibatch), about
a fifth of the learner's time with these small MLPs on CPU. Here all gradient norms come from
one ``torch._foreach_norm``: when they are all finite, every gradient entry is finite and the
stock path would set the grads and step every optimizer, which is what we do. Otherwise
(NaN/inf, or a norm overflowing) the stock ``apply_gradients`` runs unchanged, so the results
are identical to RLlib's in every case. Its Adam optimizers use torch's multi-tensor
(`foreach`) implementation, which CPU tensors do not get by default: the same arithmetic per
element (bit-identical weights, tests/test_training_speedups.py) in a few ops per module.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner


class FastPPOTorchLearner(PPOTorchLearner):
    """PPOTorchLearner whose gradient application checks finiteness in one fused call."""

    def configure_optimizers_for_module(self, module_id: Any, config: Any = None) -> None:
        """RLlib's default optimizer (Adam, `config.lr` schedule), multi-tensor."""
        params = self.get_parameters(self._module[module_id])
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, foreach=True),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def apply_gradients(self, gradients_dict: dict[Any, torch.Tensor]) -> None:
        """Set the grads and step the optimizers; stock RLlib path when anything is not finite."""
        if (
            self.config.torch_skip_nan_gradients
            or self._grad_scalers is not None
            or self._lr_scheduler_classes is not None
        ):
            return super().apply_gradients(gradients_dict)
        grads = list(gradients_dict.values())
        if any(g is None for g in grads):
            return super().apply_gradients(gradients_dict)
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return super().apply_gradients(gradients_dict)
        for pid, grad in gradients_dict.items():
            self._params[pid].grad = grad
        for module_id, optimizer_names in self._module_optimizers.items():
            for optimizer_name in optimizer_names:
                self.get_optimizer(module_id, optimizer_name).step()
        return None
