"""Runtime helpers: the CPU's native bf16 support, read from its flags."""

from mrl.runtime import cpu_lacks_native_bf16


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 fma\n", encoding="utf-8")
    assert cpu_lacks_native_bf16(str(info))
    info.write_text("flags : fpu avx2 avx512f avx512_bf16\n", encoding="utf-8")
    assert not cpu_lacks_native_bf16(str(info))
    info.write_text("flags : fpu amx_bf16 amx_tile\n", encoding="utf-8")
    assert not cpu_lacks_native_bf16(str(info))
    assert not cpu_lacks_native_bf16(str(tmp_path / "missing"))
