"""A PyTorch port of musicnn (Pons & Serra, ISMIR 2019 LBD) and its VGG baseline, with the trained weights of the
`musicnn` wheel (PyPI musicnn==0.1.0, ISC licence) read from its TensorFlow checkpoints; no TensorFlow at run time.

Written from the wheel's musicnn/models.py, extractor.py and configuration.py, and checked against the graph it
stores (`.meta`, saved by TensorFlow 1.12): every layer below names the variables it loads. tests/fixtures/
make_musicnn_reference.py runs the original graph on fixed clips; tests/test_musicnn.py compares this port to it.

Input (`log_mel_patches`)
    16 kHz mono. librosa's mel spectrogram with the wheel's arguments (n_fft 512, hop 256, 96 bands; power 2,
    Hann window, centred frames, Slaney mel filters with area normalisation) and librosa 0.7.0's padding at the
    edges, "reflect": the models were trained with librosa 0.7.0 (musicnn-training's requirements), and librosa
    0.10 changed the default to zeros. The spectrogram is rounded to float16 and log-compressed as
    log10(10000 x + 1) in float16 arithmetic, as the original (extractor.py, and the training loader) does.
    One deviation: where 10000 x exceeds float16's range (x > 6.55, i.e. a loud tonal component: about half of
    the demo's notes have such a bin), the original gets inf, and the graph then returns the same taggram
    whatever the clip. Here the product saturates at float16's largest value (65504), so the log is 4.816, the
    largest the original can produce; everywhere else the input is bit for bit the original's.
    Patches: 187 frames (3 s), cut without overlap from the first frame, the remainder dropped (the extractor's
    default, input_overlap=False). A clip shorter than 187 frames is repeated to fill one patch (training's
    "repeat-pad"); the original extractor fails on such clips.

musicnn (MTT_musicnn, MSD_musicnn; 50 tags each)
    input batch norm -> front end: timbral convolutions 7x38 and 7x67 (204 filters each, time padded by 3,
    frequency valid) and temporal convolutions 128x1, 64x1, 32x1 (51 filters each, TensorFlow "same" padding),
    each ReLU -> batch norm -> max over frequency; concatenated (561 channels per frame) -> mid end: three 1-D
    convolutions over time (kernel 7, 64 filters, ReLU -> batch norm), the second and third residual; dense
    connection of front end and mid end (753 channels per frame) -> back end: max and mean over time (753 each,
    interleaved as in TensorFlow's flatten: max_0, mean_0, max_1, ...) -> batch norm -> dense 200 (ReLU) ->
    batch norm ("penultimate") -> dense 50 (logits) -> sigmoid (the taggram). Batch norms use the moving
    statistics (inference) with TensorFlow's epsilon 0.001; dropout is inactive at inference.
VGG (MTT_vgg, MSD_vgg)
    input batch norm -> five blocks of 3x3 convolution ("same", 128 filters, ReLU) -> batch norm -> max pool
    -> flatten in TensorFlow's order (time, frequency, channel; 2x1x128 = 256) -> dense 50. The pools differ:
    MTT_vgg pools 4x1 with stride 2x2, then 2x2 three times, then 4x4 (the wheel's models.py); MSD_vgg's stored
    graph pools 4x1 (stride 4x1), 1x4, 2x2, 2x2, 4x4. The wheel's own code builds MTT_vgg's pools for both, so
    it cannot run MSD_vgg correctly (its extractor calls that model "still training"); the port follows the
    stored graph.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SAMPLE_RATE = 16_000
N_FFT = 512
HOP = 256
N_MELS = 96
PAD_MODE = "reflect"
PATCH_FRAMES = 187        # librosa.time_to_frames(3 s) + 1, as the extractor computes it
LOG_SCALE = 10_000
FLOAT16_MAX = float(np.finfo(np.float16).max)
BN_EPSILON = 1e-3         # tf.layers.batch_normalization's default, stored in the graph

MTT_LABELS = ("guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
              "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing", "vocals",
              "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal", "pop", "soft",
              "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance", "male voice", "female vocal",
              "beats", "harp", "cello", "no voice", "weird", "country", "metal", "female voice", "choral")
MSD_LABELS = ("rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
              "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock", "soul",
              "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental", "punk", "oldies",
              "blues", "hard rock", "ambient", "acoustic", "experimental", "female vocalist", "guitar", "Hip-Hop",
              "70s", "party", "country", "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal",
              "Progressive rock", "60s", "rnb", "indie pop", "sad", "House", "happy")
# Checkpoint folder inside the wheel -> (architecture, tag names).
MODELS = {"MTT_musicnn": ("musicnn", MTT_LABELS), "MSD_musicnn": ("musicnn", MSD_LABELS),
          "MTT_vgg": ("vgg", MTT_LABELS), "MSD_vgg": ("vgg", MSD_LABELS)}
# The VGG models' max pools (kernel height, width, stride height, width), read from their stored graphs.
VGG_POOLS = {"MTT_vgg": ((4, 1, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4)),
             "MSD_vgg": ((4, 1, 4, 1), (1, 4, 1, 4), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))}


# ---- input --------------------------------------------------------------------------------------------------

def log_mel(waveform: np.ndarray) -> np.ndarray:
    """Mono 16 kHz float32 waveform -> float32 [frames, 96]: log10(10000 x + 1) of the float16 mel spectrogram."""
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(waveform, dtype=np.float32), sr=SAMPLE_RATE, n_fft=N_FFT,
                                         hop_length=HOP, n_mels=N_MELS, pad_mode=PAD_MODE)
    mel16 = mel.T.astype(np.float16)
    with np.errstate(over="ignore"):
        product = mel16 * np.float16(LOG_SCALE)
    product[np.isinf(product)] = FLOAT16_MAX
    return np.log10(product + np.float16(1)).astype(np.float32)


def patches(log_mel_frames: np.ndarray) -> np.ndarray:
    """[frames, 96] -> [n, 187, 96]: consecutive patches from the first frame; a short clip is repeated."""
    frames = len(log_mel_frames)
    if frames < PATCH_FRAMES:
        repeats = -(-PATCH_FRAMES // max(frames, 1))
        return np.concatenate([log_mel_frames] * repeats)[None, :PATCH_FRAMES]
    count = (frames - PATCH_FRAMES) // PATCH_FRAMES + 1
    return np.stack([log_mel_frames[k * PATCH_FRAMES:(k + 1) * PATCH_FRAMES] for k in range(count)])


def log_mel_patches(waveform: np.ndarray) -> np.ndarray:
    return patches(log_mel(waveform))


# ---- weights ------------------------------------------------------------------------------------------------

def _batch_norm(weights: dict, name: str, features: int, dims: int):
    layer = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(features, eps=BN_EPSILON)
    state = {"weight": weights[f"{name}/gamma"], "bias": weights[f"{name}/beta"],
             "running_mean": weights[f"{name}/moving_mean"], "running_var": weights[f"{name}/moving_variance"]}
    layer.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()},
                          strict=False)
    return layer


def _conv2d(weights: dict, name: str, padding=0):
    kernel = weights[f"{name}/kernel"]                  # TensorFlow: [height, width, in, out]
    layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], padding=padding)
    layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    layer.bias.data = torch.from_numpy(np.ascontiguousarray(weights[f"{name}/bias"]))
    return layer


def _time_conv(weights: dict, name: str):
    """A [7, C, 1, out] convolution over a [time, C] map with valid frequency: a 1-D convolution over time."""
    kernel = weights[f"{name}/kernel"]
    layer = nn.Conv1d(kernel.shape[1], kernel.shape[3], kernel.shape[0], padding=kernel.shape[0] // 2)
    layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel[:, :, 0, :].transpose(2, 1, 0)))
    layer.bias.data = torch.from_numpy(np.ascontiguousarray(weights[f"{name}/bias"]))
    return layer


def _dense(weights: dict, name: str):
    kernel = weights[f"{name}/kernel"]                  # TensorFlow: [in, out]
    layer = nn.Linear(*kernel.shape)
    layer.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
    layer.bias.data = torch.from_numpy(np.ascontiguousarray(weights[f"{name}/bias"]))
    return layer


def _same_time_padding(kernel_height: int) -> tuple[int, int, int, int]:
    """TensorFlow's "same" padding for a [k, 1] kernel at stride 1: (k - 1) // 2 before, the rest after."""
    before = (kernel_height - 1) // 2
    return (0, 0, before, kernel_height - 1 - before)


