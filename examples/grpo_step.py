"""One GRPO-style policy update on a tiny Hugging Face causal LM, without its logits.

Needs: crossentropy[hf]
Run: python examples/grpo_step.py [--groups 4] [--samples 4] [--length 24] [--seed 0]

Each prompt gets a group of sampled completions with scalar rewards; the advantage of a completion
is its reward standardised within its group (Shao et al. 2024, "DeepSeekMath", GRPO). The loss per
completion token is PPO's clipped objective on the ratio pi_new / pi_old, minus an entropy bonus:

    ratio = exp(logp_new - logp_old)
    token loss = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - c_ent * entropy

averaged over completion tokens. The log-probabilities and entropies come from
``crossentropy.hf.token_logprobs``: the model's final hidden states and its output embedding,
never the (B, T, V) logits. The script then computes the same step from the model's materialised
logits and checks that the loss and every parameter gradient agree, and prints both.
"""

from __future__ import annotations

import argparse

import torch
import transformers

from crossentropy import hf


def build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(cfg).double()  # float64: an exact comparison


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    entropy: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    entropy_coef: float,
) -> torch.Tensor:
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    per_token = -surrogate - entropy_coef * entropy
    return (per_token * mask).sum() / mask.sum()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=4, help="prompts (default: 4)")
    parser.add_argument(
        "--samples", type=int, default=4, help="completions per prompt (default: 4)"
    )
    parser.add_argument("--length", type=int, default=24, help="tokens per sequence (default: 24)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model = build(args.seed).train()
    g = torch.Generator().manual_seed(args.seed + 1)
    prompt_len = args.length // 3
    n = args.groups * args.samples
    # rollouts: each group shares its prompt; completions are sampled from the model itself
    prompts = torch.randint(0, 512, (args.groups, prompt_len), generator=g)
    ids = prompts.repeat_interleave(args.samples, 0)
    with torch.no_grad():
        for _ in range(args.length - prompt_len):
            probs = model(input_ids=ids).logits[:, -1].softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
    rewards = torch.rand(n, generator=g, dtype=torch.float64)
    grouped = rewards.view(args.groups, args.samples)
    advantages = (
        (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
    ).view(-1)
    # score the completion tokens only: targets at positions >= prompt_len - 1 predict completions
    mask = torch.zeros(n, args.length - 1, dtype=torch.float64)
    mask[:, prompt_len - 1 :] = 1.0
    clip, entropy_coef = 0.2, 0.01

    # old log-probabilities: the policy before the update (here: the same weights, no gradient)
    with torch.no_grad():
        old_logp = hf.token_logprobs(model, ids)
    # a second, perturbed policy so the ratios are not all 1 (as after a few inner steps)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))

    params = [p for p in model.parameters() if p.requires_grad]
    out = hf.token_logprobs(model, ids, return_entropy=True)
    loss = grpo_loss(out.logprobs, old_logp, out.entropy, advantages, mask, clip, entropy_coef)
    grads = torch.autograd.grad(loss, params)

    # the same step from the materialised logits
    logits = model(input_ids=ids).logits[:, :-1]
    logp_all = logits.log_softmax(-1)
    ref_logp = logp_all.gather(-1, ids[:, 1:, None])[..., 0]
    ref_ent = -(logp_all.exp() * logp_all).sum(-1)
    ref_loss = grpo_loss(ref_logp, old_logp, ref_ent, advantages, mask, clip, entropy_coef)
    ref_grads = torch.autograd.grad(ref_loss, params)

    worst = max(
        float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
        for a, b in zip(grads, ref_grads)
    )
    result = {
        "loss": float(loss.detach()),
        "loss_from_logits": float(ref_loss.detach()),
        "loss_difference": abs(float(loss.detach()) - float(ref_loss.detach())),
        "worst_relative_gradient_difference": worst,
        "mean_ratio": float(torch.exp(out.logprobs.detach() - old_logp)[mask.bool()].mean()),
        "mean_entropy": float(out.entropy.detach()[mask.bool()].mean()),
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.3e}")
    assert result["loss_difference"] < 1e-10 and worst < 1e-8, "fused and materialised steps differ"
    print("the fused step equals the step from materialised logits")
    return result


if __name__ == "__main__":
    main()
