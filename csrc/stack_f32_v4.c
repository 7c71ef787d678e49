/* The float32 kernels compiled for x86-64 CPUs with AVX-512 (x86-64-v4); dispatch.c calls
 * them only on such a CPU. Elsewhere (another architecture or compiler) this file is empty. */
#if defined(__x86_64__) && defined(__GNUC__)
#define GB_ISA v4
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#endif
#include "stack_f32.c"
#ifdef __clang__
#pragma clang attribute pop
#endif
#else
typedef int gb_no_f32_v4; /* ISO C: not an empty translation unit */
#endif
