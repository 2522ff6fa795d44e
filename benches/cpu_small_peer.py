"""The peer of `cargo xtask bench cpu-small`: one training step (forward, backward, AdamW) of
transformers' DeepseekV3ForCausalLM on the CPU with the `cpu-small` configuration of
shared/docs/benchmarks.md, batch 8 x 256, lr 1e-3, f32. Prints one JSON line: the median step
time over STEPS steps after two warm-up steps, and tokens/s."""
import json
import statistics
import sys
import time

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

CPU_SMALL = {
    "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1,
    "n_routed_experts": 16, "routed_scaling_factor": 2.5, "kv_lora_rank": 64, "q_lora_rank": 128,
    "qk_rope_head_dim": 16, "v_head_dim": 32, "qk_nope_head_dim": 32, "n_group": 4, "topk_group": 2,
    "num_experts_per_tok": 4, "first_k_dense_replace": 1, "norm_topk_prob": True,
    "max_position_embeddings": 512, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}


def main(steps: int, batch: int = 8, seq: int = 256) -> None:
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(DeepseekV3Config(**CPU_SMALL))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, CPU_SMALL["vocab_size"], (batch, seq))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    print(json.dumps({
        "who": f"torch {torch.__version__} + transformers DeepseekV3ForCausalLM (eager)",
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(batch * seq / step_s, 1),
        "loss": round(loss.item(), 4),
    }))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