def _norm_relu_max(maps: torch.Tensor, norm: nn.BatchNorm2d) -> torch.Tensor:
    """max over frequency of norm(relu(maps)) for maps [B, C, T, F] -> [B, C, T], without the full-size maps.

    ReLU and the per-channel affine map of an inference batch norm are monotone (the latter decreasing where
    gamma < 0), so the maximum over frequency is taken first, of the raw maps: their maximum where gamma > 0,
    their minimum where gamma < 0. Rounding is monotone too, so the result is the same number; the batch norm
    then runs on a map 30-96 times smaller (the full-size ReLU and batch norm took 28 % of a profile).
    """
    low, high = torch.aminmax(maps, dim=3)
    def normed(values):
        return F.batch_norm(F.relu(values), norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)
    return torch.where((norm.weight >= 0)[None, :, None], normed(high), normed(low))


# ---- the networks -------------------------------------------------------------------------------------------

class Musicnn(nn.Module):
    """forward(x [B, 187, 96]) -> dict of the original's outputs (see LAYERS), batch first."""
    LAYERS = ("timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool", "penultimate", "logits",
              "taggram")

    def __init__(self, weights: dict):
        super().__init__()
        self.input_norm = _batch_norm(weights, "batch_normalization", 1, 2)
        # Front end: conv2d, conv2d_1 timbral; conv2d_2..4 temporal; batch_normalization_1..5 after them.
        self.front_convs = nn.ModuleList(_conv2d(weights, f"conv2d{'' if k == 0 else f'_{k}'}") for k in range(5))
        self.front_norms = nn.ModuleList(_batch_norm(weights, f"batch_normalization_{k + 1}",
                                                     weights[f"batch_normalization_{k + 1}/beta"].shape[0], 2)
                                         for k in range(5))
        self.mid_convs = nn.ModuleList(_time_conv(weights, f"conv2d_{k}") for k in (5, 6, 7))
        self.mid_norms = nn.ModuleList(_batch_norm(weights, f"batch_normalization_{k}", 64, 1) for k in (6, 7, 8))
        self.pool_norm = _batch_norm(weights, "batch_normalization_9", weights["dense/kernel"].shape[0], 1)
        self.dense = _dense(weights, "dense")
        self.dense_norm = _batch_norm(weights, "batch_normalization_10", self.dense.out_features, 1)
        self.output = _dense(weights, "dense_1")

    def forward(self, x: torch.Tensor) -> dict:
        x = self.input_norm(x[:, None])                                  # [B, 1, T, F]
        front = []
        for k, (conv, norm) in enumerate(zip(self.front_convs, self.front_norms)):
            height = conv.kernel_size[0]
            # Timbral kernels: time padded by 3 on both sides (models.py pads before the convolution);
            # temporal kernels: TensorFlow "same" padding, which for an even height pads one more after.
            padded = F.pad(x, (0, 0, 3, 3) if k < 2 else _same_time_padding(height))
            front.append(_norm_relu_max(conv(padded), norm))             # [B, C, T]
        front_end = torch.cat(front, dim=1)                              # [B, 561, T]
        mid = [front_end]
        previous = None
        for conv, norm in zip(self.mid_convs, self.mid_norms):
            out = norm(F.relu(conv(mid[-1])))
            out = out if previous is None else out + previous
            mid.append(out)
            previous = out
        features = torch.cat(mid, dim=1)                                 # [B, 753, T]
        max_pool, mean_pool = features.amax(dim=2), features.mean(dim=2)
        flat = torch.stack([max_pool, mean_pool], dim=2).flatten(1)      # TensorFlow's flatten of [B, 753, 2]
        penultimate = self.dense_norm(F.relu(self.dense(self.pool_norm(flat))))
        logits = self.output(penultimate)
        return {"timbral": torch.cat(front[:2], dim=1).transpose(1, 2),
                "temporal": torch.cat(front[2:], dim=1).transpose(1, 2),
                "cnn1": mid[1].transpose(1, 2), "cnn2": mid[2].transpose(1, 2), "cnn3": mid[3].transpose(1, 2),
                "mean_pool": mean_pool, "max_pool": max_pool, "penultimate": penultimate,
                "logits": logits, "taggram": torch.sigmoid(logits)}


