"""A checkpoint `r1 train` wrote, loaded as it is by transformers: logits side by side.

    python3 benches/hf_logits_check.py RUN_DIR/final [R1_BINARY]

Loads DIR with `AutoModelForCausalLM.from_pretrained` (float64, eager attention and experts),
runs `r1 logits --model DIR` on the same token ids (2 × 24 random ids of the vocabulary), and
prints transformers' loading report, both logits' sizes and max |Δ| / max |logit|. Exit status 1
when a weight is missing or mismatched, or when the relative difference exceeds 1e-4.
Needs torch, transformers and safetensors (any recent versions; the printed line names them).
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

model_dir = sys.argv[1]
r1 = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "target", "release", "r1")
cfg = json.load(open(os.path.join(model_dir, "config.json")))
torch.manual_seed(0)
ids = torch.randint(0, cfg["vocab_size"], (2, 24))

model, info = AutoModelForCausalLM.from_pretrained(
    model_dir, dtype=torch.float64, attn_implementation="eager", output_loading_info=True
)
model.set_experts_implementation("eager")  # the reference loop; grouped_mm has no float64
model.eval()
with torch.no_grad():
    ref = model(ids).logits

with tempfile.TemporaryDirectory() as tmp:
    ids_path = os.path.join(tmp, "ids.json")
    out_path = os.path.join(tmp, "logits.safetensors")
    json.dump(ids.tolist(), open(ids_path, "w"))
    subprocess.run([r1, "logits", "--model", model_dir, "--input-ids", ids_path, "--output", out_path], check=True)
    ours = load_file(out_path)["logits"].double()

rel = ((ours - ref).abs().max() / ref.abs().max()).item()
print(f"torch {torch.__version__}, transformers {transformers.__version__}")
print(f"loading report: missing {info['missing_keys']}, mismatched {info['mismatched_keys']}, "
      f"unexpected {len(info['unexpected_keys'])} (MTP layer tensors transformers does not use)")
print(f"logits {tuple(ours.shape)}: max |r1 - transformers| / max |logit| = {rel:.3e}")
ok = not info["missing_keys"] and not info["mismatched_keys"] and rel <= 1e-4
sys.exit(0 if ok else 1)
