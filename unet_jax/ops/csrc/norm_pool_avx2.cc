// norm_pool_kernels.h for CPUs with AVX2 + FMA: chosen at run time by norm_pool.cc.
#include <omp.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>
#pragma GCC target("avx2,fma,bmi2")
#define UNET_ISA avx2
#include "norm_pool_kernels.h"
