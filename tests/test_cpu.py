"""runtime.cpu: the x86 features that pick ONNX Runtime's int8 kernels, from /proc/cpuinfo text."""

import pytest

from compressive_rt.runtime.cpu import CpuFeatures, cpu_features, parse_cpuinfo

# The flags of a real AMD EPYC 7763 (Zen 3) guest: AVX2 + FMA, no AVX-512, no VNNI.
EPYC_7763_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl tsc_reliable "
    "nonstop_tsc cpuid extd_apicid aperfmperf pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
    "movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy svm cr8_legacy abm sse4a "
    "misalignsse 3dnowprefetch osvw topoext invpcid_single vmmcall fsgsbase bmi1 avx2 smep bmi2 "
    "erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero "
    "xsaveerptr rdpru arat npt nrip_save tsc_scale vmcb_clean flushbyasid decodeassists "
    "pausefilter pfthreshold v_vmsave_vmload umip vaes vpclmulqdq rdpid fsrm")
# The flags of a real Intel Xeon (Sapphire Rapids) guest: AVX-512 with VNNI, AVX-VNNI and AMX.
XEON_SPR_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc "
    "cpuid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt "
    "tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch "
    "cpuid_fault ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms "
    "invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw "
    "avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip "
    "pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid "
    "bus_lock_detect cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk ibt amx_bf16 "
    "avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities")


def cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    """/proc/cpuinfo text as Linux writes it: one block per logical CPU, a blank line after each."""
    return "".join(f"processor\t: {i}\nvendor_id\t: Vendor\nmodel name\t: {model}\n"
                   f"flags\t\t: {flags}\nbogomips\t: 4890.85\n\n" for i in range(processors))


def test_an_avx2_only_cpu_has_the_saturating_u8s8_kernel():
    cpu = parse_cpuinfo(cpuinfo("AMD EPYC 7763 64-Core Processor", EPYC_7763_FLAGS))
    assert cpu.features == {"avx2": True, "fma": True, "avx512f": False, "avx512_vnni": False,
                            "avx_vnni": False, "amx_int8": False}
    assert cpu.model == "AMD EPYC 7763 64-Core Processor" and cpu.source == "/proc/cpuinfo"
    assert cpu.u8s8_saturates is True
    assert cpu.describe() == ("x86_64 AMD EPYC 7763 64-Core Processor: avx2 fma, no avx512f "
                              "avx512_vnni avx_vnni amx_int8; u8s8 pair sums saturate to int16 "
                              "(VPMADDUBSW)")


def test_an_avx512_vnni_cpu_sums_u8s8_exactly():
    cpu = parse_cpuinfo(cpuinfo("Intel(R) Xeon(R) Processor", XEON_SPR_FLAGS))
    assert cpu.features == dict.fromkeys(
        ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"), True)
    assert cpu.u8s8_saturates is False
    assert cpu.describe() == ("x86_64 Intel(R) Xeon(R) Processor: avx2 fma avx512f avx512_vnni "
                              "avx_vnni amx_int8; u8s8 sums exact in int32")


@pytest.mark.parametrize("removed, saturates", [
    (("avx512_vnni", "amx_int8"), False),  # AVX-VNNI alone gives VPDPBUSD too
    (("avx512_vnni", "avx_vnni", "amx_int8"), True),  # AVX-512 without VNNI: VPMADDUBSW
])
def test_any_vnni_or_amx_means_exact_u8s8_sums(removed, saturates):
    flags = " ".join(flag for flag in XEON_SPR_FLAGS.split() if flag not in removed)
    cpu = parse_cpuinfo(cpuinfo("Intel(R) Xeon(R) Processor", flags))
    assert cpu.features["avx512f"] and not any(cpu.features[name] for name in removed)
    assert cpu.u8s8_saturates is saturates


def test_only_the_first_processor_block_is_read():
    text = cpuinfo("first", EPYC_7763_FLAGS, processors=1) + cpuinfo("second", XEON_SPR_FLAGS)
    cpu = parse_cpuinfo(text)
    assert cpu.model == "first" and not cpu.features["avx512f"]


def test_a_text_without_flags_is_unknown_on_x86_and_absent_elsewhere():
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1\n\n"
    unknown = parse_cpuinfo(arm, machine="x86_64")
    assert set(unknown.features.values()) == {None} and unknown.u8s8_saturates is None
    assert unknown.describe() == ("x86_64: unknown avx2 fma avx512f avx512_vnni avx_vnni "
                                  "amx_int8; u8s8 kernel unknown")
    aarch64 = parse_cpuinfo(arm, machine="aarch64")
    assert set(aarch64.features.values()) == {False} and aarch64.u8s8_saturates is False


def test_the_recorded_form_reads_back_to_the_same_features():
    cpu = cpu_features()
    record = cpu.to_dict()
    assert record["u8s8_saturates"] == cpu.u8s8_saturates
    assert CpuFeatures.from_dict(record) == cpu
