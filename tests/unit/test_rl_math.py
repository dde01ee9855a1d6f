"""nemo_reason.rl: advantage estimators, policy losses, aggregation modes, KL estimators, entropy and the
overlong / dynamic-sampling helpers, each against values computed by hand (written out below)."""

from __future__ import annotations

import math

import pytest
import torch

from nemo_reason.config.errors import ConfigError
from nemo_reason.rl import ADVANTAGES, KL_ESTIMATORS, POLICY_LOSSES, get_advantage, get_policy_loss
from nemo_reason.rl.filters import dynamic_sampling_keep, overlong_soft_penalty
from nemo_reason.rl.kl import kl_penalty
from nemo_reason.rl.losses import aggregate, entropy_from_logits, gspo_loss, ppo_clip_loss

T = torch.tensor
D = torch.float64


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), atol=tol, rtol=0)


# ---------------------------------------------------------------- registries

def test_registries_list_builtins_and_unknown_names_hint():
    assert ADVANTAGES.names() == ["grpo", "reinforce", "reinforce_pp", "reinforce_pp_baseline", "rloo"]
    assert POLICY_LOSSES.names() == ["gspo", "ppo"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert get_policy_loss("ppo") is ppo_clip_loss
    with pytest.raises(ConfigError, match="did you mean: grpo"):
        get_advantage("gpro")


# ---------------------------------------------------------------- advantages

def test_grpo_with_and_without_std():
    # rewards [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    close(ADVANTAGES["grpo"](T([1., 0, 0, 1]), 4), [0.866025, -0.866025, -0.866025, 0.866025])
    close(ADVANTAGES["grpo"](T([1., 0, 0, 1]), 4, norm_std=False), [0.5, -0.5, -0.5, 0.5])  # Dr.GRPO
    # two groups of 2, flat: [1, 0] -> mean .5, std sqrt(.5) = .707107 -> +-.707107; [0, 0] -> 0
    close(ADVANTAGES["grpo"](T([1., 0, 0, 0]), 2), [0.707107, -0.707107, 0, 0])
    # [G, n] input keeps its shape; a group of equal rewards has advantage 0 (no nan)
    out = ADVANTAGES["grpo"](T([[1., 0, 0, 0], [1., 1, 1, 1]]))
    assert out.shape == (2, 4)
    close(out[1], [0, 0, 0, 0])
    close(ADVANTAGES["grpo"](T([[1., 0, 0, 0]]), norm_std=False), [[0.75, -0.25, -0.25, -0.25]])


def test_rloo_leave_one_out_baseline():
    # [1, 0, 0, 0]: baselines 0, 1/3, 1/3, 1/3 -> advantages 1, -1/3, -1/3, -1/3 (= 4/3 * (r - 0.25))
    close(ADVANTAGES["rloo"](T([[1., 0, 0, 0]])), [[1, -1 / 3, -1 / 3, -1 / 3]])
    close(ADVANTAGES["rloo"](T([1., 0, 0, 1]), 2), [1, -1, -1, 1])
    close(ADVANTAGES["rloo"](T([3., 5., 7.]), 3), [3 - 6, 5 - 5, 7 - 4])


def test_reinforce_variants():
    close(ADVANTAGES["reinforce"](T([1, 0, 0, 1])), [1, 0, 0, 1])  # ints become floats
    # batch [1, 0, 0, 0]: mean .25, unbiased var (.5625 + 3 * .0625) / 3 = .25 -> std .5
    close(ADVANTAGES["reinforce_pp"](T([[1., 0], [0, 0]])), [[1.5, -0.5], [-0.5, -0.5]])
    # baseline: d = [.5, -.5, 0, 0], mean 0, std sqrt(.5 / 3) = .408248 -> +-1.224745
    close(ADVANTAGES["reinforce_pp_baseline"](T([1., 0, 0, 0]), 2), [1.224745, -1.224745, 0, 0])


def test_advantage_shape_errors_name_the_fix():
    with pytest.raises(ValueError, match="need group_size"):
        ADVANTAGES["grpo"](T([1., 0]))
    with pytest.raises(ValueError, match="do not split into groups of 2"):
        ADVANTAGES["grpo"](T([1., 0, 1]), 2)
    with pytest.raises(ValueError, match="at least 2 samples per prompt"):
        ADVANTAGES["rloo"](T([[1.], [0.]]))
    with pytest.raises(ValueError, match="group_size=3"):
        ADVANTAGES["grpo"](T([[1., 0]]), 3)


# ---------------------------------------------------------------- aggregation

# row 0: 4 response tokens, row 1: 2, row 2: none (padding); masked positions hold junk that must not count
VALUES = T([[1., 2, 3, 4], [5, 6, 100, 100], [7, 7, 7, 7]], dtype=D)
MASK = T([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=D)


@pytest.mark.parametrize("mode,kw,loss,pair", [
    ("token-mean", {}, 21 / 6, [21, 6]),                           # (10 + 11) / 6 tokens
    ("seq-mean-token-sum", {}, 10.5, [21, 2]),                     # (10 + 11) / 2 sequences
    ("seq-mean-token-mean", {}, 4.0, [8, 2]),                      # (10/4 + 11/2) / 2 = (2.5 + 5.5) / 2
    ("seq-mean-token-sum-norm", {}, 2.625, [21, 8]),               # 21 / (2 sequences * T=4)
    ("seq-mean-token-sum-norm", {"max_len": 8}, 1.3125, [21, 16]),  # 21 / (2 * 8)
    ("token-mean", {"denominator": 42}, 0.5, [21, 6]),             # a global divisor; the pair stays local
])
def test_aggregation_modes_on_a_ragged_mask(mode, kw, loss, pair):
    out, p = aggregate(VALUES, MASK, mode, **kw)
    close(out, loss, 1e-12)
    close(p, pair, 1e-12)


def test_aggregation_errors():
    with pytest.raises(ValueError, match="choose one of: token-mean"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="max_len=3 but a response has 4 tokens"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm", max_len=3)
    with pytest.raises(ValueError, match="differ"):
        aggregate(VALUES, MASK[:, :2])


def test_pairs_from_two_micro_batches_give_the_exact_global_mean():
    # micro-batch 1: tokens summing to 10 over 4 tokens; micro-batch 2: 11 over 2: global token mean 21/6,
    # not the mean of means (2.5 + 5.5) / 2 = 4
    _, p1 = aggregate(VALUES[:1], MASK[:1])
    _, p2 = aggregate(VALUES[1:], MASK[1:])
    total = p1 + p2
    close(total[0] / total[1], 21 / 6, 1e-12)


# ---------------------------------------------------------------- ppo clipped surrogate

def test_ratio_one_gives_minus_the_advantage_mean():
    old = T([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2]], dtype=D)
    loss, m = ppo_clip_loss(old.clone().requires_grad_(), old, T([2., -1.]), torch.ones(2, 3))
    close(loss, -(2 * 3 - 1 * 3) / 6, 1e-12)  # -0.5 = -mean advantage over tokens
    close(m["clip_frac"], [0, 6], 1e-12)
    close(m["ratio_mean"], [6, 6], 1e-12)
    close(m["approx_kl"], [0, 6], 1e-12)
    close(m["tokens"], [6, 1], 1e-12)
    close(m["response_length"], [6, 2], 1e-12)


def _four_tokens():
    # one token per sample: (A, r) = (+1, 1.5), (+1, 0.5), (-2, 0.5), (-1, 1.5)
    ratio = T([[1.5], [0.5], [0.5], [1.5]], dtype=D)
    old = T([[-1.0], [-2.0], [-0.7], [-3.0]], dtype=D)
    lp = (old + ratio.log()).requires_grad_()
    return lp, old, T([1., 1., -2., -1.], dtype=D), torch.ones(4, 1, dtype=D)


def test_clip_sides_depend_on_the_sign_of_the_advantage_and_gradients():
    lp, old, adv, mask = _four_tokens()
    loss, m = ppo_clip_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # per-token losses: A>0,r=1.5 -> max(-1.5, -1.28) = -1.28 (clipped high); A>0,r=.5 -> max(-.5, -.8) = -.5;
    # A=-2,r=.5 -> max(1, 1.6) = 1.6 (clipped low); A<0,r=1.5 -> max(1.5, 1.28) = 1.5
    per_token = [-1.28, -0.5, 1.6, 1.5]
    close(loss, sum(per_token) / 4, 1e-12)
    for i, want in enumerate(per_token):  # one sample at a time, so errors cannot cancel in the mean
        close(ppo_clip_loss(lp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], clip_low=0.2,
                            clip_high=0.28)[0], want, 1e-12)
    close(m["clip_frac"], [2, 4], 1e-12)
    close(m["clip_frac_high"], [1, 4], 1e-12)
    close(m["clip_frac_low"], [1, 4], 1e-12)
    close(m["ratio_mean"], [4.0, 4], 1e-12)
    # k3 = r - 1 - log r: 1.5 -> .094535, .5 -> .193147; two of each
    close(m["approx_kl"], [2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2.0)), 4], 1e-9)
    close(m["policy_loss"], [sum(per_token), 4], 1e-12)
    (grad,) = torch.autograd.grad(loss, lp)
    # d(-A r / N)/d logp = -A r / N on unclipped tokens, 0 on clipped ones
    close(grad.flatten(), [0.0, -0.5 / 4, 0.0, 1.5 / 4], 1e-12)


