"""Model configuration: one frozen dataclass, validated at construction.

Pure Python on purpose: the runtime reads the same fields from a manifest without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from compressive_rt.errors import ConfigError

COMPRESS_FNS = ("max_pool", "mean_pool", "conv", "dilated_conv", "most_used", "none")
PARAMETRIC_COMPRESS_FNS = ("conv", "dilated_conv")
POSITION_ENCODINGS = ("sinusoid", "learned")
FF_ACTIVATIONS = ("relu", "gelu")
RESIDUALS = ("add", "gru", "mogrifier_gru")
AUX_LOSSES = ("attention", "autoencoding", "both", "none")
# Checkpoints written before `aux_loss` existed trained conv/dilated_conv with both losses summed
# (and a decoder tied to the compressor); their configs are read with this value.
LEGACY_AUX_LOSS = "both"


@dataclass(frozen=True)
class ModelConfig:
    """A Compressive Transformer.

    Defaults are the project's default small model (N=8, d=512, H=8, d_ff=2048, L=128, M=128,
    C=64, c=4, byte vocabulary). `compress_fn="none"` with `cmem_len=0` is a plain
    Transformer-XL with the same memory (used as the comparison in benchmarks).
    """

    vocab_size: int = 256
    n_layers: int = 8
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    seg_len: int = 128  # L (n_s): tokens per segment
    mem_len: int = 128  # M (n_m): FIFO memory slots per layer
    cmem_len: int = 64  # C (n_cm): compressed memory slots per layer
    compress_rate: int = 4  # c
    compress_fn: str = "conv"
    dilation_rates: tuple[int, ...] = (1, 2, 4)  # only for compress_fn="dilated_conv"
    dropout: float = 0.0
    pre_norm: bool = True  # pre-LN block (official code); False is the paper's post-LN
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    # Architecture options of other implementations (ct_reference/importers.py maps
    # compressive-transformer-pytorch onto them); the defaults are this project's model.
    position_encoding: str = "sinusoid"  # Transformer-XL W_r R + u, v; "learned": a shared
    # per-head table [H, C+M+L, d_head] indexed from its end by distance and memory fill
    embed_dim: int | None = None  # token embedding width if not d_model (linear maps in/out)
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model)
    final_norm: bool = True  # pre-LN only: LayerNorm before the output head
    lm_head_bias: bool = False  # untied output head with a bias
    attn_out_bias: bool = False  # bias on the attention output projection
    ff_activation: str = "relu"  # "gelu" is the exact (erf) GELU
    ff_glu: bool = False  # feed-forward act(x W_a) * (x W_b) with both halves of width d_ff
    residual: str = "add"  # pre-LN only: "gru" gates each sublayer with a GRU cell;
    # "mogrifier_gru" first runs a mogrifier (5 rounds, rank d_model // 4) over both inputs
    store_normed_memory: bool = False  # pre-LN only: memories hold LN(h), not h
    memory_layers: tuple[int, ...] | None = None  # 0-based layers that read memory; None: all
    enhanced_recurrence: bool = False  # memory-layer k reads what memory-layer k+1 stored
    compress_bias: bool = False  # a bias on the strided compression convolution
    # Compression loss that trains f_c (the paper trains each configuration with one):
    # "attention" reconstruction (Algorithm 2, the paper's best with conv), "autoencoding"
    # (a learned decoder g, conv/dilated_conv only), "both" summed, or "none". Only compressors
    # with parameters are trained by it; the LM loss never reaches them.
    aux_loss: str = "attention"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dilation_rates", tuple(int(r) for r in self.dilation_rates))
        if self.memory_layers is not None:
            object.__setattr__(self, "memory_layers",
                               tuple(sorted({int(i) for i in self.memory_layers})))
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "seg_len",
                     "mem_len", "compress_rate"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                f"change one of them, e.g. n_heads={_divisor_near(self.d_model, self.n_heads)}")
        if self.mem_len % self.seg_len:
            raise ConfigError(
                f"mem_len ({self.mem_len}) must be a multiple of seg_len ({self.seg_len}) so each "
                f"segment evicts 0 or seg_len memories; e.g. mem_len="
                f"{max(1, round(self.mem_len / self.seg_len)) * self.seg_len}")
        if self.seg_len % self.compress_rate:
            raise ConfigError(
                f"seg_len ({self.seg_len}) must be a multiple of compress_rate "
                f"({self.compress_rate}) so seg_len evicted memories compress to whole slots")
        if self.compress_fn not in COMPRESS_FNS:
            raise ConfigError(
                f"unknown compress_fn {self.compress_fn!r}; choose one of "
                f"{', '.join(COMPRESS_FNS)}")
        if self.compress_fn == "none":
            if self.cmem_len != 0:
                raise ConfigError(
                    f"compress_fn='none' keeps no compressed memory: set cmem_len=0 "
                    f"(got {self.cmem_len})")
        elif not isinstance(self.cmem_len, int) or self.cmem_len < 1:
            raise ConfigError(
                f"cmem_len must be >= 1 when compression is on (compress_fn="
                f"{self.compress_fn!r}), got {self.cmem_len!r}; use compress_fn='none' for none")
        if self.compress_fn == "dilated_conv" and (
                not self.dilation_rates or min(self.dilation_rates) < 1):
            raise ConfigError(
                f"dilation_rates must be positive integers, got {self.dilation_rates!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        self._validate_options()

    def _validate_options(self) -> None:
        for name, choices in (("position_encoding", POSITION_ENCODINGS),
                              ("ff_activation", FF_ACTIVATIONS), ("residual", RESIDUALS),
                              ("aux_loss", AUX_LOSSES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of "
                                  f"{', '.join(choices)}")
        if self.embed_dim is not None and (not isinstance(self.embed_dim, int)
                                           or isinstance(self.embed_dim, bool)
                                           or self.embed_dim < 1):
            raise ConfigError(f"embed_dim must be a positive integer or null (= d_model), got "
                              f"{self.embed_dim!r}")
        if not self.pre_norm:
            for name, default in (("residual", "add"), ("store_normed_memory", False)):
                if getattr(self, name) != default:
                    raise ConfigError(f"{name}={getattr(self, name)!r} needs the pre-LN block: "
                                      f"set pre_norm=true or {name}={default!r}")
        if self.residual == "mogrifier_gru" and self.d_model < 4:
            raise ConfigError(f"residual='mogrifier_gru' factorises its gates at rank "
                              f"d_model // 4, which needs d_model >= 4 (got {self.d_model})")
        if self.memory_layers is not None:
            bad = [i for i in self.memory_layers if not 0 <= i < self.n_layers]
            if bad or not self.memory_layers:
                raise ConfigError(f"memory_layers must be a non-empty list of 0-based layer "
                                  f"indices below n_layers={self.n_layers}, got "
                                  f"{list(self.memory_layers)}; use null for every layer")
        if self.enhanced_recurrence and self.compress_fn == "most_used":
            raise ConfigError("enhanced_recurrence moves memories between layers, so usage "
                              "statistics of one layer's attention would rank another layer's "
                              "slots: use another compress_fn or enhanced_recurrence=false")
        if self.trains_decoder and self.compress_fn not in PARAMETRIC_COMPRESS_FNS:
            raise ConfigError(f"aux_loss={self.aux_loss!r} trains an auto-encoding decoder g, "
                              f"which only a convolutional compress_fn "
                              f"({', '.join(PARAMETRIC_COMPRESS_FNS)}) has; got compress_fn="
                              f"{self.compress_fn!r}: use aux_loss='attention' or 'none'")
        if self.compress_bias and self.compress_fn not in PARAMETRIC_COMPRESS_FNS:
            raise ConfigError(f"compress_bias needs a convolutional compress_fn "
                              f"({', '.join(PARAMETRIC_COMPRESS_FNS)}), got {self.compress_fn!r}")

    def has_memory(self, layer: int) -> bool:
        """Whether layer (0-based) reads its memory."""
        return self.memory_layers is None or layer in self.memory_layers

    @property
    def memory_read_order(self) -> tuple[int, ...]:
        """Which layer's stored memory each layer reads: itself, or with enhanced recurrence
        the next memory layer (the last memory layer reads the first)."""
        order = list(range(self.n_layers))
        if self.enhanced_recurrence:
            layers = [i for i in order if self.has_memory(i)]
            for k, layer in enumerate(layers):
                order[layer] = layers[(k + 1) % len(layers)]
        return tuple(order)

    @property
    def trains_decoder(self) -> bool:
        """Whether the auto-encoding loss is on (the model then holds a decoder g per layer)."""
        return self.aux_loss in ("autoencoding", "both")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def cmem_per_segment(self) -> int:
        """Compressed slots produced from one evicted segment: floor(L / c)."""
        return self.seg_len // self.compress_rate

    @property
    def context_len(self) -> int:
        """Keys a segment query can see: C + M + L (the relative-position table length)."""
        return self.cmem_len + self.mem_len + self.seg_len

    @property
    def temporal_range(self) -> int:
        """The paper's temporal range (M + c*C) * N in tokens."""
        return (self.mem_len + self.compress_rate * self.cmem_len) * self.n_layers

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["dilation_rates"] = list(self.dilation_rates)
        if self.memory_layers is not None:
            data["memory_layers"] = list(self.memory_layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _divisor_near(n: int, k: int) -> int:
    return min((h for h in range(1, n + 1) if n % h == 0), key=lambda h: abs(h - k))


PRESETS = {
    "default": ModelConfig(),
    # Small enough to train visibly in the demo's few minutes on 2 CPU cores.
    "tiny": ModelConfig(n_layers=4, d_model=256, n_heads=4, d_ff=1024, seg_len=64, mem_len=64,
                        cmem_len=32),
}
