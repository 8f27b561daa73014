{
  "targets": [
    {
      "target_name": "innerq_cpu_avx2",
      "type": "static_library",
      "sources": ["csrc/cpu/kernels_avx2.cpp"],
      "include_dirs": ["."],
      "cflags_cc": ["-std=c++17", "-O3", "-mavx2", "-mfma", "-mf16c", "-fno-strict-aliasing", "-fPIC"]
    },
    {
      "target_name": "innerq_cpu_avx512",
      "type": "static_library",
      "sources": ["csrc/cpu/kernels_avx512.cpp"],
      "include_dirs": ["."],
      "cflags_cc": ["-std=c++17", "-O3", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                    "-mavx512vnni", "-mavx512bitalg", "-fno-strict-aliasing", "-fPIC"]
    },
    {
      "target_name": "innerq",
      "dependencies": ["innerq_cpu_avx2", "innerq_cpu_avx512"],
      "sources": [
        "csrc/binding/backends.cpp",
        "csrc/binding/cache_wrap.cpp",
        "csrc/binding/finite_scan.cpp",
        "csrc/binding/module.cpp",
        "csrc/core/cache.cpp",
        "csrc/cpu/cpu_backend.cpp",
        "csrc/cpu/kernels_portable.cpp"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "."],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED", "INNERQ_HAVE_AVX2_KERNELS=1", "INNERQ_HAVE_AVX512_KERNELS=1",
                  "INNERQ_BUILD_FLAGS=\"node-gyp cpu-only\""],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-strict-aliasing", "-fexceptions"]
    }
  ]
}