def test_dual_clip_bounds_negative_advantages():
    ratio = T([[5.0], [2.0], [5.0]], dtype=D)
    old = torch.zeros(3, 1, dtype=D)
    lp = ratio.log().requires_grad_()
    adv = T([-1., -1., 1.], dtype=D)
    loss, m = ppo_clip_loss(lp, old, adv, torch.ones(3, 1), clip_c=3.0)
    # A<0,r=5 -> min(max(5, 1.2), 3) = 3 (dual clipped); A<0,r=2 -> 2 (< 3); A>0,r=5 -> -1.2 (clipped high)
    close(loss, (3 + 2 - 1.2) / 3, 1e-12)
    close(m["dual_clip_frac"], [1, 3], 1e-12)
    (grad,) = torch.autograd.grad(loss, lp)
    close(grad.flatten(), [0.0, 2.0 / 3, 0.0], 1e-12)
    with pytest.raises(ValueError, match="clip_c must be > 1"):
        ppo_clip_loss(lp, old, adv, torch.ones(3, 1), clip_c=0.5)


def test_ppo_aggregation_modes_and_their_gradients():
    old = torch.zeros(3, 4, dtype=D)
    adv = T([1., 2., 3.], dtype=D)  # row 2 has no response tokens, its advantage must not count
    for agg, want in [("token-mean", -(1 * 4 + 2 * 2) / 6), ("seq-mean-token-sum", -(4 + 4) / 2),
                      ("seq-mean-token-mean", -(1 + 2) / 2), ("seq-mean-token-sum-norm", -8 / (2 * 4))]:
        loss, m = ppo_clip_loss(old.clone(), old, adv, MASK, agg=agg)
        close(loss, want, 1e-12)
    lp = old.clone().requires_grad_()
    loss, _ = ppo_clip_loss(lp, old, adv, MASK, agg="seq-mean-token-mean")
    (grad,) = torch.autograd.grad(loss, lp)
    # -A_b / (n_b * |S|): row 0 -1/(4*2), row 1 -2/(2*2), padding 0
    close(grad, [[-0.125] * 4, [-0.5, -0.5, 0, 0], [0] * 4], 1e-12)


