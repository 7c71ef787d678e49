/* The float32 kernels compiled for x86-64 CPUs with AVX2 and FMA (x86-64-v3); dispatch.c calls
 * them only on such a CPU. Elsewhere (another architecture or compiler) this file is empty. */
#if defined(__x86_64__) && defined(__GNUC__)
#define GB_ISA v3
#ifdef __clang__
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#endif
#include "stack_f32.c"
#ifdef __clang__
#pragma clang attribute pop
#endif
#else
typedef int gb_no_f32_v3; /* ISO C: not an empty translation unit */
#endif
