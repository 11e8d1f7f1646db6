"""Make a small LoRA adapter for a causal LM with peft, and the greedy answers
transformers + peft give with and without it: what vLLM must reproduce. Runs
with the transformers engine's interpreter (torch, transformers, peft).

    python tests/support/make_lora.py MODEL_DIR OUT_DIR SEED MAX_TOKENS < prompts.json > answers.json

The adapter (rank 8 on q_proj and v_proj) has random A and B, so it changes
the model's answers visibly; OUT_DIR gets adapter_config.json and
adapter_model.safetensors. answers.json: {"base": [...], "adapter": [...]},
one answer per prompt, chat template applied. In float32, as the test runs
vLLM: in bfloat16 a random adapter leaves some first tokens in exact ties
(SmolLM2 with seed 2: "The" and "A" both at 32.75), which each implementation
breaks its own way.
"""

import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, out_dir, seed, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompts = json.load(sys.stdin)
torch.manual_seed(seed)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
peft_model = get_peft_model(model, config)
peft_model.save_pretrained(out_dir)


def greedy(prompt: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = peft_model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


adapter = [greedy(p) for p in prompts]
with peft_model.disable_adapter():
    base = [greedy(p) for p in prompts]
json.dump({"base": base, "adapter": adapter}, sys.stdout)
