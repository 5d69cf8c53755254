"""GRPO math against hand-computed cases and a plain-Python re-implementation."""

import math

import pytest
import torch

from lit_caprl.rollout import group_advantages
from lit_caprl.stages.losses import (
    aggregate,
    bradley_terry_loss,
    clipped_surrogate,
    dpo_loss,
    grpo_loss,
    k3_kl,
    loss_divisor,
    token_mean_nll,
)


def test_group_advantages_hand_computed():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="group", eps=0.0)
    std = math.sqrt((4 * 0.25) / 3)  # unbiased std of the group
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]) / std)


def test_rloo_is_reward_minus_mean_of_the_others():
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), scale="none", estimator="rloo")
    torch.testing.assert_close(adv, torch.tensor([[1 - 2.5, 2 - 2.0, 3 - 1.5]]))


def test_batch_scaling_uses_the_std_of_all_rewards():
    r = torch.tensor([[0.0, 1.0], [2.0, 6.0]])
    adv = group_advantages(r, scale="batch", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[-0.5, 0.5], [-2.0, 2.0]]) / r.std())


def test_zero_std_group_gives_zero_advantage_not_nan():
    adv = group_advantages(torch.tensor([[0.7, 0.7, 0.7], [0.0, 1.0, 0.5]]))
    assert torch.isfinite(adv).all()
    assert torch.equal(adv[0], torch.zeros(3))


def test_k3_hand_value_and_non_negative():
    v = k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert v.item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    x, y = torch.randn(1000), torch.randn(1000)
    assert (k3_kl(x, y) >= 0).all() and torch.equal(k3_kl(x, x), torch.zeros(1000))


def test_clipped_surrogate_hand_cases():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 3), torch.tensor([1.0]), 0.2, 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, -1.0]]))
    assert clipped.tolist() == [[1.0, 0.0, 0.0]]
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 3), torch.tensor([-1.0]), 0.2, 0.3)
    torch.testing.assert_close(loss, torch.tensor([[1.5, 0.8, 1.0]]))


def test_ratio_is_one_with_a_single_inner_epoch():
    logp = torch.randn(4, 5, requires_grad=True)
    adv = torch.randn(4)
    loss, clipped = clipped_surrogate(logp, logp.detach(), adv, 0.2, 0.28)
    assert clipped.sum() == 0
    torch.testing.assert_close(loss, -adv[:, None].expand(4, 5))


def test_aggregation_hand_computed():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])

    def whole(loss_type, **kwargs):
        return aggregate(per_token, mask, loss_type, loss_divisor(loss_type, mask, **kwargs)).item()

    assert whole("grpo") == pytest.approx((6 / 3 + 4 / 1) / 2)
    assert whole("bnpo") == pytest.approx(10 / 4)
    assert whole("dr_grpo", max_completion_length=4) == pytest.approx(10 / 8)
    assert whole("dapo", global_tokens=8) == pytest.approx(10 / 8)
    assert whole("dapo") == pytest.approx(10 / 4)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):  # micro-batches add up to the whole batch
        d = loss_divisor(loss_type, mask, max_completion_length=4)
        parts = aggregate(per_token[:1], mask[:1], loss_type, d) + aggregate(per_token[1:], mask[1:], loss_type, d)
        assert parts.item() == pytest.approx(whole(loss_type, max_completion_length=4))


