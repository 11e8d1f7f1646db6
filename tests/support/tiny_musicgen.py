"""Build a tiny random-weight MusicGen (T5 text encoder, Encodec, 2-codebook
decoder) from configs, with no download, and save it where
MusicgenForConditionalGeneration and AutoTokenizer load it. Runs with the
musicgen engine's Python. ../shared/ENVIRONMENT.md has the two traps this
avoids: the Encodec bandwidth must give at least one quantizer, and the
decoder's pad/bos id must be its codebook size.

    python tests/support/tiny_musicgen.py OUT_DIR [--channels 1|2]

16 kHz audio, 500 frames a second (hop 32), at most 4 seconds.
"""

import argparse
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    EncodecConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    PreTrainedTokenizerFast,
    T5Config,
)

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("--channels", type=int, default=1, choices=[1, 2])
args = parser.parse_args()
torch.manual_seed(0)

# A word-level tokenizer over a hand-written vocabulary (unknown words map to [UNK]).
words = ["[PAD]", "[UNK]", "</s>", "a", "calm", "piano", "loud", "drums", "jazz", "with", "and", "music"]
word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
word_level.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")

codebook = 64
text = T5Config(vocab_size=len(words), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
audio = EncodecConfig(
    sampling_rate=16000, audio_channels=1, upsampling_ratios=[8, 4], target_bandwidths=[10.0], hidden_size=32,
    num_filters=8, codebook_size=codebook, codebook_dim=32, num_lstm_layers=1,
)
# A stereo MusicGen decodes two codebook sets, one per channel, through a mono Encodec.
decoder = MusicgenDecoderConfig(
    vocab_size=codebook, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
    num_codebooks=2 * args.channels, audio_channels=args.channels, pad_token_id=codebook, bos_token_id=codebook,
    max_position_embeddings=2002,
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder))
model.generation_config.decoder_start_token_id = codebook
# Encodec's codebooks start as zeros (a real one learns them): every code would
# decode to the same sound, and different seeds to the same audio.
with torch.no_grad():
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_()
model.save_pretrained(args.out)
tokenizer.save_pretrained(args.out)
print(f"tiny MusicGen written to {args.out}")
