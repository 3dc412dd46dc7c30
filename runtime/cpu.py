"""The x86 features that decide which int8 GEMM kernel ONNX Runtime runs on this CPU.

Read from /proc/cpuinfo on Linux (torch-free, no subprocess); elsewhere the features are recorded
as unknown (None) rather than guessed. `ctrt export` records them beside the verification
figures of every engine it verifies, and `ctrt bench` beside its int8 figures.

Why they matter: ONNX Runtime's u8 x s8 GEMM (MLAS) multiplies with VPMADDUBSW on x86 CPUs
without VNNI (SSE4.1, AVX2, AVX-512 without VNNI), which saturates each sum of two adjacent
products to int16; VNNI (VPDPBUSD, AVX-512 VNNI or AVX-VNNI) and AMX accumulate in int32 and
do not (onnxruntime's include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h,
`session.x64quantprecision`). The int8 engines of `ctrt export` keep every such sum below the
int16 limit (export/onnx_export.py, QUANT_OPTIONS), so they compute the same on either kind.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# As /proc/cpuinfo names them: AVX2 and FMA (the baseline of the AVX2 kernels), AVX-512
# foundation, the two VNNI encodings, and AMX's int8 tile multiply.
INT8_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


@dataclass(frozen=True)
class CpuFeatures:
    machine: str  # platform.machine(): x86_64, AMD64, aarch64, arm64, ...
    model: str  # the CPU's model name; "" when not known
    source: str  # where the features were read: "/proc/cpuinfo", or "unavailable"
    features: dict[str, bool | None]  # each of INT8_FEATURES: present, absent, None (unknown)

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in X86_MACHINES

    @property
    def u8s8_saturates(self) -> bool | None:
        """Whether ONNX Runtime's u8s8 GEMM here saturates pair sums to int16 (the VPMADDUBSW
        kernels of x86 CPUs without VNNI or AMX); None when the features are unknown."""
        if not self.is_x86:
            return False
        exact = [self.features[name] for name in ("avx512_vnni", "avx_vnni", "amx_int8")]
        if any(exact):
            return False
        return None if None in exact else True

    def describe(self) -> str:
        """One line: machine, model, the features present and absent, the u8s8 kernel's kind."""
        by_state: dict = {True: [], False: [], None: []}
        for name, present in self.features.items():
            by_state[present].append(name)
        flags = ", ".join(f"{prefix}{' '.join(by_state[state])}"
                          for state, prefix in ((True, ""), (False, "no "), (None, "unknown "))
                          if by_state[state])
        kernel = {True: "u8s8 pair sums saturate to int16 (VPMADDUBSW)",
                  False: "u8s8 sums exact in int32", None: "u8s8 kernel unknown"}
        model = f" {self.model}" if self.model else ""
        return f"{self.machine}{model}: {flags}; {kernel[self.u8s8_saturates]}"

    def to_dict(self) -> dict:
        return {**asdict(self), "u8s8_saturates": self.u8s8_saturates}

    @classmethod
    def from_dict(cls, record: dict) -> CpuFeatures:
        """The features as a manifest or bench.json recorded them (`to_dict`)."""
        return cls(record["machine"], record["model"], record["source"], record["features"])


def parse_cpuinfo(text: str, machine: str = "x86_64") -> CpuFeatures:
    """The features of the first processor in /proc/cpuinfo text (Linux lists every logical
    CPU with the same flags). A text without a `flags` line (ARM's has `Features`) gives
    INT8_FEATURES as unknown on x86 and absent elsewhere."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    if "flags" in fields:
        flags = set(fields["flags"].split())
        features = {name: name in flags for name in INT8_FEATURES}
    else:
        absent = None if machine.lower() in X86_MACHINES else False
        features = dict.fromkeys(INT8_FEATURES, absent)
    return CpuFeatures(machine, fields.get("model name", ""), str(CPUINFO), features)


def cpu_features() -> CpuFeatures:
    """This machine's CPU features (see the module's docstring)."""
    machine = platform.machine()
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"), machine)
    except OSError:
        return CpuFeatures(machine, platform.processor(), "unavailable",
                           dict.fromkeys(INT8_FEATURES))
