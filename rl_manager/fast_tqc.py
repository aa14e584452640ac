"""TQC with an update loop that does not wait on the GPU at every gradient step (issue 16).

On a GPU, sb3-contrib's :meth:`TQC.train` synchronises the host with the device several times per
gradient step: four ``.item()`` calls to log losses and the entropy coefficient, and one blocking copy
of each sampled batch, taken just before the step that uses it. The host then idles while the GPU
finishes, and the GPU idles while the host launches the next kernels. :class:`FastTQC` computes the same
update, in the same order, with the same random numbers:

- the ``gradient_steps`` batches of one call are sampled (and copied) first, one after the other, as
  the replay buffer's numpy generator would have drawn them anyway: the batches do not depend on the
  networks, and the actor's noise comes from torch's generator, which is used in the same order;
- losses and entropy coefficients stay on the device until the end of the call (one transfer);
- the target networks' Polyak update runs as two ``torch._foreach`` kernels over all parameters instead
  of two kernels per parameter (the same arithmetic: ``target·(1−τ) + τ·param``).

On a CPU the result is bitwise equal to :class:`sb3_contrib.TQC` (``tests/test_fast_tqc.py``). On an H200 it
gave +10% env steps/s at 16 envs and 4 gradient steps of 4,096 (239.5 vs 217.5, one run) and nothing on the
zoo recipe: launching each step's kernels from Python (~17 ms), not waiting on the device, bounds the update
(``experiments/results/fetch_throughput/README.md``).
"""

from __future__ import annotations

import numpy as np
import torch as th
from sb3_contrib import TQC
from sb3_contrib.common.utils import quantile_huber_loss
from stable_baselines3.common.utils import polyak_update


class FastTQC(TQC):
    """:class:`sb3_contrib.TQC` whose :meth:`train` does not synchronise with the device per gradient step."""

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers += [self.ent_coef_optimizer]
        self._update_learning_rate(optimizers)

        batches = [
            self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            for _ in range(gradient_steps)
        ]
        ent_coef_losses, ent_coefs, actor_losses, critic_losses = [], [], [], []
        critic_params, target_params = list(self.critic.parameters()), list(self.critic_target.parameters())
        for gradient_step, replay_data in enumerate(batches):
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            if self.use_sde:
                self.actor.reset_noise()
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()  # type: ignore[operator]
                ent_coef_losses.append(ent_coef_loss.detach())
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef.detach().reshape(()))

            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()

            with th.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
                next_quantiles = self.critic_target(replay_data.next_observations, next_actions)
                n_target_quantiles = (
                    self.critic.quantiles_total - self.top_quantiles_to_drop_per_net * self.critic.n_critics
                )
                next_quantiles, _ = th.sort(next_quantiles.reshape(batch_size, -1))
                next_quantiles = next_quantiles[:, :n_target_quantiles]
                target_quantiles = next_quantiles - ent_coef * next_log_prob.reshape(-1, 1)
                target_quantiles = replay_data.rewards + (1 - replay_data.dones) * discounts * target_quantiles
                target_quantiles.unsqueeze_(dim=1)

            current_quantiles = self.critic(replay_data.observations, replay_data.actions)
            critic_loss = quantile_huber_loss(current_quantiles, target_quantiles, sum_over_quantiles=False)
            critic_losses.append(critic_loss.detach())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            qf_pi = self.critic(replay_data.observations, actions_pi).mean(dim=2).mean(dim=1, keepdim=True)
            actor_loss = (ent_coef * log_prob - qf_pi).mean()
            actor_losses.append(actor_loss.detach())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()

            if gradient_step % self.target_update_interval == 0:
                with th.no_grad():
                    th._foreach_mul_(target_params, 1 - self.tau)
                    th._foreach_add_(target_params, critic_params, alpha=self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)  # running stats, as SB3

        self._n_updates += gradient_steps
        if not batches:
            return

        def mean(values: list[th.Tensor]) -> float:
            return float(np.mean(th.stack(values).double().cpu().numpy()))

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", mean(ent_coefs))
        self.logger.record("train/actor_loss", mean(actor_losses))
        self.logger.record("train/critic_loss", mean(critic_losses))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", mean(ent_coef_losses))