class Vgg(nn.Module):
    """forward(x [B, 187, 96]) -> dict: pool1..pool5 as [B, time, frequency, channel] (TensorFlow's layout),
    logits and taggram."""
    LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5", "logits", "taggram")

    def __init__(self, weights: dict, pools: tuple):
        super().__init__()
        self.pools = pools
        self.input_norm = _batch_norm(weights, "batch_normalization", 1, 2)
        self.convs = nn.ModuleList(_conv2d(weights, f"{k}CNN", padding=1) for k in range(1, 6))
        self.norms = nn.ModuleList(_batch_norm(weights, f"batch_normalization_{k}",
                                               weights[f"batch_normalization_{k}/beta"].shape[0], 2)
                                   for k in range(1, 6))
        self.output = _dense(weights, "dense")

    def forward(self, x: torch.Tensor) -> dict:
        x = self.input_norm(x[:, None])
        outputs = {}
        for k, (conv, norm, pool) in enumerate(zip(self.convs, self.norms, self.pools)):
            x = F.max_pool2d(norm(F.relu(conv(x))), kernel_size=pool[:2], stride=pool[2:])
            outputs[f"pool{k + 1}"] = x.permute(0, 2, 3, 1)
        logits = self.output(outputs["pool5"].flatten(1))
        return {**outputs, "logits": logits, "taggram": torch.sigmoid(logits)}


def build_network(model: str, weights: dict) -> nn.Module:
    """The network of one of MODELS, with `weights` (checkpoint variable name -> array) loaded, in eval mode."""
    architecture = MODELS[model][0]
    network = Musicnn(weights) if architecture == "musicnn" else Vgg(weights, VGG_POOLS[model])
    return network.eval().requires_grad_(False)