def test_ppo_shape_errors():
    with pytest.raises(ValueError, match="expected \\[B\\]=2"):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), T([1., 2., 3.]), torch.ones(2, 3))
    with pytest.raises(ValueError, match="must all be \\[B, T\\]"):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 2), T([1., 2.]), torch.ones(2, 3))


# ---------------------------------------------------------------- gspo

def test_gspo_sequence_ratio_value_and_gradient():
    old = torch.zeros(1, 2, dtype=D)
    # token log ratios .2 and -.2: geometric mean ratio s = 1, inside any clip range: loss -A, grad -A s / n
    lp = T([[0.2, -0.2]], dtype=D).requires_grad_()
    loss, m = gspo_loss(lp, old, T([1.], dtype=D), torch.ones(1, 2))
    close(loss, -1.0, 1e-12)
    close(torch.autograd.grad(loss, lp)[0], [[-0.5, -0.5]], 1e-12)
    close(m["ratio_mean"], [math.exp(0.2) + math.exp(-0.2), 2], 1e-12)  # per token, not the sequence's
    close(m["seq_ratio_mean"], [1.0, 1], 1e-12)
    # log ratios .2 and 0: s = e^.1 = 1.105171 > 1 + 4e-4 with A > 0: clipped, loss -1.0004, no gradient
    lp = T([[0.2, 0.0]], dtype=D).requires_grad_()
    loss, m = gspo_loss(lp, old, T([1.], dtype=D), torch.ones(1, 2))
    close(loss, -1.0004, 1e-12)
    close(torch.autograd.grad(loss, lp)[0], [[0.0, 0.0]], 1e-12)
    close(m["clip_frac"], [2, 2], 1e-12)
    close(m["clip_frac_high"], [2, 2], 1e-12)
    # same ratio with A < 0: not clipped, loss -A s = s, grad -A s / n = s / 2 on both tokens
    loss, m = gspo_loss(lp, old, T([-1.], dtype=D), torch.ones(1, 2))
    close(loss, math.exp(0.1), 1e-12)
    close(torch.autograd.grad(loss, lp)[0], [[math.exp(0.1) / 2] * 2], 1e-12)


