/* Included by stack_{f64,f32}_v3.c / _v4.c with GB_ISA_LEVEL 3 or 4: switches the rest of the
 * file to AVX2+FMA (x86-64-v3) or AVX-512 (x86-64-v4) code and defines GB_TARGET_ON, on
 * x86-64 with GCC or Clang; elsewhere the including file compiles to nothing (dispatch.c
 * then only knows the baseline instance). target_end.h closes it. */
#if defined(__x86_64__) && defined(__GNUC__)
#define GB_TARGET_ON 1
#if GB_ISA_LEVEL == 4 && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe"))), apply_to = function)
#elif GB_ISA_LEVEL == 4
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#elif defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,bmi,bmi2,lzcnt,popcnt,f16c,movbe")
#endif
#endif
