"""Build a tiny random-weight Stable Diffusion pipeline from configs, with no
download (../shared/ENVIRONMENT.md has the recipe), and save it where
AutoPipelineForText2Image loads it. Runs with the diffusers engine's Python.

    python tests/support/tiny_sd.py OUT_DIR
"""

import json
import string
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

out = Path(sys.argv[1])
torch.manual_seed(0)

# A tokenizer from a hand-written vocabulary: the special tokens, letters, and letters ending a word.
vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
for letter in string.ascii_lowercase:
    vocab[letter] = len(vocab)
    vocab[letter + "</w>"] = len(vocab)
with tempfile.TemporaryDirectory() as scratch:
    (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
    (Path(scratch) / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(Path(scratch) / "vocab.json"), str(Path(scratch) / "merges.txt"), model_max_length=77
    )

text_encoder = CLIPTextModel(
    CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
)
unet = UNet2DConditionModel(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32, norm_num_groups=32, attention_head_dim=8,
)
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32,
)
pipeline = StableDiffusionPipeline(
    unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=DDIMScheduler(),
    safety_checker=None, feature_extractor=None, requires_safety_checker=False,
)
pipeline.save_pretrained(out)
print(out)