# ---------------------------------------------------------------- kl and entropy

def test_kl_estimators_on_known_values():
    lp, ref = T([[math.log(0.5), math.log(0.25)]], dtype=D), T([[math.log(0.25), math.log(0.5)]], dtype=D)
    ln2 = math.log(2.0)
    close(kl_penalty(lp, ref, "k1"), [[ln2, -ln2]], 1e-12)
    close(kl_penalty(lp, ref, "k2"), [[ln2 ** 2 / 2, ln2 ** 2 / 2]], 1e-12)
    # k3 = exp(d) - d - 1, d = ref - lp: d = -ln2 -> .5 + ln2 - 1 = .193147; d = ln2 -> 2 - ln2 - 1 = .306853
    close(kl_penalty(lp, ref, "k3"), [[0.5 + ln2 - 1, 1 - ln2]], 1e-12)
    for kind in ("k1", "k2", "k3"):
        close(kl_penalty(lp, lp, kind), [[0, 0]], 0)
    with pytest.raises(ConfigError, match="unknown KL estimator 'k4'"):
        kl_penalty(lp, ref, "k4")
    with pytest.raises(ValueError, match="differ"):
        kl_penalty(lp, ref[:, :1])


def test_k1_and_k3_are_unbiased_exactly_on_a_discrete_distribution():
    p, q = T([0.5, 0.25, 0.25], dtype=D), T([0.25, 0.5, 0.25], dtype=D)
    kl = float((p * (p / q).log()).sum())  # KL(p || q) = .5 ln2 - .25 ln2 = .173287
    for kind in ("k1", "k3"):
        est = kl_penalty(p.log()[None], q.log()[None], kind)[0]
        close((p * est).sum(), kl, 1e-12)
    assert float((p * kl_penalty(p.log()[None], q.log()[None], "k3")).sum()) > 0
    assert bool((kl_penalty(p.log()[None], q.log()[None], "k3") >= 0).all())


def test_entropy_from_logits():
    close(entropy_from_logits(torch.zeros(2, 3, 8)), torch.full((2, 3), math.log(8)), 1e-6)
    close(entropy_from_logits(torch.full((1, 1, 5), 7.0)), [[math.log(5)]], 1e-6)  # shift-invariant
    two = T([[[math.log(0.75), math.log(0.25)]]])
    close(entropy_from_logits(two), [[-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]], 1e-6)  # .562335
    masked = T([[[0.0, -float("inf"), -float("inf")]]])
    close(entropy_from_logits(masked), [[0.0]], 0)  # a masked token adds 0, not nan


# ---------------------------------------------------------------- overlong and dynamic sampling

def test_overlong_soft_penalty():
    # max_len 10, buffer 4: free up to 6, then -(L - 6) / 4, -1 beyond 10
    close(overlong_soft_penalty(T([3, 6, 7, 8, 10, 11]), 10, 4), [0, 0, -0.25, -0.5, -1, -1], 1e-7)
    close(overlong_soft_penalty(T([7, 11]), 10, 4, factor=0.5), [-0.125, -0.5], 1e-7)
    with pytest.raises(ValueError, match="buffer must be in"):
        overlong_soft_penalty(T([1]), 10, 0)


def test_dynamic_sampling_keeps_groups_with_different_rewards():
    keep = dynamic_sampling_keep(T([[1., 1, 1], [0, 1, 0], [0, 0, 0], [0.5, 0.5, 0.5]]))
    assert keep.tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="view\\(-1, group_size\\)"):
        dynamic_sampling_keep(T([1., 0]))
