import pytest
import torch as th
from sb3_contrib import TQC

from rl_manager.actuators import LearningRate
from rl_manager.fast_tqc import FastTQC


def _model(cls, device: str = "cpu", **kwargs):
    return cls(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=64,
        batch_size=32,
        train_freq=8,
        gradient_steps=4,
        policy_kwargs={"net_arch": [32, 32], "n_critics": 2, "n_quantiles": 5},
        seed=3,
        device=device,
        **kwargs,
    )


def _train(cls, **kwargs):
    return _model(cls, **kwargs).learn(400)


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


cuda = pytest.mark.skipif(not th.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _cuda_model(cuda_graph: bool, **kwargs):
    return _model(FastTQC, device="cuda", cuda_graph=cuda_graph, **kwargs)


@cuda
def test_cuda_graph_trains_as_the_eager_loop():
    """The replayed graph is the same update: parameters agree with the eager loop's to float tolerance."""
    for kwargs in ({}, {"ent_coef": 0.1}):
        eager, graph = _cuda_model(False, **kwargs).learn(104), _cuda_model(True, **kwargs).learn(104)
        assert graph._graph is not None and eager._graph is None
        assert graph._n_updates == eager._n_updates == 20  # 3 warm-up steps, then 17 replays
        a, b = eager.policy.state_dict(), graph.policy.state_dict()
        diff = {k: float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point()}
        assert max(diff.values()) < 1e-4, (kwargs, diff)


@cuda
def test_cuda_graph_follows_knobs_and_rollbacks():
    """A knob's learning rate reaches the graph; new constants and a rollback's optimiser states recapture it."""
    model = _cuda_model(True).learn(200)
    first = model._graph
    assert first is not None
    LearningRate(0.0, 1.0).write(model, 0.0)  # the manager's knob: floats into every param group and schedule
    actor = [p.detach().clone() for p in model.actor.parameters()]
    model.learn(200, reset_num_timesteps=False)
    assert model._graph is first, "a learning-rate change must not need a new capture"
    assert all(th.equal(p, q) for p, q in zip(actor, model.actor.parameters(), strict=True)), "lr 0 moved the actor"

    model.target_entropy = -0.5
    model.learn(100, reset_num_timesteps=False)
    assert model._graph is not first and model._graph.constants[0] == -0.5

    captured = model._graph
    model.set_parameters(model.get_parameters(), exact_match=True, device=model.device)
    LearningRate(0.0, 1.0).write(model, 1e-3)
    model.learn(100, reset_num_timesteps=False)
    assert model._graph is not captured, "a rollback replaces the optimiser states: capture again"
    assert all(g["capturable"] and float(g["lr"]) == pytest.approx(1e-3) for g in model.actor.optimizer.param_groups)
    assert not any(th.equal(p, q) for p, q in zip(actor, model.actor.parameters(), strict=True))
    saved = model.get_parameters()["actor.optimizer"]
    assert all(isinstance(g["lr"], float) and not g["capturable"] for g in saved["param_groups"])