def _reference_loss(logp, old, adv, mask, ref, beta, lo, hi, loss_type, max_len, num_tokens):
    """Token by token, in plain Python floats: an independent formulation of the objective."""
    seq_losses, total, count = [], 0.0, 0
    for i in range(len(logp)):
        s, n = 0.0, 0
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            term = -min(ratio * adv[i], min(max(ratio, 1 - lo), 1 + hi) * adv[i])
            if beta:
                d = ref[i][t] - logp[i][t]
                term += beta * (math.exp(d) - d - 1)
            s, n = s + term, n + 1
        seq_losses.append(s / max(n, 1))
        total, count = total + s, count + n
    return {
        "grpo": sum(seq_losses) / len(seq_losses),
        "bnpo": total / count,
        "dr_grpo": total / (len(logp) * max_len),
        "dapo": total / num_tokens,
    }[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_independent_formulation(loss_type, beta):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 7, generator=g) * 3
    old = logp + 0.3 * torch.randn(6, 7, generator=g)
    ref = logp + 0.2 * torch.randn(6, 7, generator=g)
    adv = torch.randn(6, generator=g)
    lengths = torch.tensor([7, 3, 1, 5, 7, 2])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    divisor = loss_divisor(loss_type, mask, max_completion_length=8, global_tokens=40.0)
    got, _ = grpo_loss(logp, old, adv, mask, ref, beta, 0.2, 0.28, loss_type, divisor)
    want = _reference_loss(
        logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(), beta, 0.2, 0.28, loss_type, 8, 40.0
    )
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_loss_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    logp = (-torch.rand(3, 4, generator=g)).double().requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(3, 4, generator=g).double()
    ref = logp.detach() + 0.1 * torch.randn(3, 4, generator=g).double()
    adv = torch.randn(3, generator=g).double()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda lp: grpo_loss(lp, old, adv, mask, ref, 0.1, 0.2, 0.2, "grpo")[0], (logp,))


def _pairs(*rows: tuple[float, float, float, float]) -> list[torch.Tensor]:
    return [torch.tensor(col) for col in zip(*rows, strict=True)]


def test_dpo_losses_hand_computed():
    # h = (chosen - rejected) - (ref_chosen - ref_rejected) = (-2 - -5) - (-3 - -4) = 2
    pc, pr, rc, rr = _pairs((-2.0, -5.0, -3.0, -4.0))
    beta = 0.5
    sig, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert sig.item() == pytest.approx(math.log(1 + math.exp(-1.0)))  # -log sigma(beta * h) = -log sigma(1)
    assert chosen_r.item() == pytest.approx(0.5)  # beta * (-2 - -3)
    assert rejected_r.item() == pytest.approx(-0.5)  # beta * (-5 - -4)
    smooth, _, _ = dpo_loss(pc, pr, rc, rr, beta, "sigmoid", label_smoothing=0.1)
    assert smooth.item() == pytest.approx(0.9 * math.log(1 + math.exp(-1.0)) + 0.1 * math.log(1 + math.exp(1.0)))
    ipo, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo")
    assert ipo.item() == pytest.approx((2 - 1 / (2 * beta)) ** 2)  # (2 - 1)^2
    hinge, _, _ = dpo_loss(pc, pr, rc, rr, beta, "hinge")
    assert hinge.item() == pytest.approx(0.0)  # max(0, 1 - 1)
    hinge_small, _, _ = dpo_loss(pc, pr, rc, rr, 0.25, "hinge")
    assert hinge_small.item() == pytest.approx(0.5)  # max(0, 1 - 0.5)


def test_dpo_sigmoid_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5, -1.2])
    other = torch.tensor([-4.0, -2.0, -9.0])
    loss, chosen_r, rejected_r = dpo_loss(logps, other, logps, other, beta=0.1)
    torch.testing.assert_close(loss, torch.full((3,), math.log(2)))
    assert chosen_r.abs().max() == 0 and rejected_r.abs().max() == 0


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-3.0], requires_grad=True)
    for loss_type in ("sigmoid", "ipo", "hinge"):
        pc.grad = pr.grad = None
        loss, _, _ = dpo_loss(pc, pr, torch.tensor([-3.0]), torch.tensor([-3.0]), 0.1, loss_type)
        loss.sum().backward()
        assert pc.grad.item() < 0 < pr.grad.item(), loss_type


def test_token_mean_nll_averages_over_tokens_not_sequences():
    # two captions: 2 tokens summing to log p -2, 3 tokens summing to -6 -> 8 nats / 5 tokens
    nll = token_mean_nll(torch.tensor([-2.0, -6.0]), torch.tensor([2.0, 3.0]))
    assert nll.item() == pytest.approx(1.6)


def test_bradley_terry_hand_computed():
    # pairs with margins 1 and -2: mean of log(1 + e^-1) and log(1 + e^2)
    want = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    got = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 2.0]))
    assert float(got) == pytest.approx(want)
