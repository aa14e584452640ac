import torch as th
from sb3_contrib import TQC

from rl_manager.fast_tqc import FastTQC


def _train(cls, **kwargs):
    model = cls(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=64,
        batch_size=32,
        train_freq=8,
        gradient_steps=4,
        policy_kwargs={"net_arch": [32, 32], "n_critics": 2, "n_quantiles": 5},
        seed=3,
        device="cpu",
        **kwargs,
    )
    model.learn(400)
    return model


def test_fast_tqc_trains_exactly_as_tqc():
    """The same batches, noise and arithmetic: every parameter (targets included) and the logged losses match."""
    for kwargs in ({}, {"ent_coef": 0.1, "target_update_interval": 2}):
        slow, fast = _train(TQC, **kwargs), _train(FastTQC, **kwargs)
        a, b = slow.policy.state_dict(), fast.policy.state_dict()
        assert a.keys() == b.keys()
        assert all(th.equal(a[k], b[k]) for k in a)
        assert fast._n_updates == slow._n_updates > 0
        for key in ("train/actor_loss", "train/critic_loss", "train/ent_coef"):
            assert abs(fast.logger.name_to_value[key] - slow.logger.name_to_value[key]) < 1e-5
