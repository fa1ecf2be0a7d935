"""Tiny randomly-initialised CLAP checkpoints in the real on-disk layout, for tests and the benchmark.

`save_tiny_clap(directory, fused=...)` writes what `save_pretrained` writes for a checkpoint — config.json
(model_type "clap"), model.safetensors, the ClapProcessor's processor_config.json (feature extractor settings)
and a RoBERTa-style byte-level BPE tokenizer trained offline on a few sentences — so the embedder loads it by
path through the same code that loads laion/*.
`audio_tower="htsat-base"` gives the audio tower of the larger_clap_* checkpoints (patch embeddings 128,
depths 2-2-12-2, hidden 1024; ~68 M parameters) with a small text tower, for timing.
"""
from pathlib import Path

import torch

TOKENIZER_CORPUS = [
    "the sound of a brass instrument", "the sound of a bowed string instrument", "a plucked guitar note",
    "an acoustic piano playing a melody", "a distorted electric guitar riff", "a bright synth lead",
    "a dark reverberant organ chord", "a percussive mallet with a fast decay", "a flute with a long release",
    "orchestral strings and a choir", "a vocal melody over drums and bass", "a reed instrument such as a saxophone",
]
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# Audio tower sizes: "tiny" keeps the real input geometry (64 mel bins, 1001 frames folded into a 256x256
# image, window 8) with 8x8 patches and two narrow stages, ~60 ms per clip; "htsat-base" is the tower of
# laion/larger_clap_* (laion_clap's HTSAT-base).
AUDIO_TOWERS = {
    "tiny": dict(patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[1, 2], patch_size=8,
                 patch_stride=[8, 8]),
    "htsat-base": dict(patch_embeds_hidden_size=128, hidden_size=1024, depths=[2, 2, 12, 2],
                       num_attention_heads=[4, 8, 16, 32]),
}


def build_tokenizer():
    """A RoBERTa-layout fast tokenizer built offline (no roberta-base download)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TOKENIZER_CORPUS, vocab_size=400, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    return RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                pad_token="<pad>", mask_token="<mask>", model_max_length=62)


def tiny_clap_config(vocab_size: int, pad_token_id: int, fused: bool = False, audio_tower: str = "tiny",
                     projection_dim: int = 24):
    from transformers import ClapConfig
    audio = dict(AUDIO_TOWERS[audio_tower], enable_fusion=fused, fusion_type="aff_2d" if fused else None)
    text = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=64, pad_token_id=pad_token_id,
                type_vocab_size=1)
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


def save_tiny_clap(directory, fused: bool = False, seed: int = 0, extractor_truncation: str | None = None,
                   audio_tower: str = "tiny", with_tokenizer: bool = True, padding: str = "repeatpad") -> Path:
    """Write a randomly-initialised CLAP checkpoint to `directory` and return it.

    extractor_truncation is what preprocessor_config.json says (default: what the hub checkpoints say, "fusion"
    for fused and "rand_trunc" for unfused); pass "fusion" with fused=False to reproduce the trap of
    transformers' default extractor on an unfused model.
    """
    from transformers import ClapFeatureExtractor, ClapModel, ClapProcessor

    directory = Path(directory)
    tokenizer = build_tokenizer()
    config = tiny_clap_config(len(tokenizer), tokenizer.pad_token_id, fused=fused, audio_tower=audio_tower)
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    # Random BatchNorm statistics, so a wrong mel scale or filter bank changes the vectors visibly.
    with torch.no_grad():
        norm = model.audio_model.audio_encoder.batch_norm
        norm.running_mean.uniform_(-60.0, -20.0)
        norm.running_var.uniform_(100.0, 400.0)
    model.save_pretrained(directory)
    extractor = ClapFeatureExtractor(truncation=extractor_truncation or ("fusion" if fused else "rand_trunc"),
                                     padding=padding)
    if with_tokenizer:
        ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    else:
        extractor.save_pretrained(directory)
    return directory
